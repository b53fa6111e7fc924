import Foundation
import PowerDaemon
import PowerPolicy
import VFIO
import VFIOSimulator
import XCTest

/// `vmm` devices through the real Manager and Dispatch loop: simulated VMMs hold simulated
/// devices over real eventfds (a VMM's "pidfd" is an eventfd its exit signals). A test double:
/// the lab's vmm_under_systemd.py proves the same with Debian's QEMU on a real kernel.
final class VMMDaemonTests: XCTestCase {
    let nic = "0000:00:02.0", nvme = "0000:00:03.0"

    private func harness(main: String = "[daemon]\nguest_d3_interval = \"100ms\"\n[defaults]\nrearm_delay = \"0s\"\n") throws -> DaemonHarness {
        try DaemonHarness(mainConfig: main, devices: [
            "10-lab.conf": "[[device]]\naddress = \"\(nic)\"\nname = \"nic\"\n\n[[device]]\naddress = \"\(nvme)\"\nname = \"disk\"\n",
        ])
    }

    /// For waitUntil's conditions, which run on the daemon's queue.
    @DaemonActor
    private static func state(_ daemon: DaemonHarness, _ address: PCIAddress) -> DevicePhase? {
        daemon.manager.device(address)?.phase
    }

    func testAVMMsDevicesAreAdoptedArmedInGuestD3AndReleasedWhenItExits() throws {
        let daemon = try harness()
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        try daemon.start()
        XCTAssertTrue(daemon.waitUntil { Self.state(daemon, a) == .idle && Self.state(daemon, b) == .idle })
        XCTAssertEqual(daemon.source.openDuplicates(a), 0, "an idle device is never opened")

        // One VMM with both devices; the operator's adopt plays the start hook.
        let vmm = daemon.source.startVMM(holding: [a, b])
        _ = daemon.onQueue { $0.adopt(a, pid: vmm.pid) }
        _ = daemon.onQueue { $0.adopt(b, pid: nil) }
        XCTAssertTrue(daemon.waitUntil { Self.state(daemon, a) == .guestActive && Self.state(daemon, b) == .guestActive })
        XCTAssertEqual(daemon.logs.entries(.adopted, device: a).count, 1)
        XCTAssertEqual(daemon.device(a).calls(.arm), 0, "the guest uses it (D0): never armed")

        // The guest puts the NIC into D3hot: armed within a few intervals; the disk stays as it is.
        daemon.device(a).guestWrites(.d3hot)
        XCTAssertTrue(daemon.waitUntil { daemon.device(a).isSuspended && daemon.logs.entries(.armedInGuestD3, device: a).count == 1 })
        XCTAssertEqual(daemon.device(b).calls(.arm), 0)

        // Its D0 write is a wake; the device is not armed again while it stays in D0.
        daemon.device(a).guestWrites(.d0)
        XCTAssertTrue(daemon.waitUntil { daemon.logs.entries(.woke, device: a).count == 1 && Self.state(daemon, a) == .guestActive })
        XCTAssertEqual(daemon.device(a).calls(.arm), 1)

        // The VMM exits: both duplicates are closed at once.
        vmm.exit()
        XCTAssertTrue(daemon.waitUntil { Self.state(daemon, a) == .idle && Self.state(daemon, b) == .idle })
        daemon.settle()  // the closes run on the devices' queues
        XCTAssertEqual(daemon.source.openDuplicates(a) + daemon.source.openDuplicates(b), 0)
        XCTAssertEqual(daemon.logs.entries(.vmmReleased, device: a).count, 1)
        XCTAssertEqual(daemon.logs.entries(.vmmReleased, device: b).count, 1)
    }

    func testTheFallbackScanFindsAVMMWhoseOpenWasNotSeen() throws {
        let daemon = try harness(main: "[daemon]\nvmm_scan_interval = \"1s\"\n")
        let a = try daemon.plug(nic)
        try daemon.start()
        XCTAssertTrue(daemon.waitUntil { Self.state(daemon, a) == .idle })
        daemon.source.startVMM(holding: [a])
        XCTAssertTrue(daemon.waitUntil(timeout: 5) { Self.state(daemon, a) == .guestActive })
    }

    func testAHolderThatIsNotAllowedIsNamedAndLeftAlone() throws {
        let daemon = try harness()
        let a = try daemon.plug(nic)
        try daemon.start()
        let other = daemon.source.startVMM(holding: [a], executable: "/opt/x/runner")
        _ = daemon.onQueue { $0.adopt(a, pid: nil) }
        XCTAssertTrue(daemon.waitUntil { daemon.logs.entries(.adoptionRefused, device: a).count == 1 })
        XCTAssertEqual(daemon.onQueue { $0.device(a)?.holder?.pid }, other.pid)
        daemon.device(a).guestWrites(.d3hot)
        other.exit()
        XCTAssertTrue(daemon.waitUntil { Self.state(daemon, a) == .idle })
        XCTAssertEqual(daemon.device(a).calls(.arm), 0, "never armed for a holder that is not allowed")
        XCTAssertEqual(daemon.source.adoptions, 0)
    }

    func testStopLeavesAnArmedDeviceAsleepAndClosesTheDuplicate() throws {
        let daemon = try harness()
        let a = try daemon.plug(nic)
        try daemon.start()
        daemon.source.startVMM(holding: [a])
        _ = daemon.onQueue { $0.adopt(a, pid: nil) }
        daemon.device(a).guestWrites(.d3hot)
        XCTAssertTrue(daemon.waitUntil { daemon.device(a).isSuspended })
        daemon.stop()
        XCTAssertEqual(daemon.source.openDuplicates(a), 0)
        XCTAssertTrue(daemon.device(a).isSuspended, "on_stop = keep: the VMM's device stays in low power")
        XCTAssertEqual(daemon.device(a).calls(.exit), 0)
    }

    /// An independent client (a few lines of Python over the socket, SCM_RIGHTS by
    /// socket.send_fds) hands over a file that is not a VFIO device file: refused with the
    /// reason, and the daemon holds nothing of it afterwards.
    func testAHandoffOfAFileThatIsNotAVFIODeviceIsRefused() throws {
        let daemon = try harness()
        let a = try daemon.plug(nic)
        try daemon.start()
        try daemon.startControl()
        let script = """
            import json, os, socket, sys
            def call(sock, parameters, fds=()):
                message = json.dumps({"method": "io.vfiopowerd.Manager.Handoff", "parameters": parameters}).encode() + b"\\0"
                if fds:
                    socket.send_fds(sock, [message], list(fds))
                else:
                    sock.sendall(message)
                reply = b""
                while not reply.endswith(b"\\0"):
                    reply += sock.recv(65536)
                return json.loads(reply[:-1])
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(sys.argv[1])
            r, w = os.pipe()
            print(json.dumps({"pipe": call(sock, {"address": sys.argv[2]}, [r]),
                              "none": call(sock, {"address": sys.argv[2]})}))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, daemon.socketPath, nic]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        let out = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: [String: Any]], String(decoding: data, as: UTF8.self))
        XCTAssertEqual(out["pipe"]?["error"] as? String, "io.vfiopowerd.Manager.HandoffRefused")
        let reason = (out["pipe"]?["parameters"] as? [String: Any])?["reason"] as? String ?? ""
        XCTAssertTrue(reason.hasPrefix("the file passed is not a VFIO device file"), reason)
        XCTAssertEqual(out["none"]?["error"] as? String, "io.vfiopowerd.Manager.InvalidParameter")
        XCTAssertTrue(daemon.waitUntil { Self.state(daemon, a) == .idle })
        daemon.settle()
        XCTAssertEqual(daemon.source.openDuplicates(a), 0)
    }
}
