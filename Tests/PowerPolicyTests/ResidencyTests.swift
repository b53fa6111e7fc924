import PowerPolicy
import SystemPackage
import Testing

/// After arming, the machine takes the kernel's word (`power/runtime_status`) for whether the
/// device is in low power, and says once why the kernel keeps it awake.
struct ResidencyTests {
    /// An own one-shot device armed at t=2.
    private func armed() -> DeviceStateMachine {
        var machine = DeviceStateMachine(policy: oneShot)
        machine.handle(.configured, at: 0)
        machine.handle(.opened, at: 1)
        machine.handle(.armed, at: 2)
        return machine
    }

    private let awake = ResidencySample(suspended: false, keptAwakeBy: .runtimePMForbidden)

    @Test func aSuspendedDeviceIsConfirmedAndNoLongerSampled() {
        var machine = armed()
        #expect(machine.wantsResidencySample)
        #expect(machine.residencySampled(ResidencySample(suspended: true), now: at(3)).isEmpty)
        #expect(machine.phase == .lowPower(.oneShot, since: at(2)))
        #expect(!machine.wantsResidencySample)
    }

    @Test func awakeWithinTheBoundIsNotYetAFinding() {
        var machine = armed()
        #expect(machine.residencySampled(awake, now: at(3)).isEmpty)
        #expect(machine.phase == .lowPower(.oneShot, since: at(2)))
        #expect(machine.wantsResidencySample)
    }

    @Test func awakePastTheBoundIsKeptAwakeSaidOnceThenSuspendedAtLast() {
        var machine = armed()
        #expect(machine.residencySampled(awake, now: at(4)) == [.log(.keptAwake(.runtimePMForbidden))])
        #expect(machine.phase == .keptAwake(.oneShot, .runtimePMForbidden))
        #expect(!machine.phase.isLowPower)
        // Said once per arming; the reason follows the latest read.
        let children = ResidencySample(suspended: false, keptAwakeBy: .activeChildren(1))
        #expect(machine.residencySampled(children, now: at(5)).isEmpty)
        #expect(machine.phase == .keptAwake(.oneShot, .activeChildren(1)))
        #expect(machine.wantsResidencySample)
        // power/control back to auto: the kernel suspends it.
        #expect(machine.residencySampled(ResidencySample(suspended: true), now: at(12))
                == [.log(.suspendedAtLast(afterArmedFor: .seconds(10)))])
        #expect(machine.phase == .lowPower(.oneShot, since: at(2)))
        #expect(!machine.wantsResidencySample)
    }

    @Test func aWakeWhileKeptAwakeIsAWakeAndTheNextArmingIsCheckedAfresh() {
        var machine = armed()
        machine.residencySampled(awake, now: at(4))
        // Writing power/control=on resumed the armed device: the eventfd fired.
        let actions = machine.handle(.woke(1), at: 6)
        #expect(actions.contains(.startTimer(oneShot.rearmDelay)))
        #expect(!machine.wantsResidencySample)
        machine.handle(.timerFired, at: 36)
        machine.handle(.armed, at: 36)
        #expect(machine.wantsResidencySample)
        #expect(machine.phase == .lowPower(.oneShot, since: at(36)))
    }

    @Test func aSampleOutsideLowPowerChangesNothing() {
        var machine = armed()
        machine.handle(.woke(1), at: 3)
        #expect(machine.residencySampled(awake, now: at(10)).isEmpty)
        #expect(machine.phase == .waitingToRearm(until: at(33)))
    }
}

/// A device whose group another process held at open (EBUSY) is opened again when that
/// process exits: the daemon follows its pidfd and reports `busyHolderExited`.
struct BusyHolderTests {
    @Test func theHoldersExitOpensABusyDeviceAgain() {
        var machine = DeviceStateMachine(policy: oneShot)
        machine.handle(.configured, at: 0)
        machine.handle(.openFailed(.init(errno: .resourceBusy)), at: 1)
        #expect(machine.busyHolderExited(now: at(5)) == [.log(.busyHolderExited), .open])
        #expect(machine.phase == .opening)
        #expect(machine.handle(.opened, at: 5) == [.arm(.oneShot)])
    }

    @Test func anExitMeansNothingToADeviceThatFailedForAnotherReasonOrIsManagedAlready() {
        var denied = DeviceStateMachine(policy: oneShot)
        denied.handle(.configured, at: 0)
        denied.handle(.openFailed(.init(errno: .permissionDenied)), at: 1)
        #expect(denied.busyHolderExited(now: at(5)).isEmpty)
        #expect(denied.phase == .failed(.open, .init(errno: .permissionDenied)))

        var armed = DeviceStateMachine(policy: oneShot)
        armed.handle(.configured, at: 0)
        armed.handle(.opened, at: 1)
        armed.handle(.armed, at: 1)
        #expect(armed.busyHolderExited(now: at(5)).isEmpty)
    }
}
