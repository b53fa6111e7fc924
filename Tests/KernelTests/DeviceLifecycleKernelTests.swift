import Glibc
import Foundation
import SystemPackage
import VFIO
import VFIOWords
import XCTest

/// Opening, refusing to open, and losing devices on a real kernel: the pre-open checks and
/// their messages, a group held by another process, two devices at once, and a device
/// unbound while armed.
final class DeviceLifecycleKernelTests: XCTestCase {
    override func setUpWithError() throws {
        try Lab.requireGuest()
        XCTAssertGreaterThanOrEqual(Lab.devices.count, 2, "the lab binds at least an e1000e and an nvme")
    }

    func testDeviceNotBoundToVFIOIsRefusedWithAdvice() throws {
        let spare = try XCTUnwrap(Lab.spare, "the lab exports LAB_SPARE_DEVICE")
        XCTAssertThrowsError(try VFIOSession().openDevice(spare)) { error in
            let error = error as! VFIOError
            XCTAssertEqual(error.code, .notBoundToVFIO)
            XCTAssertEqual(error.description,
                           "\(spare): cannot open the device: it is bound to no driver, not vfio-pci. Bind it to vfio-pci: echo vfio-pci > /sys/bus/pci/devices/\(spare)/driver_override; echo \(spare) > /sys/bus/pci/drivers_probe (or `driverctl set-override \(spare) vfio-pci`)")
        }
    }

    func testAbsentDeviceIsRefused() {
        let absent = PCIAddress("0000:7f:1f.7")!
        XCTAssertThrowsError(try VFIOSession().openDevice(absent)) { error in
            XCTAssertEqual((error as? VFIOError)?.code, .deviceNotFound)
        }
    }

    func testGroupHeldByAnotherProcessNamesTheHolder() throws {
        let address = Lab.second
        let group = try XCTUnwrap(SysfsPCIDevice(address: address).iommuGroup())
        let holder = try Child(shell: "exec 3<>/dev/vfio/\(group); exec sleep 30")
        defer { holder.kill() }
        // Wait until the shell has become `sleep` with the group open.
        XCTAssertNotNil(waitFor("holder") { ProcessHolding.holders(of: FilePath("/dev/vfio/\(group)")).contains { $0.command == "sleep" } })

        XCTAssertThrowsError(try VFIOSession().openDevice(address)) { error in
            let error = error as! VFIOError
            XCTAssertEqual(error.code, .groupBusy)
            XCTAssertEqual(error.errno, .resourceBusy)
            XCTAssertEqual(error.description,
                           "\(address): cannot open IOMMU group \(group): /dev/vfio/\(group) is held by sleep (pid \(holder.pid)) (EBUSY). A VFIO group can be open in one process at a time: stop that process, or leave this device to it")
        }
    }

    // Two devices, each in its own group, armed at once: waking one leaves the other asleep.
    func testTwoDevicesArmIndependently() throws {
        let session = VFIOSession()
        let first = try session.openDevice(Lab.first)
        let second = try session.openDevice(Lab.second)
        XCTAssertTrue(second.lowPowerSupport.isComplete, "nvme: \(second.lowPowerSupport)")
        let (firstWakeup, secondWakeup) = (try EventFD(), try EventFD())
        try first.arm(.oneShot(wakeup: firstWakeup))
        try second.arm(.oneShot(wakeup: secondWakeup))
        let firstSysfs = SysfsPCIDevice(address: Lab.first)
        let secondSysfs = SysfsPCIDevice(address: Lab.second)
        XCTAssertNotNil(waitFor("both suspended") { firstSysfs.status == .suspended && secondSysfs.status == .suspended })
        XCTAssertEqual(secondSysfs.state, .d3hot, "nvme has a PM capability")

        try first.wakeByAccess()
        XCTAssertTrue(try firstWakeup.waitUntilSignalled(timeout: .seconds(2)))
        XCTAssertEqual(try firstWakeup.read(), 1)
        XCTAssertNil(try secondWakeup.read(), "waking one device must not wake the other")
        XCTAssertEqual(secondSysfs.status, .suspended)
        try second.exitLowPower()
        XCTAssertEqual(try secondWakeup.read(), 1, "EXIT on the suspended second device fires its own eventfd")
    }

    // Edge case 13: unbinding an armed device resumes it (the eventfd fires), and the kernel
    // waits for the holder to close before it finishes; then it can be bound again.
    func testUnbindWhileArmedFiresAndWaitsForClose() throws {
        let address = Lab.second
        let sysfs = SysfsPCIDevice(address: address)
        let session = VFIOSession()
        let device = try session.openDevice(address)
        let wakeup = try EventFD()
        try device.arm(.oneShot(wakeup: wakeup))
        XCTAssertNotNil(waitFor("suspended") { sysfs.status == .suspended })

        let request = try XCTUnwrap(device.removalRequest, "vfio-pci offers the device request channel")
        XCTAssertNil(try request.read())
        let unbind = try Child(shell: "echo \(address) > /sys/bus/pci/drivers/vfio-pci/unbind")
        XCTAssertTrue(try wakeup.waitUntilSignalled(timeout: .seconds(5)), "the PCI core resumes the device before removing it")
        XCTAssertEqual(try wakeup.read(), 1)
        XCTAssertTrue(try request.waitUntilSignalled(timeout: .seconds(5)), "vfio-pci asks for the device back through the request eventfd")
        XCTAssertGreaterThanOrEqual(try request.read() ?? 0, 1)
        sleep(.milliseconds(500))
        XCTAssertTrue(unbind.isRunning, "the unbind must block while the device is held open")

        device.close()
        guard waitFor("unbind finished", timeout: .seconds(5), { !unbind.isRunning }) != nil else {
            // The writer is stuck in the kernel; waiting for it would hang the whole run.
            return XCTFail("closing the device (and with it its group) must let the unbind finish")
        }
        XCTAssertEqual(unbind.exitStatus, 0)
        XCTAssertNil(sysfs.driver(), "the device is unbound")

        // Bind it again (driver_override still says vfio-pci) for the tests after this one.
        try "\(address)".write(toFile: "/sys/bus/pci/drivers_probe", atomically: false, encoding: .utf8)
        XCTAssertEqual(sysfs.driver(), "vfio-pci")
        let again = try VFIOSession().openDevice(address)
        XCTAssertTrue(again.lowPowerSupport.isComplete)
    }
}
