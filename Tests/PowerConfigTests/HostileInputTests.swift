import Foundation
import PowerConfig
import Testing

/// Configuration text and files found by trying: each ends in a clear error with its place,
/// and nothing of the file is taken.
@Suite struct HostileConfigTests {
    private func problems(devices text: String) throws -> (TempConfigRoot, ConfigLoadResult) {
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/devices.d/10-x.conf", text)
        return (root, ConfigLoader.load(root.options()))
    }

    @Test func aNULByteIsRefusedWithItsPlaceNotTakenAsTheEndOfTheFile() throws {
        let (root, result) = try problems(devices: "[[device]]\naddress = \"0000:00:01.0\"\n\0\n[[device]]\naddress = \"0000:00:02.0\"\nmode = \"bogus\"\n")
        #expect(result.hasErrors)
        #expect(root.render(result.problems)
            == "etc/vfio-powerd/devices.d/10-x.conf:3:1: a NUL byte: configuration text has none, and everything after it would be ignored; is the file truncated or corrupted?")
        #expect(result.configuration.devices.isEmpty)
    }

    @Test func aNULEscapeInAStringIsRefused() throws {
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/vfio-powerd.conf", "[daemon]\nsocket_group = \"ro\\u0000ot\"\n")
        let result = ConfigLoader.load(root.options())
        #expect(root.render(result.problems)
            == "etc/vfio-powerd/vfio-powerd.conf:2:19: a \\u0000 escape (NUL) in a string: the value would be cut short there; remove it")
        let (other, address) = try problems(devices: "[[device]]\naddress = \"0000:00:01.0\\U00000000garbage\"\n")
        #expect(other.render(address.problems).contains("10-x.conf:2:24: a \\U00000000 escape (NUL)"))
        // An escaped backslash before "u0000" is text, not an escape.
        let (_, fine) = try problems(devices: "[[device]]\naddress = \"0000:00:01.0\"\nname = \"a\\\\u0000\"\n")
        #expect(!fine.hasErrors, "\(fine.problems)")
    }

    @Test func tensOfThousandsOfDottedKeyPartsAreRefusedNotACrash() throws {
        let key = Array(repeating: "a", count: 50_000).joined(separator: ".")
        let (root, dotted) = try problems(devices: "\(key) = 1\n")
        #expect(root.render(dotted.problems).hasPrefix("etc/vfio-powerd/devices.d/10-x.conf:1:64: a key with more than 32 dotted parts"))
        let (_, header) = try problems(devices: "[\(key)]\n")
        #expect(header.hasErrors)
    }

    @Test func deepNestingIsRefusedNotACrash() throws {
        let (root, arrays) = try problems(devices: "x = " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "\n")
        #expect(root.render(arrays.problems)
            == "etc/vfio-powerd/devices.d/10-x.conf:1:37: nested deeper than 32 levels of tables and arrays; no setting of vfio-powerd needs more than two")
        let (_, tables) = try problems(devices: "x = " + String(repeating: "{a=", count: 50_000) + "1" + String(repeating: "}", count: 50_000) + "\n")
        #expect(tables.hasErrors)
        // A float's dot is not a key's.
        let (_, floats) = try problems(devices: "x = [" + Array(repeating: "1.5", count: 100).joined(separator: ", ") + "]\n")
        #expect(!floats.problems.contains { $0.message.contains("dotted parts") })
    }

    @Test func onlyDevNullMasksAName() throws {
        let root = try TempConfigRoot()
        try root.write("usr/lib/vfio-powerd/devices.d/10-a.conf", "[[device]]\naddress = \"0000:00:01.0\"\n")
        try FileManager.default.createSymbolicLink(atPath: "\(root.path)/etc/vfio-powerd/devices.d/10-a.conf", withDestinationPath: "/dev/zero")
        let result = ConfigLoader.load(root.options())
        #expect(root.render(result.problems)
            == "etc/vfio-powerd/devices.d/10-a.conf: not a regular file; remove it or replace it with a file (a symlink to /dev/null masks the name)")
    }

    @Test(arguments: ["a regular file", "a symlink loop", "a FIFO"])
    func anUnreadableDevicesDirectoryIsAnErrorNotAnEmptyOne(_ kind: String) throws {
        let root = try TempConfigRoot()
        let folder = "\(root.path)/etc/vfio-powerd/devices.d"
        try FileManager.default.removeItem(atPath: folder)
        switch kind {
        case "a regular file": try root.write("etc/vfio-powerd/devices.d", "")
        case "a symlink loop": try FileManager.default.createSymbolicLink(atPath: folder, withDestinationPath: folder)
        default: #expect(mkfifo(folder, 0o644) == 0)
        }
        let result = ConfigLoader.load(root.options())
        #expect(result.hasErrors)
        #expect(root.render(result.problems).hasPrefix("etc/vfio-powerd/devices.d: cannot read this devices.d directory ("), "\(result.problems)")
    }

    @Test func aWritableDirectoryAboveTheConfigurationIsRefused() throws {
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/vfio-powerd.conf", "")
        chmod("\(root.path)/etc", 0o777)
        let strict = ConfigLoader.load(root.options(allowInsecure: false))
        #expect(strict.problems.map(\.description).contains(
            "\(root.path)/etc/vfio-powerd: refusing it: the directory \(root.path)/etc above it can be written by group or others (mode 777), so another user could replace it; fix the directory (chown root:root, chmod go-w) or move the configuration"))
    }

    @Test func aSymlinkToAFileInAWritableDirectoryIsRefused() throws {
        let root = try TempConfigRoot()
        let elsewhere = "\(root.path)/drop"
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        chmod(elsewhere, 0o777)
        try root.write("drop/real.conf", "[[device]]\naddress = \"0000:00:01.0\"\n")
        try FileManager.default.createSymbolicLink(atPath: "\(root.path)/etc/vfio-powerd/devices.d/a.conf", withDestinationPath: "\(elsewhere)/real.conf")
        let strict = ConfigLoader.load(root.options(allowInsecure: false))
        #expect(strict.problems.map(\.description).contains {
            $0.hasPrefix("\(root.path)/etc/vfio-powerd/devices.d/a.conf: refusing it: the directory \(elsewhere) above it can be written by group or others (mode 777)")
        }, "\(strict.problems)")
        #expect(strict.configuration.devices.isEmpty)
    }
}

/// A reload returns the process to where it was: TOMLKit's scalar accessors leaked every
/// value they read (about 32 bytes each, 130 KB per reload at 4096 entries), and Foundation's
/// file reader a page per empty file.
@Suite struct ReloadMemoryTests {
    private func residentKilobytes() throws -> Int {
        let statm = try String(contentsOfFile: "/proc/self/statm", encoding: .utf8)
        return Int(statm.split(separator: " ")[1])! * Int(sysconf(Int32(_SC_PAGESIZE))) / 1024
    }

    @Test func twoHundredLoadsDoNotGrowTheProcess() throws {
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/vfio-powerd.conf", "[daemon]\nrescan_interval = \"30s\"\n[defaults]\nrearm_delay = \"1s\"\n")
        let entry = "[[device]]\naddress = \"0000:00:01.0\"\nname = \"n\"\nrearm_delay = \"1s\"\nmode = \"oneshot\"\n"
        try root.write("etc/vfio-powerd/devices.d/10-a.conf", String(repeating: entry, count: 100))
        try root.write("etc/vfio-powerd/devices.d/20-empty.conf", "")
        for _ in 0..<50 { _ = ConfigLoader.load(root.options()) }
        // Other suites run in this process at the same time and move its RSS too: a leak
        // grows every round, their noise does not, so the smallest of three rounds counts.
        var rounds: [Int] = []
        for _ in 0..<3 {
            let before = try residentKilobytes()
            for _ in 0..<200 { _ = ConfigLoader.load(root.options()) }
            rounds.append(try residentKilobytes() - before)
        }
        // Before the fix: about 13 KB per load here, 2.6 MB a round. After: about 150 bytes
        // per load (TOMLKit's parse error record and table object, until TOMLKit goes).
        #expect(rounds.min()! < 1024, "grew by \(rounds) KB in three rounds of 200 loads")
    }
}
