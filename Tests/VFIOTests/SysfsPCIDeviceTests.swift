import SystemPackage
import VFIO
import VFIOSimulator
import XCTest

final class SysfsPCIDeviceTests: XCTestCase {
    var tree: FakeSysfsTree!
    let nic = PCIAddress("0000:00:02.0")!
    let gpu = PCIAddress("0000:01:00.0")!

    override func setUpWithError() throws {
        tree = try FakeSysfsTree()
        try tree.add(.init(nic, vendor: 0x8086, device: 0x10d3, classCode: 0x020000, iommuGroup: "1"))
        try tree.add(.init(gpu, vendor: 0x10de, device: 0x2204, classCode: 0x030000, driver: "nouveau",
                           iommuGroup: "7", runtimeStatus: "active", powerState: "D0", powerControl: "on", d3coldAllowed: false))
    }

    override func tearDown() { tree.remove() }

    private func device(_ address: PCIAddress) -> SysfsPCIDevice {
        SysfsPCIDevice(address: address, sysfsRoot: FilePath(tree.path))
    }

    func testIdentity() throws {
        XCTAssertEqual(try device(gpu).vendorID(), 0x10de)
        XCTAssertEqual(try device(gpu).deviceID(), 0x2204)
        XCTAssertEqual(try device(gpu).classCode(), 0x030000)
        XCTAssertEqual(device(nic).driver(), "vfio-pci")
        XCTAssertEqual(device(gpu).driver(), "nouveau")
        XCTAssertEqual(device(nic).iommuGroup(), "1")
        XCTAssertEqual(try device(nic).iommuGroupMembers(), [nic])
        XCTAssertTrue(device(nic).exists)
        XCTAssertFalse(device(PCIAddress("0000:09:00.0")!).exists)
    }

    func testPowerView() throws {
        XCTAssertEqual(device(nic).powerView(),
                       PowerView(runtimeStatus: .suspended, powerState: .d3hot, runtimeSuspendedTime: .milliseconds(1200),
                                 runtimeActiveTime: .milliseconds(300), powerControl: .auto, d3coldAllowed: true))
        XCTAssertEqual(try device(gpu).runtimeStatus(), .active)
        XCTAssertEqual(try device(gpu).powerState(), .d0)
        XCTAssertEqual(try device(gpu).powerControl(), .on)
        XCTAssertEqual(try device(gpu).d3coldAllowed(), false)
    }

    func testValuesTheKernelMayAddAreKeptVerbatim() throws {
        try tree.set("power/runtime_status", "frozen", on: nic)
        try tree.set("power_state", "unknown", on: nic)
        XCTAssertEqual(try device(nic).runtimeStatus(), .unknown("frozen"))
        XCTAssertEqual(try device(nic).powerState(), .unknown("unknown"))
        XCTAssertEqual("\(try device(nic).runtimeStatus())", "frozen")
    }

    func testMissingAttributeNamesThePath() {
        XCTAssertThrowsError(try device(PCIAddress("0000:09:00.0")!).runtimeStatus()) { error in
            XCTAssertEqual("\(error)", "cannot read \(tree.path)/bus/pci/devices/0000:09:00.0/power/runtime_status: No such file or directory")
        }
    }

    func testSetD3coldAllowedWritesTheAttribute() throws {
        try device(nic).setD3coldAllowed(false)
        XCTAssertEqual(try device(nic).d3coldAllowed(), false)
        try device(nic).setD3coldAllowed(true)
        XCTAssertEqual(try device(nic).d3coldAllowed(), true)
    }

    func testEnumerationIsInAddressOrder() throws {
        try tree.add(.init(PCIAddress("0000:00:01.0")!))
        XCTAssertEqual(try SysfsPCIDevice.allAddresses(sysfsRoot: FilePath(tree.path)),
                       [PCIAddress("0000:00:01.0")!, nic, gpu])
    }
}
