import PowerPolicy
import SystemPackage
import Testing

/// Whole stories through the protocol, with statistics checked on the way.
@Suite struct DeviceStateMachineScenarioTests {
    @Test func takeoverFromAPreviousHolderExitsThenArmsOnceThenGivesUp() {
        var m = DeviceStateMachine(policy: oneShot)
        #expect(m.handle(.configured, at: 0) == [.open])
        #expect(m.handle(.opened, at: 1) == [.arm(.oneShot)])
        #expect(m.handle(.armFailed(.init(.alreadyEngaged, errno: .invalidArgument)), at: 1) == [.log(.alreadyEngaged(.oneShot)), .exitLowPower])
        // EXIT resumed the device the previous holder had armed: its eventfd, not ours, fired.
        #expect(m.handle(.exited(0), at: 1) == [.arm(.oneShot)])
        #expect(m.handle(.armFailed(.init(.alreadyEngaged, errno: .invalidArgument)), at: 1) == [.close, .log(.armFailed(.init(.alreadyEngaged, errno: .invalidArgument), .gaveUpAfterExit))])
        #expect(m.phase == .failed(.arm, .init(.alreadyEngaged, errno: .invalidArgument)))
        #expect(m.statistics.lastError == DeviceFailure(operation: .arm, failure: .init(.alreadyEngaged, errno: .invalidArgument), at: at(1)))
        #expect(m.statistics.arms == 0)
    }

    @Test func takeoverSucceedsAfterExit() {
        var m = DeviceStateMachine(policy: reentrant)
        m.handle(.configured, at: 0); m.handle(.opened, at: 1)
        #expect(m.handle(.armFailed(.init(.alreadyEngaged, errno: .invalidArgument)), at: 1) == [.log(.alreadyEngaged(.reentrant)), .exitLowPower])
        #expect(m.handle(.exited(0), at: 2) == [.arm(.reentrant)])
        #expect(m.handle(.armed, at: 2) == [.log(.armed(.reentrant))])
        #expect(m.phase == .lowPower(.reentrant, since: at(2)))
        // Re-entrant arming registers no eventfd: any count is stale.
        #expect(m.handle(.woke(1), at: 5) == [])
        #expect(m.statistics.wakes == 0 && m.statistics.selfWakes == 1)
    }

    @Test func d3coldIsForbiddenBeforeArmingAndRestoredWhenAllowedAgain() {
        var m = DeviceStateMachine(policy: forbidD3cold)
        m.handle(.configured, at: 0)
        #expect(m.handle(.opened, at: 1) == [.setD3coldAllowed(false), .arm(.oneShot)])
        #expect(m.handle(.armed, at: 1) == [.log(.armed(.oneShot))])
        // A wake and a re-arm do not write again.
        m.handle(.woke(1), at: 10)
        #expect(m.handle(.timerFired, at: 40) == [.arm(.oneShot)])
        m.handle(.armed, at: 40)
        // Allowing it again needs an exit/arm cycle (the write resumes the device).
        #expect(m.handle(.policyChanged(oneShot), at: 50) == [.exitLowPower])
        #expect(m.handle(.exited(1), at: 50) == [.setD3coldAllowed(true), .arm(.oneShot)])
        #expect(m.handle(.armed, at: 50) == [.log(.armed(.oneShot))])
        #expect(m.statistics.selfWakes == 1, "the EXIT's own wake")
        #expect(m.statistics.wakes == 1)
    }

    @Test func aFailedForbidWriteNeverArms() {
        var m = DeviceStateMachine(policy: forbidD3cold)
        m.handle(.configured, at: 0); m.handle(.opened, at: 1)
        #expect(m.handle(.d3coldWriteFailed(.init(errno: .permissionDenied)), at: 1) == [.close, .log(.d3coldWriteFailed(.init(errno: .permissionDenied), .notArmed))])
        #expect(m.phase == .failed(.setD3coldAllowed, .init(errno: .permissionDenied)))
    }

    @Test func modeChangeExitsDrainsTheSelfWakeAndArmsInTheNewMode() {
        var m = DeviceStateMachine(policy: oneShot)
        m.handle(.configured, at: 0); m.handle(.opened, at: 0); m.handle(.armed, at: 0)
        #expect(m.handle(.policyChanged(reentrant), at: 100) == [.exitLowPower])
        #expect(m.handle(.exited(1), at: 100) == [.arm(.reentrant)])
        #expect(m.handle(.armed, at: 100) == [.log(.armed(.reentrant))])
        // The read source fires for the counter the drain already emptied.
        #expect(m.handle(.woke(0), at: 100) == [])
        #expect(m.statistics.wakes == 0)
        #expect(m.statistics.selfWakes == 1)
        #expect(m.statistics.flapEpisodes == 0)
        #expect(m.statistics.arms == 2)
        #expect(m.statistics.timeInLowPower(asOf: at(150)) == .seconds(150))
    }

    @Test func flappingStartsOnceBacksOffExponentiallyUpToTheCapAndEndsAfterAQuietWindow() {
        var m = DeviceStateMachine(policy: flappy)  // 2 wakes / 600s, rearm 10s, cap 60s
        m.handle(.configured, at: 0); m.handle(.opened, at: 0); m.handle(.armed, at: 0)
        #expect(m.handle(.woke(1), at: 5) == [.log(.woke(count: 1, inLowPowerFor: .seconds(5))), .startTimer(.seconds(10))])
        #expect(m.handle(.timerFired, at: 15) == [.arm(.oneShot)])
        #expect(m.handle(.armed, at: 15) == [.log(.rearmed(.oneShot, quietFor: .seconds(10)))])
        m.handle(.woke(1), at: 20); m.handle(.timerFired, at: 30); m.handle(.armed, at: 30)
        #expect(m.handle(.woke(1), at: 35) == [
            .log(.woke(count: 1, inLowPowerFor: .seconds(5))),
            .log(.flappingStarted(wakes: 3, window: .seconds(600), backoff: .seconds(20))),
            .startTimer(.seconds(20)),
        ])
        #expect(m.isFlapping && m.statistics.flapEpisodes == 1)
        #expect(m.phase == .backingOff(until: at(55)))
        // Re-arming while flapping is not logged; the quiet check runs for one window.
        #expect(m.handle(.timerFired, at: 55) == [.arm(.oneShot)])
        #expect(m.handle(.armed, at: 55) == [.startTimer(.seconds(600))])
        // Each further wake doubles the delay, silently: 40, then capped at 60.
        #expect(m.handle(.woke(1), at: 56) == [.startTimer(.seconds(40))])
        m.handle(.timerFired, at: 96); m.handle(.armed, at: 96)
        #expect(m.handle(.woke(2), at: 97) == [.startTimer(.seconds(60))])
        m.handle(.timerFired, at: 157); m.handle(.armed, at: 157)
        // A stale quiet-check expiry is ignored; the real one ends the episode.
        #expect(m.handle(.timerFired, at: 700) == [])
        #expect(m.handle(.timerFired, at: 757) == [.log(.flappingEnded(suppressedWakes: 3, lasted: .seconds(722)))])
        #expect(!m.isFlapping)
        #expect(m.statistics.wakes == 6)
        #expect(m.statistics.lastWake == at(97))
        // After the episode, a wake is an ordinary wake again.
        #expect(m.handle(.woke(1), at: 800) == [.log(.woke(count: 1, inLowPowerFor: .seconds(643))), .startTimer(.seconds(10))])
    }

    @Test func removalClosesAndReturnReopens() {
        var m = DeviceStateMachine(policy: oneShot)
        m.handle(.configured, at: 0); m.handle(.opened, at: 0); m.handle(.armed, at: 10)
        // Unbind resumes the device first: a wake arrives, then the removal.
        m.handle(.woke(1), at: 20)
        #expect(m.handle(.removed, at: 21) == [.cancelTimer, .close, .log(.deviceGone(nil))])
        #expect(m.handle(.returned, at: 60) == [.log(.deviceBack), .open])
        #expect(m.handle(.opened, at: 61) == [.arm(.oneShot)])
        #expect(m.handle(.armed, at: 61) == [.log(.armed(.oneShot))])
        #expect(m.statistics.timeInLowPower(asOf: at(71)) == .seconds(20))
    }

    @Test func deviceVanishingBetweenDecisionAndIoctlIsGone() {
        var m = DeviceStateMachine(policy: oneShot)
        m.handle(.configured, at: 0); m.handle(.opened, at: 0); m.handle(.armed, at: 0)
        m.handle(.woke(1), at: 5)
        #expect(m.handle(.timerFired, at: 35) == [.arm(.oneShot)])
        #expect(m.handle(.armFailed(.init(errno: .operationNotSupportedByDevice)), at: 35) == [.close, .log(.deviceGone(.operationNotSupportedByDevice))])
        #expect(m.phase == .gone)
    }

    @Test func stopWithKeepClosesWithoutExit() {
        var m = DeviceStateMachine(policy: keepOnStop)
        m.handle(.configured, at: 0); m.handle(.opened, at: 0); m.handle(.armed, at: 0)
        #expect(m.handle(.stopRequested, at: 9) == [.close])
        #expect(m.phase == .stopped)
        #expect(m.statistics.timeInLowPower(asOf: at(100)) == .seconds(9))
    }

    @Test func offAndDisabledAreNeverOpened() {
        var off = DeviceStateMachine(policy: DevicePolicy(source: .own, mode: .off))
        #expect(off.handle(.configured, at: 0) == [])
        #expect(off.phase == .disabled)
        var lowPower = DeviceStateMachine(policy: oneShot)
        lowPower.handle(.configured, at: 0); lowPower.handle(.opened, at: 0); lowPower.handle(.armed, at: 0)
        #expect(lowPower.handle(.policyChanged(DevicePolicy(source: .own, mode: .off)), at: 5) == [.exitLowPower])
        #expect(lowPower.handle(.exited(1), at: 5) == [.close, .log(.released)])
        #expect(lowPower.phase == .disabled)
    }

    @Test func durationsInWholeUnitsTruncateAndSaturate() {
        #expect(Duration.milliseconds(1500).microseconds == 1_500_000)
        #expect(Duration.nanoseconds(1999).microseconds == 1)
        #expect(Duration.milliseconds(-1500).milliseconds == -1500)
        #expect(Duration.seconds(Int64.max).nanoseconds == Int64.max)
        #expect(Duration.seconds(3).milliseconds == 3000)
    }

    @Test func instantArithmeticSaturates() {
        #expect(MonotonicInstant(nanoseconds: 5) - .seconds(1) == .zero)
        #expect(MonotonicInstant(nanoseconds: .max) + .seconds(1) == MonotonicInstant(nanoseconds: .max))
        #expect(at(10) - at(4) == .seconds(6))
        #expect(at(4) - at(10) == .seconds(-6))
    }
}
