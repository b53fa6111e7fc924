import ControlProtocol
import Foundation
import PowerCtlKit
import PowerDaemon
import VFIO
import VFIOSimulator
import XCTest

/// No device waits for another: each device's calls run on a queue of its own, so a device
/// whose arm is slow, or never returns, holds up no other device's wakes and re-arms, nor
/// the control socket, nor the watchdog; it is reported stuck, and stop is still bounded.
final class IsolationTests: XCTestCase {
    let fast = "0000:00:02.0", slow = "0000:00:03.0", hung = "0000:00:04.0"

    private func daemon() throws -> DaemonHarness {
        let daemon = try DaemonHarness(mainConfig: "[defaults]\nsource = \"own\"\nrearm_delay = \"0s\"\n", devices: [
            "10-lab.conf": [fast, slow, hung].map { "[[device]]\naddress = \"\($0)\"\n" }.joined(separator: "\n"),
        ])
        daemon.stuckBound = .seconds(1)
        daemon.settleBound = .seconds(2)
        for address in [fast, slow, hung] { try daemon.plug(address) }
        return daemon
    }

    /// Lets a hung arm go: each arm that waits takes one signal.
    private final class Gate: @unchecked Sendable {
        let semaphore = DispatchSemaphore(value: 0)
        func open(_ waiters: Int = 8) { for _ in 0..<waiters { semaphore.signal() } }
    }

    func testASlowAndAHungDeviceHoldUpNoOtherDeviceTheSocketOrTheWatchdog() throws {
        setenv("WATCHDOG_USEC", "200000", 1)
        setenv("WATCHDOG_PID", "\(getpid())", 1)
        defer { unsetenv("WATCHDOG_USEC"); unsetenv("WATCHDOG_PID") }
        let daemon = try daemon()
        try daemon.start()
        try daemon.startControl()
        let (fast, slow, hung) = (PCIAddress(fast)!, PCIAddress(slow)!, PCIAddress(hung)!)
        let gate = Gate()
        defer { gate.open() }
        daemon.device(slow).armStall = { Thread.sleep(forTimeInterval: 5) }
        daemon.device(hung).armStall = { gate.semaphore.wait() }
        // Both wake; their re-arms (rearm_delay 0s) begin at once and stall.
        daemon.device(slow).access()
        daemon.device(hung).access()
        let stalledSince = Date()
        XCTAssertTrue(daemon.waitUntil { daemon.manager.devices().filter { $0.phase == .arming }.count == 2 })

        // Meanwhile the fast device's wakes are handled and re-armed, one after another.
        for round in 1...5 {
            daemon.device(fast).access()
            XCTAssertTrue(daemon.waitUntil(timeout: 3) {
                daemon.source.device(fast)?.calls(.arm) == round + 1 && daemon.source.device(fast)?.engagement == .oneShot
            }, "fast re-armed \(round) times while the others stall")
        }
        XCTAssertLessThan(Date().timeIntervalSince(stalledSince), 5, "all of that happened while the slow arm still ran")

        // The control socket answers, and tells the truth about the stuck device.
        let client = try ManagerClient(socketPath: daemon.socketPath)
        XCTAssertTrue(daemon.waitUntil(timeout: 5) { daemon.logs.entries(.deviceStuck, device: hung).count == 1 })
        let hungRecord = try client.device("\(hung)")
        XCTAssertEqual(hungRecord.state, .stuck)
        XCTAssertEqual(hungRecord.stuckCall, "arm")
        XCTAssertGreaterThanOrEqual(hungRecord.stuckUsec ?? 0, 1_000_000, "stuck for at least the bound")
        XCTAssertTrue(Rendering.state(hungRecord).hasPrefix("stuck (arm has not returned for "), Rendering.state(hungRecord))
        XCTAssertEqual(try client.device("\(fast)").state, .lowPower)
        // Found by the manager's once-a-second look: 1 to 2 s after the call began (bound 1 s).
        let stuckMessage = daemon.logs.entries(.deviceStuck, device: hung).first?.message ?? ""
        XCTAssertTrue(stuckMessage.contains("stuck: its arm has not returned for 1s")
                      || stuckMessage.contains("stuck: its arm has not returned for 2s"), stuckMessage)

        // The watchdog pings from the loop meanwhile.
        var pings = 0
        XCTAssertTrue(daemon.waitUntil(timeout: 10) {
            pings += (try? daemon.notifications().filter { $0 == "WATCHDOG=1" }.count) ?? 0
            return pings >= 3
        }, "saw \(pings) pings")

        // The slow arm returns after 5 s: armed, and said to be back.
        XCTAssertTrue(daemon.waitUntil(timeout: 10) {
            daemon.source.device(slow)?.engagement == .oneShot && daemon.manager.device(slow)?.phase.isLowPower == true
        })
        XCTAssertEqual(daemon.logs.entries(.deviceBack, device: slow).map(\.message).filter { $0.contains("returned after") }.count, 1)

        // The hung one returns when let go, and the events that waited behind it are taken.
        gate.open()
        XCTAssertTrue(daemon.waitUntil { daemon.manager.device(hung)?.phase.isLowPower == true })
        XCTAssertEqual(try client.device("\(hung)").state, .lowPower)
        daemon.stop()
    }

    func testStopIsBoundedWhenADeviceNeverReturns() throws {
        let daemon = try daemon()
        try daemon.start()
        let hung = PCIAddress(hung)!
        let gate = Gate()
        defer { gate.open() }
        daemon.device(hung).armStall = { gate.semaphore.wait() }
        daemon.device(hung).access()
        XCTAssertTrue(daemon.waitUntil { daemon.manager.devices().first { $0.address == hung }?.phase == .arming })
        let stopped = DispatchSemaphore(value: 0)
        daemon.onQueue { $0.stop { stopped.signal() } }
        XCTAssertEqual(stopped.wait(timeout: .now() + 10), .success, "stop finished within its bound (2s here)")
        XCTAssertEqual(daemon.source.device(PCIAddress(fast)!)?.engagement, Engagement.none, "the other devices were stopped as their policy says (on_stop = exit)")
    }
}
