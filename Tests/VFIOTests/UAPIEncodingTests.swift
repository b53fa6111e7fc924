import CVFIO
import VFIO
import XCTest

/// The numbers come from <linux/vfio.h> through the C shim; these tests pin them to the
/// values the kernel documents (../shared/docs/vfio-low-power.md, "Encoding"), so a header
/// that disagreed, or a shim that lost a number, fails here before it reaches a kernel.
final class UAPIEncodingTests: XCTestCase {
    func testDeviceFeatureRequestIsIOWithoutSize() {
        // _IO(VFIO_TYPE ';', VFIO_BASE 100 + 17): no size or direction bits.
        XCTAssertEqual(CVFIO_DEVICE_FEATURE, 0x3b75)
    }

    func testFeatureFlagsAndIndexes() {
        XCTAssertEqual(CVFIO_DEVICE_FEATURE_MASK, 0xffff)
        XCTAssertEqual(CVFIO_DEVICE_FEATURE_GET, 1 << 16)
        XCTAssertEqual(CVFIO_DEVICE_FEATURE_SET, 1 << 17)
        XCTAssertEqual(CVFIO_DEVICE_FEATURE_PROBE, 1 << 18)
        XCTAssertEqual(LowPowerFeature.reentrantEntry.index, 3)
        XCTAssertEqual(LowPowerFeature.oneShotEntry.index, 4)
        XCTAssertEqual(LowPowerFeature.exit.index, 5)
    }

    func testStructSizesAndMinimumArgsz() {
        XCTAssertEqual(CVFIO_DEVICE_FEATURE_HEADER_SIZE, 8, "struct vfio_device_feature: argsz, flags")
        XCTAssertEqual(CVFIO_LOW_POWER_WAKEUP_PAYLOAD_SIZE, 8, "wakeup_eventfd, reserved")
        XCTAssertEqual(LowPowerFeature.reentrantEntry.minimumArgumentSize, 8)
        XCTAssertEqual(LowPowerFeature.oneShotEntry.minimumArgumentSize, 16)
        XCTAssertEqual(LowPowerFeature.exit.minimumArgumentSize, 8)
    }

    func testWakeupPayloadLayout() {
        var payload = cvfio_low_power_wakeup_payload(42)
        let bytes = withUnsafeBytes(of: &payload) { Array($0) }
        XCTAssertEqual(bytes, [42, 0, 0, 0, 0, 0, 0, 0], "little-endian __s32 wakeup_eventfd, then __u32 reserved = 0")
    }

    func testGroupPathConstants() {
        XCTAssertEqual(CVFIO_TYPE1v2_IOMMU, 3)
        XCTAssertEqual(CVFIO_API_VERSION_VALUE, 0)
        XCTAssertEqual(CVFIO_PCI_CONFIG_REGION_INDEX, 7)
    }
}

extension UAPIEncodingTests {
    func testRequestIRQIndex() {
        // enum { VFIO_PCI_INTX_IRQ_INDEX, MSI, MSIX, ERR, REQ, ... }
        XCTAssertEqual(CVFIO_PCI_REQ_IRQ_INDEX, 4)
    }
}
