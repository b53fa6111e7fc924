import Glibc
import Foundation
import SystemdTesting
import VFIO
import XCTest

/// io.vfiopowerd.Manager through systemd's own varlink client, `varlinkctl` (systemd >= 255),
/// against the real daemon (simulated devices): systemd's IDL parser accepts the interface,
/// every read method answers what vfio-powerctl shows, and a caller outside admin_group gets
/// PermissionDenied.
///
/// Debian 12's systemd (252) has no varlinkctl: `make deps` builds a Debian trixie tree in
/// .build/trixie (debootstrap) and the test runs that tree's varlinkctl with the tree's own
/// dynamic loader and libraries, outside any chroot, so it reaches the harness's socket.
/// VARLINKCTL names another one (a tree's usr/bin/varlinkctl, or a host's own). Without it
/// the test is skipped on a developer's machine and fails under CI=true.
final class VarlinkctlTests: XCTestCase {
    let nic = "0000:00:02.0"
    let nvme = "0000:00:03.0"
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let interfaceFile = repository.appendingPathComponent("Sources/ControlProtocol/io.vfiopowerd.Manager.varlink")

    /// The command that runs varlinkctl: through a tree's loader, or the binary itself.
    private var varlinkctl: [String] = []

    override func setUpWithError() throws {
        let binary = ProcessInfo.processInfo.environment["VARLINKCTL"]
            ?? Self.repository.appendingPathComponent(".build/trixie/usr/bin/varlinkctl").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            let message = "no varlinkctl at \(binary): `make deps` builds a Debian trixie tree with it in .build/trixie"
            if ProcessInfo.processInfo.environment["CI"] == "true" {
                XCTFail(message)
                throw VarlinkctlMissing(description: message)
            }
            throw XCTSkip(message)
        }
        // A tree of another release: its own loader and libraries, never the host's.
        let tree = String(binary.dropLast("/usr/bin/varlinkctl".count))
        let loader = tree + "/usr/lib64/ld-linux-x86-64.so.2"
        if binary.hasSuffix("/usr/bin/varlinkctl"), !tree.isEmpty, FileManager.default.isExecutableFile(atPath: loader) {
            varlinkctl = [loader, "--library-path", "\(tree)/usr/lib/x86_64-linux-gnu:\(tree)/usr/lib/x86_64-linux-gnu/systemd", binary]
        } else {
            varlinkctl = [binary]
        }
    }

    private func daemon(main: String = "[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n") throws -> DaemonHarness {
        try DaemonHarness.withControl(main: main, nic: nic, nvme: nvme)
    }

    // MARK: The interface

    /// systemd's parser takes the interface file, and the description the daemon serves.
    func testSystemdParsesTheInterface() throws {
        let file = try varlinkctl(["validate-idl", Self.interfaceFile.path])
        XCTAssertEqual(file.status, 0, file.err)
        XCTAssertTrue(file.out.contains("interface io.vfiopowerd.Manager\n"), file.out)

        let daemon = try daemon()
        let address = "unix:" + daemon.socketPath
        let interfaces = try varlinkctl(["list-interfaces", address])
        XCTAssertEqual(interfaces.status, 0, interfaces.err)
        XCTAssertEqual(interfaces.out, "io.vfiopowerd.Manager\norg.varlink.service\n")

        let served = try varlinkctl(["introspect", address, "io.vfiopowerd.Manager"])
        XCTAssertEqual(served.status, 0, served.err)
        XCTAssertEqual(served.out, file.out, "systemd reads the served description as it reads the file")
        for line in ["method ListDevices() -> (\n\tdevices: []Device\n)", "error PermissionDenied(\n\tmethod: string,\n\tuid: int\n)"] {
            XCTAssertTrue(served.out.contains(line), "no \(line) in\n\(served.out)")
        }
        let methods = try varlinkctl(["list-methods", address, "io.vfiopowerd.Manager"])
        XCTAssertEqual(methods.status, 0, methods.err)
        XCTAssertEqual(methods.out.split(separator: "\n").map { $0.replacingOccurrences(of: "io.vfiopowerd.Manager.", with: "") },
                       ["Adopt", "Arm", "GetDevice", "GetStatistics", "Handoff", "ListDevices", "Monitor", "Release", "Reload", "Wake"])
    }

    // MARK: The read methods

    /// Each read method through varlinkctl returns what `vfio-powerctl status --json` and
    /// `show --json` print, field by field (but the clocks that moved in between).
    func testReadMethodsMatchVfioPowerctl() throws {
        let daemon = try daemon()
        let address = "unix:" + daemon.socketPath
        let status = try json(run(powerctl, ["status", "--json", "--socket", daemon.socketPath]))
        let show = try json(run(powerctl, ["show", nic, "--json", "--socket", daemon.socketPath]))

        let list = try json(varlinkctl(["call", "--json=short", address, "io.vfiopowerd.Manager.ListDevices", "{}"]))
        let devices = try XCTUnwrap(list["devices"] as? [[String: Any]], "\(list)")
        XCTAssertEqual(devices.map { $0["address"] as? String }, [nic, nvme])
        assertSame(devices, try XCTUnwrap(status["devices"] as? [[String: Any]]))

        let device = try json(varlinkctl(["call", "--json=short", address, "io.vfiopowerd.Manager.GetDevice", #"{"address":"\#(nic)"}"#]))
        assertSame([try XCTUnwrap(device["device"] as? [String: Any])], [show])
        XCTAssertEqual((device["device"] as? [String: Any])?["state"] as? String, "low_power")
        XCTAssertEqual((device["device"] as? [String: Any])?["name"] as? String, "nic")

        let statistics = try json(varlinkctl(["call", "--json=short", address, "io.vfiopowerd.Manager.GetStatistics", "{}"]))
        assertSame([try XCTUnwrap(statistics["statistics"] as? [String: Any])], [try XCTUnwrap(status["statistics"] as? [String: Any])])
        XCTAssertEqual((statistics["statistics"] as? [String: Any])?["status"] as? String, "2 devices: 2 in low power; 0 wakes")

        let unknown = try varlinkctl(["call", address, "io.vfiopowerd.Manager.GetDevice", #"{"address":"0000:7f:00.0"}"#])
        XCTAssertNotEqual(unknown.status, 0)
        XCTAssertTrue(unknown.err.contains("io.vfiopowerd.Manager.NoSuchDevice"), unknown.err)
    }

    /// Monitor with --more: the snapshot of both devices, then the nic's wake and re-arm as
    /// they happen, one reply per line as they come; the stream stays open until the client goes.
    func testMonitorStreamsThroughVarlinkctl() throws {
        let daemon = try daemon()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: varlinkctl[0])
        // --timeout bounds the call if the test never sees its four replies.
        process.arguments = Array(varlinkctl.dropFirst()) + ["call", "--more", "--timeout=20", "--json=short",
                                                              "unix:" + daemon.socketPath, "io.vfiopowerd.Manager.Monitor", "{}"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGTERM) }
            process.waitUntilExit()
        }
        var buffer = Data()
        var states: [String] = []
        while states.count < 4 {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }  // varlinkctl ended (its timeout, or an error)
            buffer.append(chunk)
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                var line = buffer[buffer.startIndex..<newline]
                // With --more, varlinkctl writes a JSON text sequence (RFC 7464): RS, then each reply.
                if line.first == 0x1E { line = line.dropFirst() }
                buffer = Data(buffer[buffer.index(after: newline)...])
                guard let reply = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any] else {
                    return XCTFail("not a JSON object: \(String(decoding: line, as: UTF8.self).debugDescription)")
                }
                let device = try XCTUnwrap(reply["device"] as? [String: Any], "\(reply)")
                states.append("\(device["address"] as? String ?? "?") \(device["state"] as? String ?? "?")")
                if states.count == 2 { daemon.device(PCIAddress(nic)!).access() }  // after the snapshot
            }
        }
        XCTAssertEqual(states, ["\(nic) low_power", "\(nvme) low_power", "\(nic) waiting_to_rearm", "\(nic) low_power"])
        XCTAssertTrue(process.isRunning, "the stream stays open")
    }

    // MARK: Permissions

    /// Run as `nobody` (setpriv): reading works, Arm gets io.vfiopowerd.Manager.PermissionDenied
    /// with the method and the caller's uid.
    func testArmFromAnotherUserIsPermissionDenied() throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
              let nogroup = getgrnam("nogroup")?.pointee.gr_gid else {
            throw XCTSkip("needs root, setpriv and the group nogroup")
        }
        let daemon = try daemon(main: "[daemon]\nsocket_group = \"nogroup\"\n[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n")
        // The harness's folder is root's: let nobody reach the socket inside it.
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: daemon.tree.root.path)
        let address = "unix:" + daemon.socketPath
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=\(nogroup)", "--clear-groups"]

        let read = try run(nobody + varlinkctl, ["call", "--json=short", address, "io.vfiopowerd.Manager.GetStatistics", "{}"])
        XCTAssertEqual(read.status, 0, "nobody can read (if it cannot run varlinkctl, the tree's folders must be open to it): \(read.err)")

        let refused = try run(nobody + varlinkctl, ["call", "--json=short", address, "io.vfiopowerd.Manager.Arm", #"{"address":"\#(nic)"}"#])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.err.contains("io.vfiopowerd.Manager.PermissionDenied"), refused.err)
        let parameters = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(refused.out.utf8)) as? [String: Any], refused.out)
        XCTAssertEqual(parameters["method"] as? String, "Arm")
        XCTAssertEqual(parameters["uid"] as? Int, 65534)
        XCTAssertEqual(daemon.phase(PCIAddress(nic)!), .lowPower, "nothing changed")
    }

    // MARK: Helpers

    /// The vfio-powerctl executable next to the test bundle.
    private var powerctl: [String] {
        [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vfio-powerctl").path]
    }

    private func varlinkctl(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        try run(varlinkctl, arguments)
    }

    private func run(_ command: [String], _ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        try runProcessApart(command[0], Array(command.dropFirst()) + arguments)
    }

    /// A command's output as one JSON object; the command must have succeeded.
    private func json(_ result: (status: Int32, out: String, err: String)) throws -> [String: Any] {
        XCTAssertEqual(result.status, 0, result.err)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any], result.out + result.err)
    }

    /// The clocks that run between two calls: present in both, equal otherwise.
    static let moving: Set<String> = ["lowPowerUsec", "managedUsec", "uptimeSeconds"]

    /// A value as JSON text: compared without Foundation's bridging, true is not 1.
    static func text(_ value: Any?) -> String {
        guard let value, let data = try? JSONSerialization.data(withJSONObject: [value], options: [.sortedKeys]) else { return "absent" }
        return String(decoding: data, as: UTF8.self)
    }

    private func assertSame(_ got: [[String: Any]], _ expected: [[String: Any]], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, expected.count, file: file, line: line)
        for (a, b) in zip(got, expected) {
            XCTAssertEqual(Set(a.keys), Set(b.keys), "varlinkctl and vfio-powerctl show different fields", file: file, line: line)
            for key in a.keys.sorted() {
                if Self.moving.contains(key) {
                    XCTAssertTrue(a[key] is NSNumber && b[key] is NSNumber, "\(key): \(a[key] ?? "-") \(b[key] ?? "-")", file: file, line: line)
                } else {
                    XCTAssertEqual(Self.text(a[key]), Self.text(b[key]), key, file: file, line: line)
                }
            }
        }
    }
}

private struct VarlinkctlMissing: Error, CustomStringConvertible {
    let description: String
}
