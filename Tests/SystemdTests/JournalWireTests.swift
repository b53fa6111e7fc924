import SystemdTesting
import Foundation
import Logging
import XCTest
@testable import Systemd

import Glibc

/// What JournalLogHandler really puts on the wire, read by a fake journald.
///
/// libsystemd always sends to /run/systemd/journal/socket, so the test re-runs this test
/// binary inside a private mount namespace (`unshare --mount`) with a tmpfs over
/// /run/systemd: the inner run binds the socket there without touching the host's /run.
/// Needs root and util-linux's unshare; skipped otherwise.
final class JournalWireTests: XCTestCase {
    static let innerVariable = "VFIO_POWERD_FAKE_JOURNALD_INNER"

    func testEntriesReachTheJournalSocketIntact() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root for a private mount namespace") }
        let candidates: [String] = ["/usr/bin/unshare", "/bin/unshare"]
        let unshare = candidates.first { path in access(path, X_OK) == 0 }
        guard let unshare else { throw XCTSkip("unshare(1) is not installed") }
        let testBinary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")

        let process = Process()
        process.executableURL = URL(fileURLWithPath: unshare)
        process.arguments = [
            "--mount", "--propagation", "private", "/bin/sh", "-c",
            "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && exec \"$0\" \"$1\"",
            testBinary, "SystemdTests.JournalWireTests/testInnerFakeJournald",
        ]
        var environment = ProcessInfo.processInfo.environment
        environment[Self.innerVariable] = "1"
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard !output.contains("mount: ") && !output.contains("unshare: ") else {
            throw XCTSkip("no private mount namespace here: \(output)")
        }
        XCTAssertEqual(process.terminationStatus, 0, output)
        XCTAssertTrue(output.contains("Executed 1 test, with 0 failures"), output)
    }

    /// Runs only inside the namespace set up above.
    func testInnerFakeJournald() throws {
        guard getenv(Self.innerVariable) != nil else {
            throw XCTSkip("runs inside testEntriesReachTheJournalSocketIntact")
        }
        let journald = try NotifySocketListener(bindingAt: JournalDetection.defaultSocketPath)
        XCTAssertTrue(JournalDetection.isJournalAvailable())

        var logger = Logger(label: "wire") { _ in JournalLogHandler(identifier: "vfio-powerd-test") }
        logger[metadataKey: "VFIO_DEVICE"] = "0000:01:00.0"
        logger.warning(
            "arm failed:\nDevice or resource busy",
            metadata: ["ERRNO": "16", "MESSAGE_ID": "8387996d5f3942dc995eec09ee2d7b54", "policy.name": "gpu"])

        let datagram = try XCTUnwrap(journald.receiveBytes(), "no entry arrived")
        let fields = try Self.parseNativeProtocol(datagram)
        let names = fields.map(\.0)
        XCTAssertEqual(Array(names.prefix(6)), [
            "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
        ])
        let values = Dictionary(fields, uniquingKeysWith: { first, _ in first })
        XCTAssertEqual(values["MESSAGE"], "arm failed:\nDevice or resource busy")
        XCTAssertEqual(values["PRIORITY"], "4")
        XCTAssertEqual(values["SYSLOG_IDENTIFIER"], "vfio-powerd-test")
        XCTAssertEqual(values["CODE_FILE"], "SystemdTests/JournalWireTests.swift")
        XCTAssertEqual(values["CODE_FUNC"], "testInnerFakeJournald()")
        XCTAssertNotNil(values["CODE_LINE"].flatMap { Int($0) })
        XCTAssertEqual(values["ERRNO"], "16")
        XCTAssertEqual(values["MESSAGE_ID"], "8387996d5f3942dc995eec09ee2d7b54")
        XCTAssertEqual(values["VFIO_DEVICE"], "0000:01:00.0")
        XCTAssertEqual(values["POLICY_NAME"], "gpu")
        XCTAssertEqual(fields.count, 10)
    }

    struct ProtocolError: Error {}

    /// journald's native protocol: `NAME=value\n`, or for values with a newline
    /// `NAME\n` + 64-bit little-endian length + value + `\n`.
    static func parseNativeProtocol(_ bytes: [UInt8]) throws -> [(String, String)] {
        var fields: [(String, String)] = []
        var index = 0
        while index < bytes.count {
            guard let end = bytes[index...].firstIndex(where: { $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "=") })
            else { throw ProtocolError() }
            let name = String(decoding: bytes[index..<end], as: UTF8.self)
            if bytes[end] == UInt8(ascii: "=") {
                guard let newline = bytes[end...].firstIndex(of: UInt8(ascii: "\n")) else { throw ProtocolError() }
                fields.append((name, String(decoding: bytes[(end + 1)..<newline], as: UTF8.self)))
                index = newline + 1
            } else {
                guard end + 9 <= bytes.count else { throw ProtocolError() }
                let length = bytes[(end + 1)..<(end + 9)].reversed().reduce(0) { $0 << 8 | Int($1) }
                let start = end + 9
                guard start + length < bytes.count, bytes[start + length] == UInt8(ascii: "\n") else {
                    throw ProtocolError()
                }
                fields.append((name, String(decoding: bytes[start..<(start + length)], as: UTF8.self)))
                index = start + length + 1
            }
        }
        return fields
    }
}
