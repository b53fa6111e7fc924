import SystemPackage
import VFIO
import VFIOWords
import XCTest

final class EventFDTests: XCTestCase {
    func testNothingYetIsNil() throws {
        XCTAssertNil(try EventFD().read())
    }

    func testSignalsCoalesceIntoOneCount() throws {
        let eventfd = try EventFD()
        try eventfd.signal(3)
        try eventfd.signal()
        XCTAssertEqual(try eventfd.read(), 4)
        XCTAssertNil(try eventfd.read(), "reading resets the counter")
    }

    func testWaitTimesOutThenSeesASignal() throws {
        let eventfd = try EventFD()
        XCTAssertFalse(try eventfd.waitUntilSignalled(timeout: .milliseconds(10)))
        try eventfd.signal()
        XCTAssertTrue(try eventfd.waitUntilSignalled(timeout: .milliseconds(10)))
    }

    func testErrorsReadAsOperatorsExpect() {
        let error = VFIOError(.alreadyEngaged, device: PCIAddress("01:00.0"), operation: .arm(.reentrantEntry),
                              errno: .invalidArgument)
        XCTAssertEqual(error.description, "0000:01:00.0: cannot arm re-entrant low power: low power is already engaged on this device (a re-entrant entry, or a one-shot entry that has not woken yet) (EINVAL). Exit low power first")
        XCTAssertEqual(Errno.inappropriateIOCTLForDevice.symbolicName, "ENOTTY")
        XCTAssertEqual(Errno(rawValue: 19).symbolicName, "ENODEV")
    }

    func testPCIAddressForms() {
        XCTAssertEqual(PCIAddress("01:00.0")?.description, "0000:01:00.0")
        XCTAssertEqual(PCIAddress("0000:AF:1f.7")?.description, "0000:af:1f.7")
        XCTAssertNil(PCIAddress("0000:01:20.0"), "device numbers stop at 0x1f")
        XCTAssertNil(PCIAddress("0000:01:00.8"), "functions stop at 7")
        XCTAssertNil(PCIAddress("1:00.0"))
        XCTAssertNil(PCIAddress("0000:01:00.0 "))
    }
}
