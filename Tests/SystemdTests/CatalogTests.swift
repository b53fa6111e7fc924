import Foundation
import XCTest
import SystemdTesting

import Glibc

/// systemd/vfio-powerd.catalog, parsed the way journalctl reads catalogs
/// (catalog_import_file in systemd's src/libsystemd/sd-journal/catalog.c): `#` lines are
/// comments, `-- <id> [lang]` starts an entry, header lines follow until a blank line,
/// then the text.
final class CatalogTests: XCTestCase {
    struct Entry {
        var id: String
        var line: Int
        var headers: [String: String] = [:]
        var text: [String] = []
    }

    static let catalogPath: String = {
        // Tests/SystemdTests/CatalogTests.swift -> repository root
        var components = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        components.removeLast(3)
        return components.joined(separator: "/") + "/systemd/vfio-powerd.catalog"
    }()

    static func parse(_ contents: String) throws -> [Entry] {
        var entries: [Entry] = []
        var inHeaders = false
        for (index, rawLine) in contents.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(rawLine)
            if line.hasPrefix("#") { continue }
            if line.hasPrefix("-- ") {
                let words = line.dropFirst(3).split(separator: " ")
                XCTAssertEqual(words.count, 1, "line \(index + 1): one id, no language suffix")
                entries.append(Entry(id: String(words.first ?? ""), line: index + 1))
                inHeaders = true
                continue
            }
            guard !entries.isEmpty else {
                XCTAssertTrue(line.isEmpty, "line \(index + 1): text before the first entry")
                continue
            }
            if inHeaders {
                if line.isEmpty {
                    inHeaders = false
                    continue
                }
                let parts = line.split(separator: ":", maxSplits: 1)
                XCTAssertEqual(parts.count, 2, "line \(index + 1): header without ':'")
                guard parts.count == 2 else { continue }
                let name = String(parts[0])
                XCTAssertNil(entries[entries.count - 1].headers[name], "line \(index + 1): \(name) twice")
                entries[entries.count - 1].headers[name] = parts[1].trimmingCharacters(in: .whitespaces)
            } else {
                entries[entries.count - 1].text.append(line)
            }
        }
        return entries
    }

    func testEveryEntryIsWellFormed() throws {
        let contents = try String(contentsOfFile: Self.catalogPath, encoding: .utf8)
        let entries = try Self.parse(contents)
        XCTAssertEqual(entries.count, 25, "one entry per DaemonEvent")

        var seen: Set<String> = []
        for entry in entries {
            let at = "entry at line \(entry.line)"
            XCTAssertEqual(entry.id.count, 32, at)
            XCTAssertTrue(entry.id.allSatisfy { $0.isHexDigit && !$0.isUppercase }, "\(at): 32 lowercase hex digits")
            XCTAssertTrue(seen.insert(entry.id).inserted, "\(at): duplicate id \(entry.id)")
            XCTAssertFalse(entry.headers["Subject"]?.isEmpty ?? true, "\(at): Subject")
            XCTAssertEqual(entry.headers["Defined-By"], "vfio-powerd", at)
            XCTAssertEqual(entry.headers["Documentation"], "man:vfio-powerd(8)", at)
            XCTAssertNotNil(entry.headers["Support"], at)
            XCTAssertEqual(Set(entry.headers.keys), ["Subject", "Defined-By", "Support", "Documentation"], at)
            let text = entry.text.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertGreaterThan(text.count, 40, "\(at): an explanation")
            // Substitutions name only fields the daemon sets.
            for field in Self.substitutedFields(in: entry.headers["Subject", default: ""] + "\n" + text) {
                XCTAssertTrue(
                    ["VFIO_DEVICE", "VFIO_MODE", "VFIO_WAKES", "VFIO_LOW_POWER_USEC", "ERRNO", "VFIO_VMM_PID", "VFIO_VMM_EXE"].contains(field),
                    "\(at): unknown field @\(field)@")
            }
        }
    }

    static func substitutedFields(in text: String) -> [String] {
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        // Odd-indexed parts are between a pair of '@'.
        return stride(from: 1, to: parts.count - 1, by: 2).map { String(parts[$0]) }
    }

    func testParserRejectsNothingItShouldAccept() throws {
        let entries = try Self.parse("""
            # comment
            -- 0123456789abcdef0123456789abcdef
            Subject: A @VFIO_DEVICE@
            Defined-By: vfio-powerd

            Body line.
            """)
        XCTAssertEqual(entries.count, 1)
        XCTAssertEqual(entries[0].headers["Subject"], "A @VFIO_DEVICE@")
        XCTAssertEqual(entries[0].text, ["Body line."])
        XCTAssertEqual(Self.substitutedFields(in: "a @X@ b @Y_Z@ c"), ["X", "Y_Z"])
    }

    /// journalctl itself compiles the catalog into a temporary root and reads it back.
    func testJournalctlCompilesTheCatalog() throws {
        let journalctl = "/usr/bin/journalctl"
        guard access(journalctl, X_OK) == 0 else {
            throw XCTSkip("journalctl is not installed")
        }
        let root = FileManager.default.temporaryDirectory
            .appendingPathComponent("vfio-powerd-catalog-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let catalogDirectory = root + "/usr/lib/systemd/catalog"
        try FileManager.default.createDirectory(atPath: catalogDirectory, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.catalogPath, toPath: catalogDirectory + "/vfio-powerd.catalog")

        let update = try runProcess(journalctl, ["--root=\(root)", "--update-catalog"])
        XCTAssertEqual(update.status, 0, update.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/var/lib/systemd/catalog/database"))

        let list = try runProcess(journalctl, ["--root=\(root)", "--list-catalog"])
        XCTAssertEqual(list.status, 0, list.output)
        let listed = list.output.split(separator: "\n").filter { $0.contains("vfio-powerd") }
        XCTAssertEqual(listed.count, 25, list.output)
        XCTAssertTrue(list.output.contains("f0d77591cc6e4f6c84ae6fca434db188 vfio-powerd: Device @VFIO_DEVICE@ was put into low power"), list.output)

        let dump = try runProcess(journalctl, ["--root=\(root)", "--dump-catalog", "8387996d5f3942dc995eec09ee2d7b54"])
        XCTAssertEqual(dump.status, 0, dump.output)
        XCTAssertTrue(dump.output.contains("Subject: Device @VFIO_DEVICE@ could not be put into low power"), dump.output)
    }
}
