@testable import PowerPolicy
import Testing

/// The flap guard alone: a sliding window of wakes, the episode it starts, and the backoff
/// that doubles from the base up to the cap.
@Suite struct FlapGuardTests {
    let limits = DevicePolicy.FlapGuard(maxWakes: 3, window: .seconds(60), backoffCap: .seconds(20))

    /// Seconds after a boot long past: instants near zero would saturate `now - window`.
    func at(_ seconds: Int) -> MonotonicInstant { PowerPolicyTests.at(10_000 + seconds) }

    @Test func moreThanMaxWakesInTheWindowStartsAnEpisode() {
        var guardian = FlapGuard()
        for second in 0..<3 {
            #expect(guardian.wake(count: 1, at: at(second), limits: limits, backoffBase: .seconds(2)) == .calm)
        }
        #expect(guardian.wake(count: 1, at: at(3), limits: limits, backoffBase: .seconds(2)) == .started(wakes: 4, backoff: .seconds(4)))
        #expect(guardian.isFlapping)
        #expect(guardian.wake(count: 2, at: at(10), limits: limits, backoffBase: .seconds(2)) == .continuing(backoff: .seconds(8)))
        #expect(guardian.wake(count: 1, at: at(20), limits: limits, backoffBase: .seconds(2)) == .continuing(backoff: .seconds(16)))
        #expect(guardian.wake(count: 1, at: at(40), limits: limits, backoffBase: .seconds(2)) == .continuing(backoff: .seconds(20)), "capped")
        #expect(guardian.end(at: at(100)) == .init(suppressedWakes: 4, lasted: .seconds(97)))
        #expect(!guardian.isFlapping)
    }

    @Test func wakesThatLeftTheWindowDoNotCount() {
        var guardian = FlapGuard()
        for second in [0, 30, 61, 92, 123] {
            #expect(guardian.wake(count: 1, at: at(second), limits: limits, backoffBase: .seconds(1)) == .calm, "\(second)")
        }
    }

    @Test func aCoalescedCountIsSeveralWakes() {
        var guardian = FlapGuard()
        #expect(guardian.wake(count: 1_000_000, at: at(0), limits: limits, backoffBase: .seconds(1)) == .started(wakes: 4, backoff: .seconds(2)))
    }

    @Test func endingForgetsTheWindow() {
        var guardian = FlapGuard()
        for second in 0..<3 { _ = guardian.wake(count: 1, at: at(second), limits: limits, backoffBase: .seconds(1)) }
        #expect(guardian.end(at: at(3)) == .init(suppressedWakes: 0, lasted: .zero), "no episode: nothing to summarise")
        #expect(guardian.wake(count: 1, at: at(4), limits: limits, backoffBase: .seconds(1)) == .calm)
    }
}
