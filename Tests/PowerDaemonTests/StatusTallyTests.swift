@testable import PowerDaemon
import PowerPolicy
import SystemPackage
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
        tally.replace(contribution(.gone), with: contribution(.failed(.open, .init(errno: .resourceBusy))))
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

/// Refused control calls: a few logged per user and window, the rest counted for one summary.
final class RefusalLogTests: XCTestCase {
    func testAFloodOfRefusalsIsLoggedAFewAtATimeAndSummarised() {
        var log = RefusalLog()
        let t0 = MonotonicInstant(.seconds(100))
        let logged = (0..<20_000).filter { _ in log.admit(1000, now: t0) }.count
        XCTAssertEqual(logged, RefusalLog.perWindow)
        XCTAssertTrue(log.admit(2000, now: t0), "another user has a window of its own")
        XCTAssertFalse(log.startedSuppressing(2000))
        XCTAssertTrue(log.startedSuppressing(1000) == false, "the summary was due at the first suppressed call only")
        XCTAssertEqual(log.takeSuppressed(1000), 20_000 - RefusalLog.perWindow)
        XCTAssertTrue(log.admit(1000, now: t0 + .seconds(11)), "after the summary, a new window")
    }

    func testTheSummaryIsDueOnceAWindow() {
        var log = RefusalLog()
        let t0 = MonotonicInstant(.seconds(100))
        for _ in 0..<RefusalLog.perWindow { XCTAssertTrue(log.admit(7, now: t0)) }
        XCTAssertFalse(log.admit(7, now: t0))
        XCTAssertTrue(log.startedSuppressing(7))
        XCTAssertFalse(log.admit(7, now: t0 + .seconds(20)), "a window with a summary pending stays open until it is said")
        XCTAssertFalse(log.startedSuppressing(7))
        XCTAssertEqual(log.takeSuppressed(7), 2)
    }
}
