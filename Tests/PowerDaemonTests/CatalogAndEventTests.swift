import Foundation
import Logging
@testable import PowerDaemon
import PowerPolicy
import SystemPackage
import VFIO
import XCTest

/// What an operator reads: the journal catalog covers exactly the daemon's events, and the
/// words, MESSAGE_ID, priority and fields of every device event are pinned here, so a change
/// to any of them is a visible, reviewed change (operators filter on them; the man page
/// vfio-powerd(8) quotes them).
final class CatalogAndEventTests: XCTestCase {

    // MARK: The catalog

    /// The repository root, from this file: Tests/PowerDaemonTests/CatalogAndEventTests.swift.
    static let repositoryRoot: String = {
        var components = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        components.removeLast(3)
        return components.joined(separator: "/")
    }()

    static var catalogPath: String { repositoryRoot + "/systemd/vfio-powerd.catalog" }

    /// The ids of the catalog's entries (`-- <id>` lines), in file order, with repeats.
    static func catalogIDs() throws -> [String] {
        let contents = try String(contentsOfFile: catalogPath, encoding: .utf8)
        return contents.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { $0.hasPrefix("-- ") }
            .map { String($0.dropFirst(3).split(separator: " ").first ?? "") }
    }

    func testEveryEventHasExactlyOneCatalogEntry() throws {
        let ids = try Self.catalogIDs()
        for event in DaemonEvent.allCases {
            XCTAssertEqual(ids.filter { $0 == event.messageID }.count, 1,
                           "\(event) (\(event.messageID)) must have exactly one entry in systemd/vfio-powerd.catalog")
        }
    }

    func testTheCatalogHasNoEntryThatIsNotAnEvent() throws {
        let known = Set(DaemonEvent.allCases.map(\.messageID))
        let unknown = try Self.catalogIDs().filter { !known.contains($0) }
        XCTAssertEqual(unknown, [], "catalog entries with no DaemonEvent: an id is never reused, so remove the entry or add the event")
    }

    func testEventIDsAreDistinctWellFormedAndNotWrittenElsewhereInTheCatalog() throws {
        let ids = DaemonEvent.allCases.map(\.messageID)
        XCTAssertEqual(Set(ids).count, ids.count, "two events share a MESSAGE_ID")
        for id in ids {
            XCTAssertEqual(id.count, 32, id)
            XCTAssertTrue(id.allSatisfy { $0.isHexDigit && !$0.isUppercase }, "\(id): 32 lowercase hex digits")
        }
        // An id quoted in some entry's text would be a second, misleading occurrence.
        let contents = try String(contentsOfFile: Self.catalogPath, encoding: .utf8)
        for event in DaemonEvent.allCases {
            XCTAssertEqual(contents.components(separatedBy: event.messageID).count - 1, 1, "\(event): the id appears more than once")
        }
    }

    /// vfio-powerd(8) lists every MESSAGE_ID in its JOURNAL section; keep it complete.
    func testTheManualListsEveryMessageID() throws {
        let manual = try String(contentsOfFile: Self.repositoryRoot + "/docs/man/vfio-powerd.8.scd", encoding: .utf8)
        for event in DaemonEvent.allCases {
            XCTAssertTrue(manual.contains(event.messageID), "docs/man/vfio-powerd.8.scd does not list \(event) (\(event.messageID))")
        }
    }

    // MARK: The words of every device event

    let gpu = PCIAddress("0000:01:00.0")!
    let nic = PCIAddress("0000:02:00.0")!

    func context(_ address: PCIAddress? = nil, name: String? = "gpu0", mode: DevicePolicy.Mode = .oneShot,
                 error: VFIOError? = nil) -> DeviceController.Context {
        DeviceController.Context(address: address ?? gpu, name: name, mode: mode, error: error,
                                 statistics: DeviceStatistics(), now: MonotonicInstant(.seconds(1000)))
    }

    /// The fields every entry about the gpu carries, plus `extra`.
    func gpuFields(_ extra: [String: String] = [:]) -> [String: String] {
        ["VFIO_DEVICE": "0000:01:00.0", "VFIO_NAME": "gpu0"].merging(extra) { _, new in new }
    }

    func assertEntry(_ event: PolicyEvent, _ context: DeviceController.Context,
                     _ expected: EventReporter.Entry, file: StaticString = #filePath, line: UInt = #line) {
        let entry = EventReporter.entry(for: event, context)
        XCTAssertEqual(entry.message, expected.message, "message", file: file, line: line)
        XCTAssertEqual(entry.event, expected.event, "event", file: file, line: line)
        XCTAssertEqual(entry.level, expected.level, "level", file: file, line: line)
        XCTAssertEqual(entry.fields, expected.fields, "fields", file: file, line: line)
        XCTAssertEqual(entry, expected, file: file, line: line)
    }

    func testArmed() {
        assertEntry(.armed(.oneShot), context(), .init(
            event: .armed, level: .info,
            message: "0000:01:00.0 (gpu0): armed one-shot low power",
            fields: gpuFields(["VFIO_MODE": "oneshot"])))
    }

    func testArmedWithoutANameHasNoNameField() {
        assertEntry(.armed(.reentrant), context(nic, name: nil, mode: .reentrant), .init(
            event: .armed, level: .info,
            message: "0000:02:00.0: armed re-entrant low power",
            fields: ["VFIO_DEVICE": "0000:02:00.0", "VFIO_MODE": "reentrant"]))
    }

    func testWoke() {
        assertEntry(.woke(count: 1, inLowPowerFor: .milliseconds(90_250)), context(), .init(
            event: .woke, level: .info,
            message: "0000:01:00.0 (gpu0): woke after 1m30s250ms in low power",
            fields: gpuFields(["VFIO_WAKES": "1", "VFIO_LOW_POWER_USEC": "90250000"])))
    }

    func testWokeWithCoalescedWakesKeepsMicroseconds() {
        assertEntry(.woke(count: 3, inLowPowerFor: .microseconds(1_500)), context(), .init(
            event: .woke, level: .info,
            message: "0000:01:00.0 (gpu0): woke after 1ms in low power (3 wakes coalesced)",
            fields: gpuFields(["VFIO_WAKES": "3", "VFIO_LOW_POWER_USEC": "1500"])))
    }

    func testRearmed() {
        assertEntry(.rearmed(.oneShot, quietFor: .seconds(30)), context(), .init(
            event: .rearmed, level: .info,
            message: "0000:01:00.0 (gpu0): re-armed one-shot low power after 30s awake",
            fields: gpuFields(["VFIO_MODE": "oneshot"])))
    }

    func testFlappingStarted() {
        assertEntry(.flappingStarted(wakes: 11, window: .seconds(600), backoff: .seconds(60)), context(), .init(
            event: .flappingStarted, level: .warning,
            message: "0000:01:00.0 (gpu0): flapping: 11 wakes within 10m; re-arming only after 1m, doubling with each further wake; wakes are summarised until it is quiet again",
            fields: gpuFields(["VFIO_WAKES": "11"])))
    }

    func testFlappingEnded() {
        assertEntry(.flappingEnded(suppressedWakes: 4, lasted: .seconds(1500)), context(), .init(
            event: .flappingEnded, level: .notice,
            message: "0000:01:00.0 (gpu0): quiet again after 25m of flapping (4 wakes summarised); normal re-arming resumes",
            fields: gpuFields(["VFIO_WAKES": "4"])))
    }

    func testAlreadyEngagedIsANoticeUnderTheArmFailedID() {
        assertEntry(.alreadyEngaged(.oneShot), context(), .init(
            event: .armFailed, level: .notice,
            message: "0000:01:00.0 (gpu0): already in low power (a previous holder of the device left it engaged); exiting low power and arming one-shot again",
            fields: gpuFields(["VFIO_MODE": "oneshot"])))
    }

    func testArmFailedInTheStateMachinesWords() {
        assertEntry(.armFailed(.init(.alreadyEngaged, errno: .invalidArgument), .gaveUpAfterExit),
                    context(), .init(
            event: .armFailed, level: .error,
            message: "0000:01:00.0 (gpu0): cannot arm: still refused after exiting low power; giving up on this device until it returns or its policy changes (EINVAL)",
            fields: gpuFields(["ERRNO": "22"])))
    }

    func testArmFailedPrefersTheVFIOErrorsWords() {
        let busy = VFIOError(.deviceBusy, device: gpu, operation: .arm(.oneShotEntry), errno: .resourceBusy)
        assertEntry(.armFailed(.init(errno: .resourceBusy), .closedUntilRetried),
                    context(error: busy), .init(
            event: .armFailed, level: .error,
            message: "0000:01:00.0 (gpu0): cannot arm: the device is held by another user (EBUSY)",
            fields: gpuFields(["ERRNO": "16"])))
    }

    func testD3coldWriteFailed() {
        assertEntry(.d3coldWriteFailed(.init(errno: .permissionDenied), .notArmed),
                    context(), .init(
            event: .armFailed, level: .error,
            message: "0000:01:00.0 (gpu0): cannot write d3cold_allowed: could not forbid D3cold, so the device is not armed (its policy says it may not resume from D3cold) (EACCES)",
            fields: gpuFields(["ERRNO": "13"])))
    }

    func testOpenFailedBusyNamesTheHolder() {
        let busy = VFIOError(.groupBusy(node: "/dev/vfio/5", holders: [ProcessHolding(pid: 4242, command: "qemu-system-x86")]),
                             device: gpu, operation: .openGroup("5"), errno: .resourceBusy)
        assertEntry(.openFailed(.init(errno: .resourceBusy)),
                    context(error: busy), .init(
            event: .deviceSkipped, level: .warning,
            message: "0000:01:00.0 (gpu0): not managed yet: /dev/vfio/5 is held by qemu-system-x86 (pid 4242) (EBUSY). A VFIO group can be open in one process at a time: stop that process, or leave this device to it; it is taken as soon as that process exits",
            fields: gpuFields(["ERRNO": "16"])))
    }

    func testABusyHolderThatExitedIsSaid() {
        assertEntry(.busyHolderExited, context(), .init(
            event: .deviceBack, level: .notice,
            message: "0000:01:00.0 (gpu0): the process that held its group exited; opening it now",
            fields: gpuFields()))
    }

    func testOpenFailedWithoutAVFIOError() {
        assertEntry(.openFailed(.init(errno: .notPermitted)),
                    context(), .init(
            event: .deviceSkipped, level: .warning,
            message: "0000:01:00.0 (gpu0): not managed: permission denied opening the device: the daemon needs /dev/vfio access (DeviceAllow=, root) (EPERM)",
            fields: gpuFields(["ERRNO": "1"])))
    }

    func testUnsupported() {
        // What DeviceController builds when PROBE refused the entry the policy needs.
        let absent = VFIOError(.featureAbsent(.oneShotEntry), device: gpu, operation: .manageLowPower,
                               errno: .inappropriateIOCTLForDevice)
        assertEntry(.unsupported(.inappropriateIOCTLForDevice),
                    context(error: absent), .init(
            event: .deviceSkipped, level: .warning,
            message: "0000:01:00.0 (gpu0): not managed: the kernel does not offer LOW_POWER_ENTRY_WITH_WAKEUP for this device (ENOTTY). Low-power features need Linux 6.1 or later and the vfio-pci driver",
            fields: gpuFields(["ERRNO": "25"])))
    }

    func testUnsupportedInTheStateMachinesWords() {
        assertEntry(.unsupported(.inappropriateIOCTLForDevice),
                    context(), .init(
            event: .deviceSkipped, level: .warning,
            message: "0000:01:00.0 (gpu0): not managed: the kernel has no VFIO low-power feature for this device (needs Linux >= 6.1 and the vfio-pci driver); not retried (ENOTTY)",
            fields: gpuFields(["ERRNO": "25"])))
    }

    func testExitFailed() {
        assertEntry(.exitFailed(.init(errno: .invalidArgument), .closedInstead), context(), .init(
            event: .wakeFailed, level: .error,
            message: "0000:01:00.0 (gpu0): cannot exit low power: closing the device instead (the kernel exits low power on close) (EINVAL)",
            fields: gpuFields(["ERRNO": "22"])))
    }

    func testExitFailedWithAVFIOErrorAndAdvice() {
        let stuck = VFIOError(.resumeFailed, device: gpu, operation: .exitLowPower, errno: .ioError)
        assertEntry(.exitFailed(.init(errno: .ioError), .closedInstead),
                    context(error: stuck), .init(
            event: .wakeFailed, level: .error,
            message: "0000:01:00.0 (gpu0): cannot exit low power: the device failed to resume from low power (it may be stuck in D3cold) (EIO). Set `d3cold = \"forbid\"` for this device, and check `dmesg`",
            fields: gpuFields(["ERRNO": "5"])))
    }

    func testGoneNoticedByTheDaemon() {
        assertEntry(.deviceGone(nil), context(), .init(
            event: .deviceGone, level: .warning,
            message: "0000:01:00.0 (gpu0): gone (removed or unbound); closed so the kernel can finish removing it; it is managed again when it returns",
            fields: gpuFields()))
    }

    func testGoneWithAnErrnoOnly() {
        assertEntry(.deviceGone(.ioError), context(), .init(
            event: .deviceGone, level: .warning,
            message: "0000:01:00.0 (gpu0): gone (EIO); closed so the kernel can finish removing it; it is managed again when it returns",
            fields: gpuFields(["ERRNO": "5"])))
    }

    func testGoneWithTheKernelsError() {
        let gone = VFIOError(.deviceGone, device: gpu, operation: .arm(.oneShotEntry), errno: .operationNotSupportedByDevice)
        XCTAssertEqual(DeviceController.failure(gone), CallFailure(.gone, errno: .operationNotSupportedByDevice), "the kernel's errno, kept")
        assertEntry(.deviceGone(.operationNotSupportedByDevice), context(error: gone), .init(
            event: .deviceGone, level: .warning,
            message: "0000:01:00.0 (gpu0): gone: the device is gone (removed or unbound); closed so the kernel can finish removing it; it is managed again when it returns",
            fields: gpuFields(["ERRNO": "19"])))
    }

    func testNotAvailableBecauseNotPresent() {
        let missing = VFIOError(.deviceNotFound(searched: "/sys/bus/pci/devices"), device: gpu, operation: .openDevice)
        XCTAssertEqual(DeviceController.failure(missing), CallFailure(.gone, errno: nil), "no call answered: no errno")
        assertEntry(.deviceGone(nil), context(error: missing), .init(
            event: .deviceSkipped, level: .warning,
            message: "0000:01:00.0 (gpu0): not available: there is no such PCI device in /sys/bus/pci/devices. Check the address with `lspci -D`; managed as soon as it is (looked for every rescan_interval and on reload)",
            fields: gpuFields()))
    }

    func testNotAvailableBecauseBoundToAnotherDriver() {
        let advice = "Bind it to vfio-pci: echo 0000:02:00.0 > /sys/bus/pci/drivers/e1000e/unbind; echo vfio-pci > /sys/bus/pci/devices/0000:02:00.0/driver_override; echo 0000:02:00.0 > /sys/bus/pci/drivers_probe (or `driverctl set-override 0000:02:00.0 vfio-pci`)"
        let bound = VFIOError(.notBoundToVFIO(driver: "e1000e"), device: nic, operation: .openDevice)
        XCTAssertEqual(DeviceController.failure(bound), CallFailure(.gone, errno: nil), "no call answered: no errno")
        assertEntry(.deviceGone(nil), context(nic, name: nil, error: bound), .init(
            event: .deviceSkipped, level: .warning,
            message: "0000:02:00.0: not available: it is bound to e1000e, not vfio-pci. \(advice); managed as soon as it is (looked for every rescan_interval and on reload)",
            fields: ["VFIO_DEVICE": "0000:02:00.0"]))
    }

    func testBack() {
        assertEntry(.deviceBack, context(), .init(
            event: .deviceBack, level: .notice,
            message: "0000:01:00.0 (gpu0): back; managing it again",
            fields: gpuFields()))
    }

    func testReleased() {
        assertEntry(.released, context(), .init(
            event: .deviceReleased, level: .info,
            message: "0000:01:00.0 (gpu0): no longer managed; left awake",
            fields: gpuFields()))
    }

    func testKeptAwakeSaysWhyAndWhatToDo() {
        assertEntry(.keptAwake(.runtimePMForbidden), context(), .init(
            event: .keptAwake, level: .warning,
            message: "0000:01:00.0 (gpu0): armed, but the kernel keeps it awake 2s later: power/control is \"on\", which forbids runtime suspend. Write \"auto\" to /sys/bus/pci/devices/0000:01:00.0/power/control (and find what set it: a udev rule, tlp, powertop's counterpart). Checked again every guest_d3_interval",
            fields: gpuFields()))
        assertEntry(.keptAwake(.activeChildren(2)), context(), .init(
            event: .keptAwake, level: .warning,
            message: "0000:01:00.0 (gpu0): armed, but the kernel keeps it awake 2s later: 2 devices below it are active (power/runtime_active_kids); it suspends once they do. Checked again every guest_d3_interval",
            fields: gpuFields()))
    }

    func testSuspendedAtLast() {
        assertEntry(.suspendedAtLast(afterArmedFor: .seconds(12)), context(), .init(
            event: .suspendedAtLast, level: .notice,
            message: "0000:01:00.0 (gpu0): suspended at last, 12s after it was armed: the kernel no longer keeps it awake",
            fields: gpuFields()))
    }

    /// Every DaemonEvent is reachable: the device events from a PolicyEvent (the cases
    /// above), the daemon's own from the manager.
    func testEveryDaemonEventIsProducedByTheReporterOrTheManager() {
        let samples: [PolicyEvent] = [
            .armed(.oneShot), .woke(count: 1, inLowPowerFor: .seconds(1)), .rearmed(.oneShot, quietFor: .seconds(30)),
            .flappingStarted(wakes: 11, window: .seconds(600), backoff: .seconds(60)),
            .flappingEnded(suppressedWakes: 1, lasted: .seconds(600)), .alreadyEngaged(.oneShot),
            .armFailed(.init(.alreadyEngaged, errno: .invalidArgument), .gaveUpAfterExit), .openFailed(.init(errno: .resourceBusy)), .exitFailed(.init(errno: .invalidArgument), .closedInstead),
            .d3coldWriteFailed(.init(errno: .permissionDenied), .notArmed), .unsupported(.inappropriateIOCTLForDevice),
            .deviceGone(nil), .deviceBack, .released, .heldAwake(for: nil),
            .adopted(qemu, .fdinfo), .adopted(qemu, .handoff), .adoptionRefused(qemu, .executableNotAllowed), .vmmReleased(qemu, .vmmExited),
            .armedInGuestD3, .keptAwake(.runtimePMForbidden), .suspendedAtLast(afterArmedFor: .seconds(12)),
            .stuck(call: "arm", for: .seconds(10)), .unstuck(call: "arm", after: .seconds(14)),
        ]
        var produced = Set(samples.map { EventReporter.entry(for: $0, context()).event })
        // The manager logs these itself (start, stop, reload, configuration, control socket).
        produced.formUnion([.started, .stopping, .reloaded, .configRejected, .controlRefused])
        XCTAssertEqual(produced, Set(DaemonEvent.allCases))
    }

    // MARK: vmm devices

    private let qemu = VMMHolder(pid: 4242, executable: "/usr/bin/qemu-system-x86_64")

    private func vmmContext() -> DeviceController.Context {
        DeviceController.Context(address: gpu, name: "gpu0", mode: .oneShot,
                                 source: .vmm, error: nil, statistics: DeviceStatistics(), now: MonotonicInstant(nanoseconds: 0))
    }

    func testVMMEventsNameTheHolderInWordsAndFields() {
        let adopted = EventReporter.entry(for: .adopted(qemu, .unambiguous), vmmContext())
        XCTAssertEqual(adopted.event, .adopted)
        XCTAssertEqual(adopted.level, .notice)
        XCTAssertEqual(adopted.message, "0000:01:00.0 (gpu0): adopted from qemu-system-x86_64 (pid 4242) (its only VFIO device file, of a group with this one device); armed whenever its guest puts the device into D3hot")
        XCTAssertEqual(adopted.fields, ["VFIO_DEVICE": "0000:01:00.0", "VFIO_NAME": "gpu0", "VFIO_SOURCE": "vmm",
                                        "VFIO_VMM_PID": "4242", "VFIO_VMM_EXE": "/usr/bin/qemu-system-x86_64"])

        let refused = EventReporter.entry(for: .adoptionRefused(VMMHolder(pid: 7, executable: "/opt/x/runner"), .executableNotAllowed), vmmContext())
        XCTAssertEqual(refused.event, .adoptionRefused)
        XCTAssertEqual(refused.level, .warning)
        XCTAssertEqual(refused.message, "0000:01:00.0 (gpu0): held by /opt/x/runner (pid 7), which is not in vmm_executables; left alone. If it is a VMM, add it to vmm_executables in vfio-powerd.conf")

        let ambiguous = EventReporter.entry(for: .adoptionRefused(qemu, .ambiguous(deviceFiles: 2)), vmmContext())
        XCTAssertTrue(ambiguous.message.contains("will not guess") && ambiguous.message.contains("Linux 6.18"), ambiguous.message)

        let released = EventReporter.entry(for: .vmmReleased(qemu, .vmmExited), vmmContext())
        XCTAssertEqual(released.event, .vmmReleased)
        XCTAssertEqual(released.message, "0000:01:00.0 (gpu0): released: qemu-system-x86_64 (pid 4242) exited; the device is free for the next VM")

        let armed = EventReporter.entry(for: .armedInGuestD3, vmmContext())
        XCTAssertEqual(armed.event, .armedInGuestD3)
        XCTAssertEqual(armed.message, "0000:01:00.0 (gpu0): armed one-shot low power: the guest put the device into D3hot")
        XCTAssertEqual(armed.fields["VFIO_MODE"], "oneshot")
    }
}
