@testable import PowerDaemon
import PowerPolicy
import XCTest

final class StatusTallyTests: XCTestCase {
    private func contribution(_ phase: DevicePhase, flapping: Bool = false, wakes: UInt64 = 0) -> StatusTally.Contribution {
        StatusTally.Contribution(phase: phase, flapping: flapping, wakes: wakes)
    }

    func testEachChangeMovesOneContribution() {
        var tally = StatusTally()
        XCTAssertEqual(tally.line, "no devices configured")
        let armed = contribution(.lowPower(.oneShot, since: .zero))
        tally.replace(nil, with: armed)
        tally.replace(nil, with: armed)
        tally.replace(nil, with: contribution(.gone))
        XCTAssertEqual(tally.line, "3 devices: 2 in low power, 1 missing; 0 wakes")

        let woken = contribution(.waitingToRearm(until: .zero), wakes: 1)
        tally.replace(armed, with: woken)
        XCTAssertEqual(tally.line, "3 devices: 1 in low power, 1 awake, 1 missing; 1 wake")
        let flapping = contribution(.backingOff(until: .zero), flapping: true, wakes: 12)
        tally.replace(woken, with: flapping)
        XCTAssertEqual(tally.line, "3 devices: 1 in low power, 1 awake, 1 missing; 12 wakes; 1 flapping")
        tally.replace(contribution(.gone), with: contribution(.failed(reason: "open: EBUSY")))
        XCTAssertEqual(tally.line, "3 devices: 1 in low power, 1 awake, 1 failing; 12 wakes; 1 flapping")
        tally.replace(flapping, with: nil)
        XCTAssertEqual(tally.line, "2 devices: 1 in low power, 1 failing; 0 wakes")
        XCTAssertEqual(tally.count(.missing), 0)
    }

    func testDisabledDevicesAreNotManaged() {
        var tally = StatusTally()
        tally.replace(nil, with: contribution(.disabled))
        XCTAssertEqual(tally.line, "no devices managed (1 disabled)")
        tally.replace(nil, with: contribution(.lowPower(.reentrant, since: .zero)))
        XCTAssertEqual(tally.line, "1 device: 1 in low power; 0 wakes")
    }
}
