import Glibc
import ControlProtocol
import Foundation
import PowerCtlKit
import SystemdTesting
@testable import PowerDaemon
import Varlink
import VFIO
import VFIOSimulator
import XCTest

/// io.vfiopowerd.Manager on a running daemon (real Dispatch loop, simulated devices): through
/// vfio-powerctl's own client, through the real vfio-powerctl binary (also as an unprivileged
/// user), through an independent client (PyPI's `varlink`), and with hostile clients.
final class ControlServiceTests: XCTestCase {
    let nic = "0000:00:02.0"
    let nvme = "0000:00:03.0"

    private func daemon(main: String = "[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n") throws -> DaemonHarness {
        try DaemonHarness.withControl(main: main, nic: nic, nvme: nvme)
    }

    // MARK: Through vfio-powerctl's client

    func testAParameterAMethodDoesNotHaveIsRefusedByName() throws {
        let daemon = try daemon()
        let client = try VarlinkClient(socketPath: daemon.socketPath)
        XCTAssertThrowsError(try client.call("io.vfiopowerd.Manager.GetDevice", ["address": .string(nic), "adress": "x"])) { error in
            XCTAssertEqual(error as? VarlinkError, VarlinkError(name: "io.vfiopowerd.Manager.InvalidParameter", parameters: [
                "parameter": "adress", "reason": "GetDevice has no parameter \"adress\"; it takes address"]))
        }
        XCTAssertThrowsError(try client.call("io.vfiopowerd.Manager.ListDevices", ["verbose": true])) { error in
            XCTAssertEqual((error as? VarlinkError)?.parameters.object?["reason"], "ListDevices has no parameter \"verbose\"; it takes none")
        }
        XCTAssertEqual(try client.call("io.vfiopowerd.Manager.GetDevice", ["address": .string(nic)]).object?["device"]?.object?["address"],
                       .string(nic), "the known parameters still work")
    }

    func testReadMethods() throws {
        let daemon = try daemon()
        let client = try ManagerClient(socketPath: daemon.socketPath)
        let devices = try client.listDevices()
        XCTAssertEqual(devices.map(\.address), [nic, nvme])
        XCTAssertEqual(devices.map(\.state), [.lowPower, .lowPower])
        XCTAssertEqual(devices[0].name, "nic")
        XCTAssertEqual(devices[0].mode, .oneshot)
        XCTAssertEqual(devices[0].source, .own)
        XCTAssertEqual(devices[0].driver, "vfio-pci", "from the (fake) sysfs")
        XCTAssertEqual(devices[0].arms, 1)
        XCTAssertTrue(devices[0].configuredAt.hasSuffix("etc/vfio-powerd/devices.d/10-lab.conf:2"), devices[0].configuredAt)
        let statistics = try client.statistics()
        XCTAssertEqual(statistics.devices, 2)
        XCTAssertEqual(statistics.lowPower, 2)
        XCTAssertEqual(statistics.status, "2 devices: 2 in low power; 0 wakes")
        XCTAssertThrowsError(try client.device("0000:7f:00.0")) { error in
            XCTAssertEqual(error as? ControlClientError, .noSuchDevice("0000:7f:00.0"))
        }
        XCTAssertThrowsError(try client.device("junk")) { error in
            guard case .invalidParameter("address", let reason)? = error as? ControlClientError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("is not a PCI address"), reason)
        }
    }

    /// GetStatistics counts reloads, applied and rejected, and says how the last one ended.
    func testStatisticsCountReloads() throws {
        let daemon = try daemon()
        let client = try ManagerClient(socketPath: daemon.socketPath)
        let before = try client.statistics()
        XCTAssertEqual(before.reloads, 0)
        XCTAssertNil(before.lastReloadSucceeded)
        XCTAssertNil(before.lastReloadRealtimeUsec)

        daemon.reload()
        let applied = try client.statistics()
        XCTAssertEqual(applied.reloads, 1)
        XCTAssertEqual(applied.lastReloadSucceeded, true)
        let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
        let at = try XCTUnwrap(applied.lastReloadRealtimeUsec)
        XCTAssertLessThan(abs(now - at), 10_000_000, "the reload's time is CLOCK_REALTIME, a moment ago")

        try daemon.write("[defaults]\nrearm_delay = \"never\"\n", to: "etc/vfio-powerd/vfio-powerd.conf")
        daemon.reload()
        let rejected = try client.statistics()
        XCTAssertEqual(rejected.reloads, 2)
        XCTAssertEqual(rejected.lastReloadSucceeded, false)
        XCTAssertEqual(rejected.devices, 2, "the running configuration stays in force")
    }

    func testWakeHoldsTheDeviceAwakeUntilArm() throws {
        let daemon = try daemon()
        let client = try ManagerClient(socketPath: daemon.socketPath)
        let address = PCIAddress(nic)!
        let woken = try client.wake(nic, seconds: nil)
        XCTAssertEqual(woken.state, .heldAwake)
        XCTAssertNil(woken.nextArmRealtimeUsec, "held until Arm")
        XCTAssertEqual(daemon.device(address).engagement, .none, "LOW_POWER_EXIT was issued")
        XCTAssertEqual(woken.selfWakes, 1, "the EXIT's own wake of a suspended device is not a device wake")
        XCTAssertEqual(woken.wakes, 0)
        XCTAssertEqual(daemon.logs.entries(.heldAwake, device: address).map(\.message),
                       ["0000:00:02.0 (nic): woken by the operator; kept out of low power until `vfio-powerctl arm`"])
        // Held until Arm: the machine keeps no deadline, so no timer re-arms it.
        XCTAssertEqual(daemon.onQueue { $0.device(address)?.phase }, .heldAwake(until: nil), "no re-arm delay applies while held")

        let armed = try client.arm(nic)
        XCTAssertEqual(armed.state, .lowPower)
        XCTAssertEqual(daemon.device(address).engagement, .oneShot)
        XCTAssertEqual(daemon.device(PCIAddress(nvme)!).calls(.exit), 0, "the other device was not touched")
    }

    func testWakeForADurationReArmsWhenItRunsOut() throws {
        let daemon = try daemon()
        let client = try ManagerClient(socketPath: daemon.socketPath)
        let woken = try client.wake(nic, seconds: 1)
        let nextArm = try XCTUnwrap(woken.nextArmRealtimeUsec)
        let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
        XCTAssertEqual(Double(nextArm - now), 1_000_000, accuracy: 300_000)
        let address = PCIAddress(nic)!
        XCTAssertTrue(daemon.waitUntil { daemon.device(address).engagement == .oneShot }, "armed again after 1s")
        XCTAssertThrowsError(try client.wake(nic, seconds: 0)) { error in
            XCTAssertEqual(error as? ControlClientError, .invalidParameter(parameter: "seconds", reason: "a whole number of seconds from 1 to 604800"))
        }
    }

    func testReloadThroughTheSocketReportsProblems() throws {
        let daemon = try daemon()
        let client = try ManagerClient(socketPath: daemon.socketPath)
        try client.reload()
        try daemon.write("[[device]]\naddress = \"0000:00:09.0\"\nmode = \"sleepy\"\n", to: "etc/vfio-powerd/devices.d/30-bad.conf")
        XCTAssertThrowsError(try client.reload()) { error in
            guard case .configRejected(let problems)? = error as? ControlClientError else { return XCTFail("\(error)") }
            XCTAssertEqual(problems.count, 1)
            XCTAssertTrue(problems[0].hasSuffix("30-bad.conf:3:8: device.mode: expected one of \"oneshot\", \"reentrant\", \"off\", got \"sleepy\""), problems[0])
        }
        XCTAssertEqual(daemon.onQueue { $0.summary() }, "2 devices: 2 in low power; 0 wakes")
    }

    func testMonitorStreamsEveryChange() throws {
        let daemon = try daemon()
        let client = try VarlinkClient(socketPath: daemon.socketPath)
        let address = PCIAddress(nic)!
        var states: [String] = []
        struct Enough: Error {}
        do {
            try client.call("io.vfiopowerd.Manager.Monitor", [:], more: true, timeout: .seconds(10)) { reply in
                let device = try XCTUnwrap(reply.object?["device"]?.object)
                states.append("\(device["address"]!.string!) \(device["state"]!.string!)")
                if states.count == 2 { daemon.device(address).access() }  // after the initial snapshot
                if states.count == 4 { throw Enough() }                   // woke, then armed again
            }
            XCTFail("the stream ended by itself")
        } catch is Enough {}
        XCTAssertEqual(states, ["\(nic) low_power", "\(nvme) low_power", "\(nic) waiting_to_rearm", "\(nic) low_power"])
    }

    // MARK: Through the vfio-powerctl binary

    /// The vfio-powerctl executable next to the test bundle.
    private var powerctl: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vfio-powerctl")
    }

    private func run(_ arguments: [String], as user: (uid: Int, gid: Int)? = nil, binary: URL? = nil) throws -> (status: Int32, out: String, err: String) {
        let program = (binary ?? powerctl).path
        guard let user else { return try runProcessApart(program, arguments) }
        return try runProcessApart("/usr/bin/setpriv", ["--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", program] + arguments)
    }

    func testTheCommandLine() throws {
        let daemon = try daemon()
        let socket = ["--socket", daemon.socketPath]
        let status = try run(["status"] + socket)
        XCTAssertEqual(status.status, 0, status.err)
        XCTAssertTrue(status.out.hasPrefix("vfio-powerd: 2 devices: 2 in low power; 0 wakes\nDEVICE        NAME  SOURCE  MODE     STATE      HOLDER  WAKES  LAST WAKE  LOW POWER\n"), status.out)
        XCTAssertTrue(status.out.contains("0000:00:02.0  nic   own     oneshot  low power  -           0          -"), status.out)

        let wake = try run(["wake", "00:02.0", "--for", "10m"] + socket)
        XCTAssertEqual(wake.status, 0, wake.err)
        XCTAssertEqual(wake.out, "0000:00:02.0: held awake for 10m\n")
        let arm = try run(["arm", "00:02.0"] + socket)
        XCTAssertEqual(arm.out, "0000:00:02.0: low power\n")

        let unknown = try run(["show", "0000:00:1f.0"] + socket)
        XCTAssertEqual(unknown.status, 1)
        XCTAssertEqual(unknown.err, "vfio-powerctl: vfio-powerd does not manage 0000:00:1f.0. `vfio-powerctl status` lists the devices it manages\n")

        let absent = try run(["status", "--socket", daemon.socketPath + ".absent"])
        XCTAssertEqual(absent.status, 69)
        XCTAssertTrue(absent.err.contains("vfio-powerd is not running (nothing listens on"), absent.err)

        let json = try run(["show", nic, "--json"] + socket)
        let record = try JSONDecoder().decode(DeviceRecord.self, from: Data(json.out.utf8))
        XCTAssertEqual(record.address, nic)
        XCTAssertEqual(record.state, .lowPower)
    }

    /// Reading is open to whoever can connect; changing needs root or admin_group. Runs the
    /// real binary as `nobody` (setpriv), so it needs root.
    func testPermissions() throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
              let nogroup = getgrnam("nogroup")?.pointee.gr_gid else {
            throw XCTSkip("needs root, setpriv and the group nogroup")
        }
        // A copy nobody can execute (the build tree may sit under a private home).
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("powerctl-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let binary = folder.appendingPathComponent("vfio-powerctl")
        try FileManager.default.copyItem(at: powerctl, to: binary)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: folder.path)
        let nobody = (uid: 65534, gid: Int(nogroup))

        let daemon = try daemon(main: "[daemon]\nsocket_group = \"nogroup\"\n[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n")
        // The harness's folder is root's: let nobody reach the socket inside it.
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: daemon.tree.root.path)
        var info = stat()
        XCTAssertEqual(stat(daemon.socketPath, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o660)
        XCTAssertEqual(info.st_gid, nogroup, "socket_group owns the socket")

        let read = try run(["status", "--socket", daemon.socketPath], as: nobody, binary: binary)
        XCTAssertEqual(read.status, 0, read.err)
        let refused = try run(["arm", nic, "--socket", daemon.socketPath], as: nobody, binary: binary)
        XCTAssertEqual(refused.status, 77)
        XCTAssertEqual(refused.err, "vfio-powerctl: the daemon refused Arm: only root and members of its admin_group may change devices (see admin_group in vfio-powerd.conf(5))\n")
        let log = try XCTUnwrap(daemon.logs.entries(.controlRefused).first)
        XCTAssertEqual(log.metadata["CALLER_UID"], "65534")
        XCTAssertTrue(log.message.hasPrefix("refused Arm from uid 65534 (pid "), log.message)

        // admin_group = nogroup: nobody may now.
        try daemon.write("[daemon]\nsocket_group = \"nogroup\"\nadmin_group = \"nogroup\"\n[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n",
                         to: "etc/vfio-powerd/vfio-powerd.conf")
        daemon.stopControl()
        daemon.reload()
        try daemon.startControl()
        let allowed = try run(["wake", nic, "--socket", daemon.socketPath], as: nobody, binary: binary)
        XCTAssertEqual(allowed.status, 0, allowed.err)
    }

    // MARK: An independent client

    func testPyPIVarlinkClientCallsEveryMethod() throws {
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["python3", "-c", "import varlink"]
        try check.run()
        check.waitUntilExit()
        guard check.terminationStatus == 0 else {
            throw XCTSkip("python3 lacks the varlink package (make deps installs it in .build/venv; make unit-tests puts it on PATH)")
        }
        let daemon = try daemon()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("varlink_client.py")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script.path, daemon.socketPath, nic]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, errors)
        let got = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any], String(decoding: data, as: UTF8.self))
        XCTAssertEqual(got["interfaces"] as? [String], ["io.vfiopowerd.Manager", "org.varlink.service"])
        XCTAssertEqual(got["description_starts"] as? String, "# The vfio-powerd daemon: the devices it holds and their low-power state.")
        XCTAssertEqual(got["list"] as? [String], [nic, nvme])
        XCTAssertEqual(got["get_state"] as? String, "low_power")
        XCTAssertEqual(got["statistics_devices"] as? Int, 2)
        XCTAssertEqual(got["wake_state"] as? String, "held_awake")
        XCTAssertEqual(got["arm_state"] as? String, "low_power")
        XCTAssertEqual(got["reload"] as? String, "ok")
        XCTAssertEqual(got["no_such_device"] as? String, "io.vfiopowerd.Manager.NoSuchDevice")
        XCTAssertEqual(got["monitor"] as? [String], [nic, nvme])
    }

    // MARK: Hostile clients

    func testHostileClientsNeitherStallTheLoopNorDelayAWake() throws {
        let daemon = try daemon()
        let address = PCIAddress(nic)!
        // A half message that never ends, garbage, and a Monitor whose replies are never read.
        let half = try VarlinkClient(socketPath: daemon.socketPath)
        try half.writeRaw(Array(#"{"method":"io.vfiopowerd.Manager.ListDev"#.utf8))
        let garbage = try VarlinkClient(socketPath: daemon.socketPath)
        try garbage.writeRaw(Array("\u{01}\u{02}not json at all\0".utf8))
        let deaf = try VarlinkClient(socketPath: daemon.socketPath)
        try deaf.writeRaw(Array(#"{"method":"io.vfiopowerd.Manager.Monitor","more":true}"#.utf8) + [0])

        daemon.device(address).access()
        XCTAssertTrue(daemon.waitUntil { daemon.logs.entries(.woke, device: address).count == 1 }, "the wake is handled")
        XCTAssertTrue(daemon.waitUntil { daemon.device(address).engagement == .oneShot }, "and re-armed")
        let client = try ManagerClient(socketPath: daemon.socketPath)
        XCTAssertEqual(try client.statistics().wakes, 1, "another client is served")
        _ = (half, garbage, deaf)
    }
}
