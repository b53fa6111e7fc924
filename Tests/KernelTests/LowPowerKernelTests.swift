import Glibc
import CVFIO
import Foundation
import SystemPackage
import VFIO
import XCTest

/// The low-power features on a real kernel with a real vfio-pci device: every case of
/// ../shared/docs/vfio-low-power.md "Edge cases a test suite should cover" that a QEMU guest
/// can reproduce, asserted by value. A kernel that behaves otherwise fails here.
final class LowPowerKernelTests: XCTestCase {
    var session: VFIOSession!
    var device: VFIODevice!
    var sysfs: SysfsPCIDevice!

    override func setUpWithError() throws {
        try Lab.requireGuest()
        session = VFIOSession()
        device = try session.openDevice(Lab.first)
        sysfs = SysfsPCIDevice(address: Lab.first)
    }

    override func tearDown() {
        device?.close()
        device = nil
        session = nil
    }

    private func feature(_ flags: UInt32, argsz: UInt32 = CVFIO_DEVICE_FEATURE_HEADER_SIZE, payload: [UInt8] = []) -> Errno? {
        if case .failure(let errno) = device.rawDeviceFeature(argsz: argsz, flags: flags, payload: payload) { return errno }
        return nil
    }

    private func wakeupPayload(_ fd: Int32) -> [UInt8] {
        var payload = cvfio_low_power_wakeup_payload(fd)
        return withUnsafeBytes(of: &payload) { Array($0) }
    }

    private func waitSuspended(_ message: String) throws -> Duration {
        let waited = waitFor(message) { sysfs.status == .suspended }
        return try XCTUnwrap(waited, "\(message): runtime_status is \(sysfs.status.map { "\($0)" } ?? "unreadable")")
    }

    // Edge case 1, 15: the probe answers for all three features, and opening woke the device.
    func testProbeFindsAllThreeFeaturesAndOpeningWakes() throws {
        XCTAssertTrue(device.lowPowerSupport.isComplete, "\(device.lowPowerSupport)")
        XCTAssertEqual(sysfs.status, .active)
        XCTAssertEqual(sysfs.state, .d0)
        XCTAssertEqual(device.driver, "vfio-pci")
    }

    // Edge case 2: argsz below the header, and below the one-shot payload.
    func testShortArgszIsEINVAL() {
        let probeEntry = CVFIO_DEVICE_FEATURE_PROBE | CVFIO_DEVICE_FEATURE_SET | CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
        for argsz in UInt32(0)..<8 {
            XCTAssertEqual(feature(probeEntry, argsz: argsz), .EINVAL, "argsz \(argsz)")
        }
        let eventfd = try! EventFD()
        let oneShot = CVFIO_DEVICE_FEATURE_SET | CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP
        for argsz in UInt32(8)..<16 {
            XCTAssertEqual(feature(oneShot, argsz: argsz, payload: wakeupPayload(eventfd.descriptor.rawValue)), .EINVAL, "argsz \(argsz)")
        }
        XCTAssertEqual(device.engagement, .none)
    }

    // Edge case 3: flag validation, SET-only features, unknown indexes.
    func testFlagValidation() {
        let entry = CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
        let (get, set, probe) = (CVFIO_DEVICE_FEATURE_GET, CVFIO_DEVICE_FEATURE_SET, CVFIO_DEVICE_FEATURE_PROBE)
        XCTAssertEqual(feature((1 << 19) | set | entry), .EINVAL, "unknown flag bit")
        XCTAssertEqual(feature(get | entry), .EINVAL, "GET on a SET-only feature")
        XCTAssertEqual(feature(get | set | entry), .EINVAL, "GET|SET without PROBE")
        XCTAssertEqual(feature(probe | get | entry), .EINVAL, "PROBE|GET on a SET-only feature")
        for index in [CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, CVFIO_DEVICE_FEATURE_LOW_POWER_EXIT] {
            XCTAssertNil(feature(probe | index), "bare PROBE of \(index)")
            XCTAssertNil(feature(probe | set | index), "PROBE|SET of \(index)")
        }
        XCTAssertEqual(feature(probe | set | 6), .ENOTTY, "index 6")
        XCTAssertEqual(feature(probe | set | CVFIO_DEVICE_FEATURE_MASK), .ENOTTY, "index 0x7fff")
    }

    // Edge case 4: the wakeup fd must be an open eventfd.
    func testBadWakeupFileDescriptors() throws {
        let oneShot = CVFIO_DEVICE_FEATURE_SET | CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP
        let argsz = LowPowerFeature.oneShotEntry.minimumArgumentSize
        XCTAssertEqual(feature(oneShot, argsz: argsz, payload: wakeupPayload(-1)), .EINVAL, "fd -1")

        let closed = try FileDescriptor.open("/dev/null", .readOnly)
        try closed.close()
        XCTAssertEqual(feature(oneShot, argsz: argsz, payload: wakeupPayload(closed.rawValue)), .EBADF, "closed fd")

        let pipe = try FileDescriptor.pipe()
        defer { try? pipe.readEnd.close(); try? pipe.writeEnd.close() }
        XCTAssertEqual(feature(oneShot, argsz: argsz, payload: wakeupPayload(pipe.readEnd.rawValue)), .EINVAL, "pipe fd")
        XCTAssertEqual(device.engagement, .none)
        XCTAssertEqual(sysfs.status, .active, "nothing was engaged, so the device must stay awake")
    }

    // Edge cases 7, 8, 10: one-shot entry suspends; an access wakes it once, for good.
    func testOneShotSuspendsAndAnAccessWakesItOnce() throws {
        let wakeup = try EventFD()
        let suspendedBefore = try sysfs.runtimeSuspendedTime()
        try device.arm(.oneShot(wakeup: wakeup))
        XCTAssertEqual(device.engagement, .oneShot)
        _ = try waitSuspended("after a one-shot entry")
        XCTAssertEqual(sysfs.state, .d3hot, "e1000e has a PM capability: the kernel puts it in D3hot")
        XCTAssertNil(try wakeup.read(), "suspending must not signal")
        sleep(.milliseconds(100))
        XCTAssertGreaterThan(try sysfs.runtimeSuspendedTime(), suspendedBefore, "runtime_suspended_time grows while suspended")

        try device.wakeByAccess()
        XCTAssertTrue(try wakeup.waitUntilSignalled(timeout: .seconds(2)), "an access must fire the eventfd")
        XCTAssertEqual(try wakeup.read(), 1, "the kernel signals exactly 1 per wake")
        device.noteWoke()

        sleep(.milliseconds(500))
        XCTAssertEqual(sysfs.status, .active, "a one-shot entry ends at the wake: the device stays awake")
        XCTAssertNil(try wakeup.read(), "no second signal without a new entry")
        try device.exitLowPower()
        XCTAssertNil(try wakeup.read(), "EXIT after a wake gives no second signal")
    }

    // "read/write of any region through the fd (config included) also resumes".
    func testConfigSpaceReadWakesAOneShotDevice() throws {
        let wakeup = try EventFD()
        try device.arm(.oneShot(wakeup: wakeup))
        _ = try waitSuspended("after a one-shot entry")
        let vendor = try device.readConfigSpace(offset: 0, count: 2)
        XCTAssertEqual(vendor, [0x86, 0x80], "e1000e's vendor ID, read through the config region")
        XCTAssertTrue(try wakeup.waitUntilSignalled(timeout: .seconds(2)))
        XCTAssertEqual(try wakeup.read(), 1)
    }

    // Edge case 9: re-entrant entry lets the device suspend again after an access.
    func testReentrantResuspendsByItselfAfterAnAccess() throws {
        try device.arm(.reentrant)
        _ = try waitSuspended("after a re-entrant entry")
        try device.wakeByAccess()
        let again = waitFor("re-suspend") { sysfs.status == .suspended }
        XCTAssertNotNil(again, "a re-entrant device must suspend again by itself; runtime_status is \(String(describing: sysfs.status))")
        try device.exitLowPower()
        XCTAssertEqual(sysfs.status, .active, "EXIT resumes the device and keeps it awake")
    }

    // Edge case 5: a second entry while one is engaged.
    func testSecondEntryWhileEngagedIsAlreadyEngaged() throws {
        try device.arm(.reentrant)
        XCTAssertThrowsError(try device.arm(.reentrant)) { error in
            XCTAssertEqual((error as? VFIOError)?.code, .alreadyEngaged)
            XCTAssertEqual((error as? VFIOError)?.errno, .EINVAL)
        }
        let wakeup = try EventFD()
        XCTAssertThrowsError(try device.arm(.oneShot(wakeup: wakeup))) { error in
            XCTAssertEqual((error as? VFIOError)?.code, .alreadyEngaged, "one-shot while re-entrant is engaged")
        }
        try device.exitLowPower()
        try device.arm(.reentrant)  // after EXIT an entry works again
        try device.exitLowPower()
    }

    // Edge case 6: EXIT is idempotent.
    func testExitWhenNothingIsEngagedSucceedsTwice() throws {
        try device.exitLowPower()
        try device.exitLowPower()
        XCTAssertEqual(device.engagement, .none)
    }

    // "A wake you caused yourself (EXIT) still fires the eventfd."
    func testExitOnASuspendedOneShotDeviceFiresTheEventfd() throws {
        let wakeup = try EventFD()
        try device.arm(.oneShot(wakeup: wakeup))
        _ = try waitSuspended("after a one-shot entry")
        try device.exitLowPower()
        XCTAssertTrue(try wakeup.waitUntilSignalled(timeout: .seconds(2)))
        XCTAssertEqual(try wakeup.read(), 1, "EXIT resumed the suspended device, which signals once")
        try device.exitLowPower()
        XCTAssertNil(try wakeup.read(), "a second EXIT signals nothing")
    }

    // Edge cases 10, 11: close never signals; the device goes back to idle D3; reopen is clean.
    func testCloseWhileEngagedNeverSignalsAndReopenStartsClean() throws {
        let wakeup = try EventFD()
        try device.arm(.oneShot(wakeup: wakeup))
        _ = try waitSuspended("after a one-shot entry")
        device.close()
        device = nil
        XCTAssertFalse(try wakeup.waitUntilSignalled(timeout: .milliseconds(500)), "close must not signal the eventfd")
        XCTAssertNotNil(waitFor("idle D3 after close") { sysfs.status == .suspended }, "a closed vfio-pci device idles suspended")
        XCTAssertEqual(sysfs.state, .d3hot)

        device = try session.openDevice(Lab.first)
        XCTAssertEqual(sysfs.status, .active, "opening wakes the device")
        try device.arm(.reentrant)  // would be EINVAL if the old entry had survived the close
        try device.exitLowPower()
    }

    // Edge case 14: power/control=on lets the entry succeed but the device never suspends.
    func testPowerControlOnBlocksSuspendAndNothingFires() throws {
        let control = sysfs.directory.appending("power/control")
        try "on".write(toFile: control.string, atomically: false, encoding: .utf8)
        defer { try? "auto".write(toFile: control.string, atomically: false, encoding: .utf8) }
        let wakeup = try EventFD()
        try device.arm(.oneShot(wakeup: wakeup))
        XCTAssertFalse(try wakeup.waitUntilSignalled(timeout: .milliseconds(500)))
        XCTAssertEqual(sysfs.status, .active, "power/control=on forbids runtime suspend")
        try device.exitLowPower()
    }

    // Edge case 12: a guest-style D3hot written into PMCSR shows in power_state; arming works;
    // the kernel returns the device to D0 and does not restore the D3hot after a wake.
    func testGuestStyleD3hotThroughPMCSR() throws {
        let pmcsr = try powerManagementControlOffset()
        let original = try device.readConfigSpace(offset: pmcsr, count: 2)
        try device.writeConfigSpace(offset: pmcsr, bytes: [(original[0] & ~0x03) | 0x03, original[1]])
        XCTAssertNotNil(waitFor("D3hot") { sysfs.state == .d3hot }, "power_state is \(String(describing: sysfs.state))")
        XCTAssertEqual(sysfs.status, .active, "the PCI state changed, the runtime PM state did not")

        let wakeup = try EventFD()
        try device.arm(.oneShot(wakeup: wakeup))
        _ = try waitSuspended("arming a device in guest D3hot")
        try device.wakeByAccess()
        XCTAssertTrue(try wakeup.waitUntilSignalled(timeout: .seconds(2)))
        let after = try device.readConfigSpace(offset: pmcsr, count: 2)
        XCTAssertEqual(after[0] & 0x03, 0, "after a wake PMCSR reads D0")
    }

    /// The PMCSR offset, from the PCI capability list (capability ID 1, control at +4).
    private func powerManagementControlOffset() throws -> Int {
        var pointer = Int(try device.readConfigSpace(offset: 0x34, count: 1)[0]) & ~0x03
        var hops = 0
        while pointer != 0 && hops < 48 {
            let header = try device.readConfigSpace(offset: pointer, count: 2)
            if header[0] == 0x01 { return pointer + 4 }
            pointer = Int(header[1]) & ~0x03
            hops += 1
        }
        throw XCTSkip("device has no PCI power management capability")
    }

    // From Linux 6.18 fdinfo names the device (later work relies on it); on 6.1 it does not.
    func testFdinfoNamesTheDeviceFrom6_18() throws {
        let fd = try XCTUnwrap(device.fileDescriptor)
        let fdinfo = try String(contentsOfFile: "/proc/self/fdinfo/\(fd.rawValue)", encoding: .utf8)
        let line = fdinfo.split(separator: "\n").first { $0.hasPrefix("vfio-device-syspath:") }
        let (major, minor) = Lab.kernelVersion
        if (major, minor) >= (6, 18) {
            let path = try XCTUnwrap(line, "kernel \(Lab.kernelRelease) should name the device in fdinfo:\n\(fdinfo)")
            XCTAssertTrue(path.hasSuffix("/\(Lab.first)"), String(path))
            XCTAssertTrue(path.contains("/sys/devices/"), String(path))
        } else {
            XCTAssertNil(line, "kernel \(Lab.kernelRelease) predates vfio-device-syspath")
        }
    }
}
