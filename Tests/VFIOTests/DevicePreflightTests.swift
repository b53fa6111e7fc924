import Foundation
import SystemPackage
@testable import VFIO
import VFIOWords
import VFIOSimulator
import XCTest

/// The pre-open checks against a fake sysfs and a fake /dev: each failure is one message that
/// names the device and says what to do. (The same checks run on the real kernel in KernelTests.)
final class DevicePreflightTests: XCTestCase {
    var tree: FakeSysfsTree!
    var dev: URL!
    let nic = PCIAddress("0000:00:02.0")!

    override func setUpWithError() throws {
        tree = try FakeSysfsTree()
        dev = tree.root.appendingPathComponent("dev")
        try FileManager.default.createDirectory(at: dev.appendingPathComponent("vfio"), withIntermediateDirectories: true)
        for node in ["vfio/vfio", "vfio/1"] {
            XCTAssertTrue(FileManager.default.createFile(atPath: dev.appendingPathComponent(node).path, contents: nil))
        }
    }

    override func tearDown() { tree.remove() }

    private var preflight: DevicePreflight {
        DevicePreflight(sysfsRoot: FilePath(tree.path), devRoot: FilePath(dev.path))
    }

    private func failure(_ address: PCIAddress) -> VFIOError? {
        do {
            _ = try preflight.check(address)
            return nil
        } catch {
            return error
        }
    }

    func testABoundDeviceWithItsOwnGroupPasses() throws {
        try tree.add(.init(nic, iommuGroup: "1"))
        let verdict = try preflight.check(nic)
        XCTAssertEqual(verdict.groupName, "1")
        XCTAssertEqual(verdict.driver, "vfio-pci")
        XCTAssertEqual(verdict.groupMembers, [nic])
    }

    func testAbsentDevice() {
        XCTAssertEqual(failure(nic)?.code, .deviceNotFound)
        XCTAssertEqual(failure(nic)?.description,
                       "0000:00:02.0: cannot open the device: there is no such PCI device in \(tree.path)/bus/pci/devices. Check the address with `lspci -D`")
    }

    func testBoundToAHostDriver() throws {
        try tree.add(.init(nic, driver: "e1000e", iommuGroup: "1"))
        XCTAssertEqual(failure(nic)?.code, .notBoundToVFIO)
        XCTAssertEqual(failure(nic)?.description,
                       "0000:00:02.0: cannot open the device: it is bound to e1000e, not vfio-pci. Bind it to vfio-pci: echo 0000:00:02.0 > /sys/bus/pci/drivers/e1000e/unbind; echo vfio-pci > /sys/bus/pci/devices/0000:00:02.0/driver_override; echo 0000:00:02.0 > /sys/bus/pci/drivers_probe (or `driverctl set-override 0000:00:02.0 vfio-pci`)")
    }

    func testVariantDriversCount() throws {
        XCTAssertTrue(DevicePreflight.isVFIOPCIDriver("vfio-pci"))
        XCTAssertTrue(DevicePreflight.isVFIOPCIDriver("mlx5_vfio_pci"))
        XCTAssertTrue(DevicePreflight.isVFIOPCIDriver("xe-vfio-pci"))
        XCTAssertFalse(DevicePreflight.isVFIOPCIDriver("vfio-platform"))
        XCTAssertFalse(DevicePreflight.isVFIOPCIDriver("e1000e"))
    }

    func testNoIOMMUGroup() throws {
        try tree.add(.init(nic, iommuGroup: nil))
        XCTAssertEqual(failure(nic)?.code, .noIOMMUGroup)
    }

    func testGroupSharedWithAHostDriverIsNotViable() throws {
        let audio = PCIAddress("0000:00:02.1")!
        try tree.add(.init(nic, iommuGroup: "1"))
        try tree.add(.init(audio, classCode: 0x040300, driver: "snd_hda_intel", iommuGroup: "1"))
        XCTAssertEqual(failure(nic)?.code, .groupNotViable)
        XCTAssertEqual(failure(nic)?.description,
                       "0000:00:02.0: cannot open the device: its IOMMU group 1 also holds 0000:00:02.1, which is bound to snd_hda_intel. Bind every device of group 1 to vfio-pci, or unbind 0000:00:02.1 from snd_hda_intel")
    }

    func testBridgesAndUnboundMembersAreFine() throws {
        try tree.add(.init(nic, iommuGroup: "1"))
        try tree.add(.init(PCIAddress("0000:00:01.0")!, classCode: 0x060400, driver: "pcieport", iommuGroup: "1"))
        try tree.add(.init(PCIAddress("0000:00:02.1")!, driver: nil, iommuGroup: "1"))
        XCTAssertEqual(try preflight.check(nic).groupMembers.count, 3)
    }

    func testNoVFIOModule() throws {
        try tree.add(.init(nic, iommuGroup: "1"))
        try FileManager.default.removeItem(at: dev.appendingPathComponent("vfio/vfio"))
        XCTAssertEqual(failure(nic)?.code, .vfioUnavailable)
        XCTAssertEqual(failure(nic)?.advice, "Load VFIO with `modprobe vfio-pci`")
    }

    func testKernelWithOnlyTheCdevSaysSo() throws {
        try tree.add(.init(nic, iommuGroup: "1"))
        try FileManager.default.removeItem(at: dev.appendingPathComponent("vfio/vfio"))
        try FileManager.default.createDirectory(
            at: tree.root.appendingPathComponent("devices/pci0000:00/\(nic)/vfio-dev/vfio0"), withIntermediateDirectories: true)
        XCTAssertEqual(failure(nic)?.code, .cdevOnly)
        XCTAssertTrue(failure(nic)!.description.contains("only the VFIO device cdev"))
    }

    func testNoiommuGroupNode() throws {
        try tree.add(.init(nic, iommuGroup: "4"))
        XCTAssertTrue(FileManager.default.createFile(atPath: dev.appendingPathComponent("vfio/noiommu-4").path, contents: nil))
        XCTAssertEqual(try preflight.check(nic).groupName, "noiommu-4")
    }

    func testHoldersComeFromProc() throws {
        let proc = tree.root.appendingPathComponent("proc")
        for (pid, command, target) in [(812, "qemu-system-x86", "/dev/vfio/1"), (900, "bash", "/dev/pts/0")] {
            let fds = proc.appendingPathComponent("\(pid)/fd")
            try FileManager.default.createDirectory(at: fds, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: fds.appendingPathComponent("3").path, withDestinationPath: target)
            try Data((command + "\n").utf8).write(to: proc.appendingPathComponent("\(pid)/comm"))
        }
        XCTAssertEqual(ProcessHolding.holders(of: "/dev/vfio/1", procRoot: FilePath(proc.path)),
                       [ProcessHolding(pid: 812, command: "qemu-system-x86")])
        XCTAssertEqual("\(ProcessHolding(pid: 812, command: "qemu-system-x86"))", "qemu-system-x86 (pid 812)")
    }
}

/// Every fd of the VFIO layer has one owner that closes it once. A second close of a number
/// that is already closed could close another device's file that reused it.
final class DescriptorOwnershipTests: XCTestCase {
    func testAGroupThatFailsAfterOpeningClosesEachDescriptorOnce() throws {
        // Regular files stand in for the container and the group: both open, and the first
        // ioctl (VFIO_GET_API_VERSION) fails with ENOTTY, after both fds are the group's.
        let tree = try FakeSysfsTree()
        defer { tree.remove() }
        let dev = tree.root.appendingPathComponent("dev")
        try FileManager.default.createDirectory(at: dev.appendingPathComponent("vfio"), withIntermediateDirectories: true)
        for node in ["vfio/vfio", "vfio/1"] {
            XCTAssertTrue(FileManager.default.createFile(atPath: dev.appendingPathComponent(node).path, contents: nil))
        }
        let nic = PCIAddress("0000:00:02.0")!
        try tree.add(.init(nic, iommuGroup: "1"))
        let session = VFIOSession(sysfsRoot: FilePath(tree.path), devRoot: FilePath(dev.path))

        let before = Syscalls.closesOfClosedDescriptors.load(ordering: .relaxed)
        XCTAssertThrowsError(try session.openDevice(nic)) { error in
            XCTAssertTrue("\(error)".contains("unknown API version"), "\(error)")
        }
        XCTAssertEqual(Syscalls.closesOfClosedDescriptors.load(ordering: .relaxed), before,
                       "a descriptor was closed a second time")
    }
}
