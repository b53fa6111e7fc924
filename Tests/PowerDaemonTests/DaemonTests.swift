import ControlProtocol
import Foundation
import PowerDaemon
import PowerPolicy
import VFIO
import VFIOSimulator
import XCTest

/// The daemon through its real Dispatch loop, with simulated devices that follow the
/// kernel's semantics over real eventfds, and a fake systemd reading sd_notify.
/// (The same behaviours run against the real kernel under real systemd in the VM lab.)
final class DaemonTests: XCTestCase {
    let nic = "0000:00:02.0"
    let nvme = "0000:00:03.0"

    private func harness(main: String = "[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n", devices: [String: String]? = nil) throws -> DaemonHarness {
        try DaemonHarness(mainConfig: main, devices: devices ?? [
            "10-lab.conf": """
            [[device]]
            address = "\(nic)"
            name = "nic"

            [[device]]
            address = "\(nvme)"
            name = "disk"
            """,
        ])
    }

    func testStartArmsEveryDeviceOneShotThenReportsReady() throws {
        let daemon = try harness()
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        try daemon.start()
        for address in [a, b] {
            XCTAssertEqual(daemon.device(address).engagement, .oneShot)
            XCTAssertTrue(daemon.device(address).isSuspended)
            XCTAssertEqual(daemon.logs.entries(.armed, device: address).count, 1)
        }
        XCTAssertEqual(try daemon.notifications(), ["READY=1", "STATUS=2 devices: 2 in low power; 0 wakes"])
        XCTAssertEqual(daemon.logs.entries(.started).map(\.message), ["started: 2 devices: 2 in low power; 0 wakes"])
    }

    func testAtNoticeLevelWakesAreHandledWithoutEntries() throws {
        // `--log-level notice`: wakes are handled and no info entry is written. (The manager
        // skips building such entries at all; bench/ measures what that saves.)
        let daemon = try harness(main: "[defaults]\nsource = \"own\"\nrearm_delay = \"0s\"\n")
        daemon.logLevel = .notice
        let a = try daemon.plug(nic)
        try daemon.plug(nvme)
        try daemon.start()
        daemon.device(a).access()
        XCTAssertTrue(daemon.waitUntil { daemon.device(a).calls(.arm) == 2 && daemon.device(a).engagement == .oneShot }, "re-armed")
        XCTAssertEqual(daemon.onQueue { $0.device(a)?.statistics.wakes }, 1)
        XCTAssertEqual(daemon.logs.entries.filter { $0.level < .notice }.map(\.message), [])
        XCTAssertEqual(daemon.logs.entries(.started).count, 1, "notice entries are still written")
    }

    func testAWakeIsReArmedAfterTheDelayAndTheOtherDeviceIsUntouched() throws {
        let daemon = try harness()
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        try daemon.start()
        let callsOnB = daemon.device(b).totalCalls
        _ = try daemon.notifications()

        daemon.device(a).access()
        XCTAssertTrue(daemon.waitUntil { daemon.logs.entries(.woke, device: a).count == 1 })
        XCTAssertEqual(daemon.device(a).engagement, .none, "a one-shot wake disarms")
        XCTAssertEqual(daemon.phase(a), .waitingToRearm)
        let woke = try XCTUnwrap(daemon.logs.entries(.woke, device: a).first)
        XCTAssertEqual(woke.metadata["VFIO_WAKES"], "1")
        XCTAssertNotNil(woke.metadata["VFIO_LOW_POWER_USEC"].flatMap(Int.init))

        // (The device is engaged when its arm returns on its own queue; the daemon takes the
        // result on its queue a moment later.)
        XCTAssertTrue(daemon.waitUntil { daemon.device(a).engagement == .oneShot && daemon.manager.device(a)?.phase.isLowPower == true },
                      "re-armed after rearm_delay")
        XCTAssertEqual(daemon.logs.entries(.rearmed, device: a).count, 1)
        XCTAssertEqual(daemon.device(b).totalCalls, callsOnB, "a wake of one device never touches another")
        XCTAssertEqual(try daemon.notifications(), [
            "STATUS=2 devices: 1 in low power, 1 awake; 1 wake",
            "STATUS=2 devices: 2 in low power; 1 wake",
        ])
    }

    /// power/control=on: the arm succeeds but the kernel never suspends the device. The status
    /// says so, the journal says why once, and the daemon follows the device until it does.
    func testAnArmedDeviceTheKernelKeepsAwakeIsReportedUntilItSuspends() throws {
        let daemon = try harness(main: "[daemon]\nguest_d3_interval = \"100ms\"\n[defaults]\nsource = \"own\"\n")
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        daemon.device(a).forbidRuntimePM(true)
        try daemon.start()
        XCTAssertEqual(daemon.device(a).engagement, .oneShot, "the arm itself succeeds")
        XCTAssertFalse(daemon.device(a).isSuspended)
        XCTAssertEqual(daemon.phase(a), .lowPower, "within the bound, the arming is not yet in doubt")
        // (waitUntil's condition runs on the daemon's queue: it reads the manager directly.)
        let phaseOfA = { @DaemonActor in daemon.manager.devices().first { $0.address == a }.map { DeviceRecord.State($0.phase) } }
        XCTAssertTrue(daemon.waitUntil(timeout: 10) { phaseOfA() == .keptAwake },
                      "\(String(describing: daemon.phase(a)))")
        let kept = daemon.logs.entries(.keptAwake, device: a)
        XCTAssertEqual(kept.count, 1)
        XCTAssertTrue(kept.first?.message.contains("power/control is \"on\"") == true, kept.first?.message ?? "")
        XCTAssertEqual(daemon.onQueue { $0.statistics().lowPower }, 1)
        XCTAssertEqual(daemon.phase(b), .lowPower, "the other device is in low power, as the kernel says")
        XCTAssertEqual(daemon.logs.entries(.keptAwake, device: b).count, 0)

        daemon.device(a).forbidRuntimePM(false)
        XCTAssertTrue(daemon.waitUntil { phaseOfA() == .lowPower }, "\(String(describing: daemon.phase(a)))")
        XCTAssertEqual(daemon.logs.entries(.suspendedAtLast, device: a).count, 1)
        XCTAssertEqual(daemon.logs.entries(.keptAwake, device: a).count, 1, "said once")
        XCTAssertEqual(daemon.device(a).calls(.arm), 1, "following the device makes no call on it")
    }

    func testReloadAppliesOnlyTheDifference() throws {
        let daemon = try harness()
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        let c = try daemon.plug("0000:00:04.0")
        try daemon.start()
        let calls = (daemon.device(a).totalCalls, daemon.device(b).totalCalls)
        _ = try daemon.notifications()

        daemon.reload()
        XCTAssertEqual(daemon.device(a).totalCalls, calls.0, "an unchanged device gets no call: any ioctl would wake it")
        XCTAssertEqual(daemon.device(b).totalCalls, calls.1)

        try daemon.write("[[device]]\naddress = \"\(c)\"\nmode = \"reentrant\"\n", to: "etc/vfio-powerd/devices.d/20-new.conf")
        try daemon.write("[[device]]\naddress = \"\(nic)\"\nname = \"nic\"\nrearm_delay = \"5s\"\n", to: "etc/vfio-powerd/devices.d/10-lab.conf")
        daemon.reload()
        XCTAssertEqual(daemon.device(c).engagement, .reentrant, "a new device is opened and armed")
        XCTAssertEqual(daemon.device(a).totalCalls, calls.0, "a new re-arm delay changes nothing while armed")
        XCTAssertTrue(daemon.device(b).isClosed, "a device no longer configured is closed")
        XCTAssertEqual(daemon.device(b).calls(.exit), 1, "and left awake")
        XCTAssertEqual(daemon.logs.entries(.reloaded).last?.message,
                       "reloaded: 1 added, 1 removed, 1 changed (\(nic) (nic): rearm_delay 1s → 5s), 0 unchanged; 2 devices: 2 in low power; 0 wakes",
                       "the reload names what it changed, in the files' words")
        let notes = try daemon.notifications()
        XCTAssertEqual(notes.filter { $0.hasPrefix("RELOADING=1") }.count, 2)
        XCTAssertTrue(notes.first!.hasPrefix("RELOADING=1\nMONOTONIC_USEC="), notes.first!)
        XCTAssertEqual(notes.filter { $0 == "READY=1" }.count, 2)
    }

    func testABrokenReloadChangesNothing() throws {
        let daemon = try harness()
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        try daemon.start()
        let calls = (daemon.device(a).totalCalls, daemon.device(b).totalCalls)
        try daemon.write("[[device]]\naddress = \"0000:00:09.0\"\nrearm_dealy = \"5s\"\n", to: "etc/vfio-powerd/devices.d/30-typo.conf")
        daemon.reload()
        let rejected = daemon.logs.entries(.configRejected)
        XCTAssertEqual(rejected.count, 2, rejected.map(\.message).joined(separator: "\n"))
        XCTAssertTrue(rejected[0].message.hasSuffix("30-typo.conf:3:1: device.rearm_dealy: unknown key; did you mean `rearm_delay`?"), rejected[0].message)
        XCTAssertEqual(rejected[1].message, "configuration rejected on reload; the running configuration stays in force: 1 error")
        XCTAssertEqual(daemon.device(a).totalCalls, calls.0)
        XCTAssertEqual(daemon.device(b).totalCalls, calls.1)
        XCTAssertEqual(daemon.onQueue { $0.summary() }, "2 devices: 2 in low power; 0 wakes")
    }

    func testAnInvalidConfigurationStartsNothing() throws {
        let daemon = try harness(main: "[defaults]\nsource = \"own\"\nrearm_delay = 30\n")
        let a = try daemon.plug(nic)
        XCTAssertThrowsError(try daemon.start()) { error in
            XCTAssertEqual(error as? Manager.StartError, .configRejected(errors: 1))
        }
        XCTAssertEqual(daemon.source.opens(a), 0, "nothing is opened with a bad configuration")
        XCTAssertTrue(daemon.logs.entries(.configRejected).contains { $0.message.contains("vfio-powerd.conf:3:15: defaults.rearm_delay: expected a duration") },
                      daemon.logs.entries.map(\.message).joined(separator: "\n"))
    }

    func testARemovedDeviceIsReleasedAndManagedAgainWhenItReturns() throws {
        let daemon = try harness(main: "[daemon]\nrescan_interval = \"1s\"\n[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n")
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        try daemon.start()
        let removed = daemon.device(a)
        daemon.source.unplug(a)
        XCTAssertTrue(daemon.waitUntil { removed.isClosed }, "the removal request makes the daemon close the device at once")
        XCTAssertEqual(daemon.phase(a), .gone)
        XCTAssertEqual(daemon.logs.entries(.deviceGone, device: a).count, 1)
        XCTAssertEqual(daemon.device(b).engagement, .oneShot, "the other device is not disturbed")
        // Like the kernel's unbind, the unplug resumes the device before asking for it back,
        // so the daemon sees one wake first.
        XCTAssertEqual(daemon.onQueue { $0.summary() }, "2 devices: 1 in low power, 1 missing; 1 wake")

        daemon.source.plug(a)
        XCTAssertTrue(daemon.waitUntil { daemon.device(a).engagement == .oneShot }, "found again by the rescan and armed")
        XCTAssertEqual(daemon.logs.entries(.deviceBack, device: a).count, 1)
    }

    func testStopLeavesDevicesAwakeUnlessThePolicySaysKeep() throws {
        let daemon = try harness(devices: ["10-lab.conf": """
            [[device]]
            address = "\(nic)"

            [[device]]
            address = "\(nvme)"
            on_stop = "keep"
            """])
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        try daemon.start()
        _ = try daemon.notifications()
        daemon.stop()
        XCTAssertEqual(daemon.device(a).calls(.exit), 1, "on_stop = exit: LOW_POWER_EXIT before closing")
        XCTAssertEqual(daemon.device(b).calls(.exit), 0, "on_stop = keep: no EXIT")
        XCTAssertTrue(daemon.device(a).isClosed)
        XCTAssertTrue(daemon.device(b).isClosed)
        XCTAssertEqual(try daemon.notifications().first, "STOPPING=1")
        XCTAssertEqual(daemon.logs.entries(.stopping).count, 1)
    }

    /// On a manual clock: time moves only when the test says, so "not re-armed before the
    /// doubled delay" is checked at the instant before it, with no sleep.
    func testAFlappingDeviceBacksOffAndIsSummarised() throws {
        let daemon = try harness(main: "[defaults]\nsource = \"own\"\nrearm_delay = \"2s\"\nflap_max_wakes = 1\nflap_window = \"10m\"\n",
                                 devices: ["10-lab.conf": "[[device]]\naddress = \"\(nic)\"\n"])
        let clock = ManualClock()
        daemon.clock = clock
        let a = try daemon.plug(nic)
        try daemon.start()
        daemon.device(a).access()
        // (waitUntil's condition runs on the daemon's queue: it reads the manager directly.)
        XCTAssertTrue(daemon.waitUntil { daemon.manager.device(a).map { DeviceRecord.State($0.phase) } == .waitingToRearm })
        clock.advance(by: .seconds(2) - .nanoseconds(1))
        XCTAssertEqual(daemon.device(a).engagement, .none, "not before the 2s re-arm delay")
        clock.advance(by: .nanoseconds(1))
        XCTAssertTrue(daemon.waitUntil { daemon.device(a).engagement == .oneShot && daemon.logs.entries(.rearmed).count == 1 })

        daemon.device(a).access()
        XCTAssertTrue(daemon.waitUntil { daemon.logs.entries(.flappingStarted, device: a).count == 1 })
        XCTAssertEqual(daemon.phase(a), .backingOff)
        XCTAssertTrue(daemon.onQueue { $0.summary() }.hasSuffix("; 2 wakes; 1 flapping"))
        clock.advance(by: .seconds(4) - .nanoseconds(1))
        XCTAssertEqual(daemon.device(a).engagement, .none, "backing off: the 2s re-arm delay is doubled")
        XCTAssertEqual(daemon.phase(a), .backingOff)
        clock.advance(by: .nanoseconds(1))
        XCTAssertTrue(daemon.waitUntil { daemon.device(a).engagement == .oneShot }, "re-armed after the backoff")
        XCTAssertEqual(daemon.logs.entries(.rearmed, device: a).count, 1, "re-arms while flapping are summarised, not logged")
    }

    /// A process holds the group at start (EBUSY): the status names it, and its exit (its
    /// pidfd) opens and arms the device, with no reload and no timer.
    func testABusyDeviceIsTakenWhenItsHolderExits() throws {
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/bin/sleep")
        holder.arguments = ["60"]
        try holder.run()
        defer { if holder.isRunning { holder.terminate() } }
        let daemon = try harness()
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        let sleeper = ProcessHolding(pid: holder.processIdentifier, command: "sleep")
        daemon.source.failOpen(a, with: VFIOError(.groupBusy(node: "/dev/vfio/5", holders: [sleeper]), device: a,
                                                  operation: .openGroup("5"), errno: .resourceBusy))
        try daemon.start()
        XCTAssertEqual(daemon.phase(a), .failed)
        let shown = daemon.onQueue { $0.devices().first { $0.address == a }?.lastError } ?? nil
        XCTAssertTrue(shown?.contains("sleep (pid \(holder.processIdentifier))") == true, shown ?? "no last error")
        XCTAssertEqual(daemon.device(b).engagement, .oneShot)

        daemon.source.plug(a)  // the group is free once the holder is gone
        holder.terminate()
        XCTAssertTrue(daemon.waitUntil { daemon.source.device(a)?.engagement == .oneShot && daemon.manager.device(a)?.phase.isLowPower == true },
                      "armed after the holder exited")
        XCTAssertEqual(daemon.logs.entries(.deviceBack, device: a).map(\.message),
                       ["0000:00:02.0 (nic): the process that held its group exited; opening it now"])
        XCTAssertEqual(daemon.phase(a), .lowPower)
    }

    func testOneFailingDeviceNeverDisturbsAnother() throws {
        let daemon = try harness()
        let (a, b) = (try daemon.plug(nic), try daemon.plug(nvme))
        // Busy, and /proc did not say by whom: the open is not retried on a holder's exit.
        daemon.source.failOpen(a, with: VFIOError(.groupBusy(node: "/dev/vfio/5", holders: []), device: a,
                                                  operation: .openGroup("5"), errno: .resourceBusy))
        try daemon.start()
        XCTAssertEqual(daemon.phase(a), .failed)
        XCTAssertEqual(daemon.device(b).engagement, .oneShot)
        let skipped = try XCTUnwrap(daemon.logs.entries(.deviceSkipped, device: a).first)
        XCTAssertEqual(skipped.message, "0000:00:02.0 (nic): not managed: /dev/vfio/5 is held by another process (could not tell which from /proc) (EBUSY). A VFIO group can be open in one process at a time: stop that process, or leave this device to it")
        XCTAssertEqual(daemon.onQueue { $0.summary() }, "2 devices: 1 in low power, 1 failing; 0 wakes")

        // EIO on re-arm: the device failed to resume; it is closed and treated as gone.
        daemon.device(b).failNext(.arm, with: .ioError)
        daemon.device(b).access()
        XCTAssertTrue(daemon.waitUntil { daemon.logs.entries(.deviceGone, device: b).count == 1 })
        XCTAssertEqual(daemon.logs.entries(.deviceGone, device: b).first?.metadata["ERRNO"], "5")
        daemon.settle()  // the close runs on the device's queue
        XCTAssertTrue(daemon.device(b).isClosed)
        XCTAssertEqual(daemon.phase(a), .failed, "still failed, untouched")

        // Once the holder lets go, a reload (the operator's "try again") opens it anew.
        daemon.source.plug(a)
        daemon.reload()
        XCTAssertEqual(daemon.device(a).engagement, .oneShot)
        XCTAssertEqual(daemon.logs.entries(.deviceBack, device: a).count, 1)
    }

    func testTheWatchdogIsPingedFromTheLoop() throws {
        setenv("WATCHDOG_USEC", "200000", 1)
        setenv("WATCHDOG_PID", "\(getpid())", 1)
        defer { unsetenv("WATCHDOG_USEC"); unsetenv("WATCHDOG_PID") }
        let daemon = try harness()
        try daemon.plug(nic)
        try daemon.plug(nvme)
        try daemon.start()
        // Three pings prove a repeating timer, not a one-off. Waiting for them rather than
        // counting after a fixed sleep keeps a loaded CI machine from failing the test; the
        // interval itself is SystemdWatchdogTests' business.
        var pings = 0
        XCTAssertTrue(daemon.waitUntil(timeout: 10) {
            pings += (try? daemon.notifications().filter { $0 == "WATCHDOG=1" }.count) ?? 0
            return pings >= 3
        }, "WatchdogSec=200ms: a ping every 100 ms from the loop; saw \(pings)")
        daemon.stop()
    }
}
