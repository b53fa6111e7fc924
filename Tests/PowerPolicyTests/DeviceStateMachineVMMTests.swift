import PowerPolicy
import Testing

/// `vmm` devices: adopt, guest D3hot, wake, release, and the races between them, with a
/// manual clock (whole seconds).
@Suite struct DeviceStateMachineVMMTests {
    let vmm = DevicePolicy(rearmDelay: .seconds(2))
    let qemu = VMMHolder(pid: 4242, executable: "/usr/bin/qemu-system-x86_64")
    let d0 = GuestPowerSample(powerState: .d0, runtimeSuspended: false)
    let d3hot = GuestPowerSample(powerState: .d3hot, runtimeSuspended: false)

    /// configured → no VMM yet → a VMM opens the group → adopted → sampling, in D0.
    func adopted(at second: Int = 1) -> DeviceStateMachine {
        var m = DeviceStateMachine(policy: vmm)
        #expect(m.configured(now: at(0)) == [.adopt])
        #expect(m.noVMM(now: at(0)) == [])
        #expect(m.phase == .idle)
        #expect(m.vmmMayHaveOpened(now: at(second)) == [.cancelTimer, .adopt])
        #expect(m.adopted(qemu, method: .fdinfo, now: at(second)) == [.log(.adopted(qemu, .fdinfo))])
        #expect(m.sampled(d0, now: at(second)) == [])
        #expect(m.phase == .guestActive)
        #expect(m.holder == qemu)
        return m
    }

    @Test func theDefaultsOfAVMMDeviceAreGuestD3AndKeep() {
        #expect(vmm.source == .vmm && vmm.trigger == .guestD3 && vmm.onStop == .keep)
        let own = DevicePolicy(source: .own)
        #expect(own.trigger == .immediate && own.onStop == .exit)
    }

    @Test func inD0TheGuestIsOnlySampledNeverArmed() {
        var m = adopted()
        for second in 2...5 {
            #expect(m.sampled(d0, now: at(second)) == [])
        }
        #expect(!m.wantsEverySample, "the daemon's sampler can leave plain D0 samples out")
        #expect(m.statistics.arms == 0)
    }

    @Test func guestD3HotIsArmedOneShotAndItsD0WriteIsAWake() {
        var m = adopted()
        #expect(m.sampled(d3hot, now: at(2)) == [.arm(.oneShot)])
        #expect(m.armed(now: at(2)) == [.log(.armedInGuestD3)])
        #expect(m.phase == .lowPower(.oneShot, since: at(2)))
        // The guest's D0 write resumes the device: the eventfd fires.
        #expect(m.woke(count: 1, now: at(10)) == [.log(.woke(count: 1, inLowPowerFor: .seconds(8))), .startTimer(.seconds(2))])
        // A sample while waiting out rearm_delay changes nothing.
        #expect(m.sampled(d3hot, now: at(11)) == [])
        // rearm_delay over: back to the sampler, which waits for the next D3hot; no arm.
        #expect(m.timerFired(now: at(12)) == [])
        #expect(m.phase == .guestActive)
        #expect(m.sampled(d0, now: at(12)) == [])
        #expect(m.sampled(d3hot, now: at(13)) == [.arm(.oneShot)])
        #expect(m.statistics.wakes == 1)
    }

    @Test func aD0WriteBetweenTheSampleAndTheArmIsAWakeNotAnError() {
        // The sample saw D3hot, the guest wrote D0 before the arm: the arm's own resume (or
        // the guest's write right after it) fires the eventfd.
        var m = adopted()
        #expect(m.sampled(d3hot, now: at(2)) == [.arm(.oneShot)])
        #expect(m.armed(now: at(2)) == [.log(.armedInGuestD3)])
        #expect(m.woke(count: 1, now: at(2)) == [.log(.woke(count: 1, inLowPowerFor: .zero)), .startTimer(.seconds(2))])
        #expect(m.statistics.lastError == nil)
    }

    @Test func alreadySuspendedIsNotArmedAgain() {
        // Armed by someone else (a daemon run that was killed): arming would wake it.
        var m = adopted()
        #expect(m.sampled(GuestPowerSample(powerState: .d3hot, runtimeSuspended: true), now: at(2)) == [])
        #expect(m.phase == .guestActive)
    }

    @Test func theVMMExitingWhileArmedReleasesAtOnce() {
        var m = adopted()
        _ = m.sampled(d3hot, now: at(2)); _ = m.armed(now: at(2))
        #expect(m.vmmExited(now: at(5)) == [.cancelTimer, .close, .log(.vmmReleased(qemu, .vmmExited))])
        #expect(m.phase == .idle && m.holder == nil)
        #expect(m.statistics.timeInLowPower(asOf: at(9)) == .seconds(3))
        // The next VMM is adopted afresh.
        #expect(m.vmmMayHaveOpened(now: at(9)) == [.cancelTimer, .adopt])
    }

    @Test func theVMMExitingWhileWaitingOrSamplingReleases() {
        var m = adopted()
        #expect(m.vmmExited(now: at(2)) == [.cancelTimer, .close, .log(.vmmReleased(qemu, .vmmExited))])
        var n = adopted()
        _ = n.sampled(d3hot, now: at(2)); _ = n.armed(now: at(2)); _ = n.woke(count: 1, now: at(3))
        #expect(n.vmmExited(now: at(4)) == [.cancelTimer, .close, .log(.vmmReleased(qemu, .vmmExited))])
    }

    @Test func aHotUnplugFromTheGuestReleases() {
        var m = adopted()
        #expect(m.sampled(GuestPowerSample(powerState: .d0, runtimeSuspended: false, vmmHoldsDevice: false), now: at(2))
                == [.cancelTimer, .close, .log(.vmmReleased(qemu, .vmmClosedDevice))])
        #expect(m.phase == .idle)
    }

    @Test func aVMMStillStartingIsAskedAgainQuietly() {
        var m = DeviceStateMachine(policy: vmm)
        _ = m.configured(now: at(0))
        #expect(m.adoptionRefused(qemu, .noDeviceFile, now: at(0)) == [.startTimer(DeviceStateMachine.deviceFileRetryDelay)])
        #expect(m.timerFired(now: at(1)) == [.adopt])
        #expect(m.adopted(qemu, method: .unambiguous, now: at(1)) == [.log(.adopted(qemu, .unambiguous))])
    }

    @Test func aVMMExitingDuringAdoptionLeavesTheDeviceIdle() {
        // pidfd_open found it gone (ESRCH): noVMM.
        var m = DeviceStateMachine(policy: vmm)
        _ = m.configured(now: at(0))
        #expect(m.noVMM(now: at(0)) == [])
        #expect(m.phase == .idle)
        // Still starting, then gone before its device file appeared: its pidfd reads.
        #expect(m.vmmMayHaveOpened(now: at(1)) == [.cancelTimer, .adopt])
        _ = m.adoptionRefused(qemu, .noDeviceFile, now: at(1))
        #expect(m.vmmExited(now: at(2)) == [.cancelTimer, .close])
        #expect(m.phase == .idle)
    }

    @Test func aHolderThatIsNotAllowedIsNamedOnceAndLeftAlone() {
        let other = VMMHolder(pid: 77, executable: "/opt/x/runner")
        var m = DeviceStateMachine(policy: vmm)
        _ = m.configured(now: at(0))
        #expect(m.adoptionRefused(other, .executableNotAllowed, now: at(0)) == [.log(.adoptionRefused(other, .executableNotAllowed))])
        #expect(m.phase == .notAdopted(other, .executableNotAllowed))
        // inotify sees more opens of the same holder: nothing is looked at again, nothing logged.
        #expect(m.vmmMayHaveOpened(now: at(1)) == [])
        #expect(m.timerFired(now: at(2)) == [])
        #expect(m.vmmExited(now: at(3)) == [.cancelTimer, .close])
        #expect(m.phase == .idle)
    }

    @Test func anAmbiguousHolderIsNotGuessedAt() {
        var m = DeviceStateMachine(policy: vmm)
        _ = m.configured(now: at(0))
        #expect(m.adoptionRefused(qemu, .ambiguous(deviceFiles: 2), now: at(0)) == [.log(.adoptionRefused(qemu, .ambiguous(deviceFiles: 2)))])
        #expect(m.statistics.arms == 0)
    }

    @Test func twoDevicesOfOneVMMAreReleasedEachByTheSameExit() {
        var gpu = adopted(), audio = adopted()
        #expect(gpu.vmmExited(now: at(5)) == [.cancelTimer, .close, .log(.vmmReleased(qemu, .vmmExited))])
        #expect(audio.vmmExited(now: at(5)) == [.cancelTimer, .close, .log(.vmmReleased(qemu, .vmmExited))])
    }

    @Test func stoppingLeavesAnArmedDeviceAsleep() {
        var m = adopted()
        _ = m.sampled(d3hot, now: at(2)); _ = m.armed(now: at(2))
        // on_stop = keep (the vmm default): no EXIT, only the duplicate is closed.
        #expect(m.stopRequested(now: at(3)) == [.close])
        #expect(m.phase == .stopped)
    }

    @Test func theOperatorsArmSamplesInsteadOfArmingBlindly() {
        var m = adopted()
        #expect(m.armRequested(now: at(2)) == [.cancelTimer])
        #expect(m.phase == .guestActive)
        #expect(m.sampled(d0, now: at(2)) == [])
        #expect(m.statistics.arms == 0)
        // Idle: the operator's arm (or adopt) looks for a VMM.
        var idle = DeviceStateMachine(policy: vmm)
        _ = idle.configured(now: at(0)); _ = idle.noVMM(now: at(0))
        #expect(idle.armRequested(now: at(1)) == [.cancelTimer, .adopt])
    }

    @Test func disablingAnAdoptedDeviceClosesTheDuplicateOnly() {
        var m = adopted()
        _ = m.sampled(d3hot, now: at(2)); _ = m.armed(now: at(2))
        var off = vmm
        off.enabled = false
        #expect(m.policyChanged(off, now: at(3)) == [.close, .log(.released)])
        #expect(m.phase == .disabled)
    }

    @Test func aFlappingGuestBacksOffAndThenWaitsForD3hot() {
        var policy = vmm
        policy.flapGuard = .init(maxWakes: 1, window: .seconds(600), backoffCap: .seconds(60))
        var m = DeviceStateMachine(policy: policy)
        _ = m.configured(now: at(0)); _ = m.adopted(qemu, method: .fdinfo, now: at(0)); _ = m.sampled(d3hot, now: at(0)); _ = m.armed(now: at(0))
        _ = m.woke(count: 1, now: at(1)); _ = m.timerFired(now: at(3)); _ = m.sampled(d3hot, now: at(3)); _ = m.armed(now: at(3))
        let actions = m.woke(count: 1, now: at(4))
        #expect(actions.contains(.log(.flappingStarted(wakes: 2, window: .seconds(600), backoff: .seconds(4)))))
        #expect(m.sampled(d3hot, now: at(5)) == [], "backing off: the guest's D3hot waits")
        #expect(m.timerFired(now: at(8)) == [])
        #expect(m.sampled(d3hot, now: at(8)) == [.arm(.oneShot)])
        // A flapping guest's arms are summarised, not logged one by one.
        #expect(m.armed(now: at(8)) == [.startTimer(.seconds(600))])
    }

    @Test func aRestartWithTheKeptEventfdKnowsTheDeviceIsStillArmed() {
        var m = DeviceStateMachine(policy: vmm)
        _ = m.configured(now: at(0))
        #expect(m.adopted(qemu, method: .fdinfo, kept: KeptWakeup(wakesWhileAway: 0), now: at(0)) == [.log(.adopted(qemu, .fdinfo))])
        #expect(m.wantsEverySample, "the first sample decides whether the kept arming is still engaged")
        // Suspended and the eventfd has not fired: the previous run's arming is engaged.
        #expect(m.sampled(GuestPowerSample(powerState: .d3hot, runtimeSuspended: true), now: at(0)) == [.log(.keptArmed)])
        #expect(m.phase == .lowPower(.oneShot, since: at(0)))
        #expect(m.statistics.arms == 0)
        // The guest's D0 write fires the kept eventfd: an ordinary wake.
        #expect(m.woke(count: 1, now: at(5)) == [.log(.woke(count: 1, inLowPowerFor: .seconds(5))), .startTimer(.seconds(2))])
    }

    @Test func wakesWhileTheDaemonWasDownAreCountedAndNotTakenAsArmed() {
        var m = DeviceStateMachine(policy: vmm)
        _ = m.configured(now: at(0))
        _ = m.adopted(qemu, method: .fdinfo, kept: KeptWakeup(wakesWhileAway: 1), now: at(0))
        #expect(m.statistics.wakes == 1)
        // Suspended by someone else's arming: not ours to trust; look again later.
        #expect(m.sampled(GuestPowerSample(powerState: .d3hot, runtimeSuspended: true), now: at(0)) == [])
        #expect(m.phase == .guestActive)
    }

    @Test func anOpenSeenBeforeTheOpenerShowsIsLookedAtAgainForAWhile() {
        // inotify reports the open before the file is in the opener's descriptor table.
        var m = DeviceStateMachine(policy: vmm)
        _ = m.configured(now: at(0))
        #expect(m.noVMM(now: at(0)) == [], "the first look at start keeps no timer")
        #expect(m.vmmMayHaveOpened(now: at(10)) == [.cancelTimer, .adopt])
        #expect(m.noVMM(now: at(10)) == [.startTimer(DeviceStateMachine.lookAgainDelay)])
        #expect(m.phase == .idle)
        #expect(m.timerFired(now: at(11)) == [.adopt])
        #expect(m.noVMM(now: at(11)) == [.startTimer(DeviceStateMachine.lookAgainDelay)])
        // Past lookingAfterAnOpen (5 s): idle, with no timer.
        #expect(m.timerFired(now: at(16)) == [])
        #expect(m.phase == .idle)
    }
}
