import SystemPackage

/// The decisions for one device, as a pure state machine (swift-nio style): a private `State`,
/// one `mutating func` per event, each returning the actions the daemon must carry out.
///
/// ## The daemon protocol
/// 1. Create one machine per device entry, then call `configured(now:)`.
/// 2. Carry out the returned actions **in order**. Each list holds at most one action that
///    reports an outcome (`open`, `arm`, `exitLowPower`), and it is the last kernel action
///    of the list; report that outcome as the next event for this device, before any other
///    event for it: `open` → `opened`/`openFailed`; `arm` → `armed`/`armFailed`;
///    `exitLowPower` → `exited(drainedWakes:)`/`exitFailed`.
/// 3. `setD3coldAllowed` precedes an `arm`: if the write fails, skip the rest of the list and
///    report `d3coldWriteFailed`. `close`, `startTimer`, `cancelTimer`, `log` cannot fail.
/// 4. Kernel- and operator-driven events come whenever they happen, between action lists:
///    `woke(count:)` with the whole counter read from the eventfd (skip a read that finds 0),
///    `timerFired`, `removed` (unbind, hot-unplug, REQ irq, vanished from sysfs), `returned`
///    (present again), `policyChanged` (reload), `stopRequested`.
/// 5. Every event carries `now`, a CLOCK_MONOTONIC instant; the machine never reads a clock.
/// One timer per device is enough: the machine never needs two deadlines at once
/// (re-arm delay, backoff, and the flapping quiet check exclude each other).
///
/// Protocol violations (an outcome nobody asked for, an event while an outcome is pending,
/// `configured` twice) trap with a message: they are bugs in the daemon, not kernel races.
/// Kernel races are tolerated and documented where they are handled.
public struct DeviceStateMachine: Sendable {
    public private(set) var policy: DevicePolicy
    public private(set) var statistics = DeviceStatistics()
    private var state: State = .unconfigured
    private var flap = FlapGuard()
    /// What the daemon last wrote to `d3cold_allowed` for this device (nil: never, or the
    /// device has been re-added since, so the kernel's default is back).
    private var d3coldWritten: Bool?
    /// `vmm`: adopted with the previous run's wakeup eventfd, which has not fired: if the
    /// first sample finds the device suspended, that arming is still engaged.
    private var mayStillBeArmed = false
    /// `vmm`: the idle state a look for a VMM started from (how long to keep looking).
    private var priorIdle: State = .idle(lookingUntil: nil)
    /// `vmm`: the process whose device file the daemon holds (or that it leaves alone).
    public private(set) var holder: VMMHolder?

    /// A VMM that has opened the group but has no device file yet is asked again after this
    /// long (QEMU opens the group, then the container, then the device).
    public static let deviceFileRetryDelay: Duration = .milliseconds(250)

    public init(policy: DevicePolicy) {
        self.policy = policy
    }

    // MARK: State

    private enum State: Sendable {
        case unconfigured
        /// Not managed (`enabled = false` or `mode = off`); nothing open.
        case disabled
        case opening
        case arming(Arming)
        case lowPower(LowPower)
        /// One-shot, woke, disarmed and awake; re-arm at `until` (the timer runs).
        case waitingToRearm(until: MonotonicInstant, wokeAt: MonotonicInstant)
        /// Flapping: like waitingToRearm with a longer, growing delay (the timer runs).
        case backingOff(until: MonotonicInstant, wokeAt: MonotonicInstant)
        /// The operator woke it (`wakeRequested`): awake and disarmed until `until` (the timer
        /// runs) or, with no deadline, until `armRequested`.
        case heldAwake(until: MonotonicInstant?)
        case exiting(then: AfterExit)
        /// Closed after an error that a retry of the same steps would hit again; left until
        /// the device returns or its policy changes.
        case failed(DeviceFailure.Operation, CallFailure)
        /// Removed or broken; closed; waiting for `returned`.
        case gone
        /// No low-power feature; closed; never retried.
        case unsupported
        case stopped
        /// `vmm`: no VMM holds the device (the kernel keeps it suspended by itself); nothing
        /// open, nothing sampled. Left by `vmmMayHaveOpened`. `lookingUntil`: an open was seen
        /// but no holder found yet (inotify reports an open before the opener's descriptor
        /// table shows it): the timer looks again until then.
        case idle(lookingUntil: MonotonicInstant?)
        /// `vmm`: outcome of `adopt` pending.
        case adopting
        /// `vmm`: a process holds the device and the daemon leaves it alone until it exits
        /// (`holder`); for `noDeviceFile` the timer asks again.
        case notAdopted(AdoptionRefusal)
        /// `vmm`: adopted, awake, the guest uses it; the daemon's sampler looks at its power
        /// state every guest_d3_interval and reports `sampled`.
        case guestActive
    }

    private struct Arming: Sendable {
        var mode: ArmMode
        var reason: ArmReason
    }

    private enum ArmReason: Sendable {
        case initial
        case rearm(wokeAt: MonotonicInstant)
        case policyChange
        /// The operator asked (`armRequested`), or the hold of a `wakeRequested` ran out.
        case operatorRequest
        /// After EINVAL "already engaged" and an EXIT: a second EINVAL means give up.
        case afterTakeover
        /// `vmm`: a sample found the guest had put the device into D3hot.
        case guestD3
    }

    private struct LowPower: Sendable {
        var mode: ArmMode
        var since: MonotonicInstant
        /// While flapping: when the quiet check fires (the timer runs).
        var quietCheckAt: MonotonicInstant?
        /// Whether the kernel has been seen to suspend the device since this arming.
        var residency: Residency = .unconfirmed
    }

    private enum AfterExit: Sendable {
        case arm(ArmMode, ArmReason)
        case holdAwake(until: MonotonicInstant?)
        case closeAndDisable
        case closeAndStop
    }

    /// A summary for status lines and `vfio-powerctl status`.
    public var phase: DevicePhase {
        switch state {
        case .unconfigured: .unconfigured
        case .disabled: .disabled
        case .opening: .opening
        case .arming: .arming
        case .lowPower(let lowPower):
            if case .keptAwake(let reason) = lowPower.residency {
                .keptAwake(lowPower.mode, reason)
            } else {
                .lowPower(lowPower.mode, since: lowPower.since)
            }
        case .waitingToRearm(let until, _): .waitingToRearm(until: until)
        case .backingOff(let until, _): .backingOff(until: until)
        case .heldAwake(let until): .heldAwake(until: until)
        case .exiting: .exiting
        case .failed(let operation, let failure): .failed(operation, failure)
        case .gone: .gone
        case .unsupported: .unsupported
        case .stopped: .stopped
        case .idle: .idle
        case .adopting: .adopting
        case .notAdopted(let refusal): .notAdopted(holder, refusal)
        case .guestActive: .guestActive
        }
    }

    /// Whether a flapping episode is in progress.
    public var isFlapping: Bool { flap.isFlapping }

    // MARK: Events

    /// The machine starts managing (or not) the device under its policy.
    public mutating func configured(now: MonotonicInstant) -> [DeviceAction] {
        guard case .unconfigured = state else {
            preconditionFailure("configured(now:) twice for one device; create a new DeviceStateMachine instead")
        }
        guard policy.isManaged else {
            state = .disabled
            return []
        }
        return startManaging()
    }

    /// `own`: open. `vmm`: look for a VMM that holds the device already.
    private mutating func startManaging() -> [DeviceAction] {
        switch policy.source {
        case .own:
            state = .opening
            return [.open]
        case .vmm:
            priorIdle = .idle(lookingUntil: nil)
            state = .adopting
            return [.adopt]
        }
    }

    /// A process that held the device's group when it was opened (EBUSY) has exited: open it
    /// again. (The daemon follows each holder's pidfd; no timer polls for the group.)
    public mutating func busyHolderExited(now: MonotonicInstant) -> [DeviceAction] {
        guard case .failed = state, let failure = statistics.lastError, failure.operation == .open,
              failure.failure.kind == .busy, policy.isManaged else { return [] }
        state = .opening
        return [.log(.busyHolderExited), .open]
    }

    /// The device is open, its eventfd exists, and the low-power feature probed fine.
    public mutating func opened(now: MonotonicInstant) -> [DeviceAction] {
        guard case .opening = state else { preconditionFailure("opened(now:) without an open action in \(phase)") }
        flap = FlapGuard()
        return beginArming(armMode, reason: .initial)
    }

    public mutating func openFailed(_ failure: CallFailure, now: MonotonicInstant) -> [DeviceAction] {
        guard case .opening = state else { preconditionFailure("openFailed without an open action in \(phase)") }
        statistics.lastError = DeviceFailure(operation: .open, failure: failure, at: now)
        switch failure.kind {
        case .unsupported:
            state = .unsupported
            return [.log(.unsupported(failure.errno))]
        case .gone:
            state = .gone
            return [.log(.deviceGone(failure.errno))]
        case .busy, .alreadyEngaged, .refused:
            state = .failed(.open, failure)
            return [.log(.openFailed(failure))]
        }
    }

    public mutating func armed(now: MonotonicInstant) -> [DeviceAction] {
        guard case .arming(let arming) = state else { preconditionFailure("armed(now:) without an arm action in \(phase)") }
        statistics.arms += 1
        statistics.lowPowerSince = now
        var actions: [DeviceAction] = []
        switch arming.reason {
        case .initial, .policyChange, .afterTakeover, .operatorRequest:
            actions.append(.log(.armed(arming.mode)))
        case .guestD3:
            // A flapping guest is summarised, like a flapping device.
            if !flap.isFlapping { actions.append(.log(.armedInGuestD3)) }
        case .rearm(let wokeAt):
            // A flapping device is summarised, not logged per re-arm.
            if !flap.isFlapping { actions.append(.log(.rearmed(arming.mode, quietFor: now - wokeAt))) }
        }
        var lowPower = LowPower(mode: arming.mode, since: now, quietCheckAt: nil)
        if flap.isFlapping {
            if arming.mode == .oneShot {
                // Flapping ends when the device stays in low power for a whole window.
                lowPower.quietCheckAt = now + policy.flapGuard.window
                actions.append(.startTimer(policy.flapGuard.window))
            } else {
                // Re-entrant mode has no wakes to flap with.
                actions.append(endFlapping(now: now))
            }
        }
        state = .lowPower(lowPower)
        return actions
    }

    public mutating func armFailed(_ failure: CallFailure, now: MonotonicInstant) -> [DeviceAction] {
        guard case .arming(let arming) = state else { preconditionFailure("armFailed without an arm action in \(phase)") }
        statistics.lastError = DeviceFailure(operation: .arm, failure: failure, at: now)
        if failure.kind == .alreadyEngaged {
            if case .afterTakeover = arming.reason {
                state = .failed(.arm, failure)
                return [.close, .log(.armFailed(failure, .gaveUpAfterExit))]
            }
            // We believe the device is not engaged, yet the kernel says it is: a previous
            // holder of the same file (an earlier daemon run, a VMM sharing it) left it armed.
            // EXIT is idempotent, so exit and arm once more.
            state = .exiting(then: .arm(arming.mode, .afterTakeover))
            return [.log(.alreadyEngaged(arming.mode)), .exitLowPower]
        }
        return failClosed(failure, operation: .arm) { .armFailed($0, .closedUntilRetried) }
    }

    /// EXIT returned and the daemon drained the eventfd right after it. Whatever it found was
    /// caused by the EXIT itself (the ioctl resumes a suspended one-shot device, which fires
    /// the eventfd) or, rarely, is a device wake that raced the EXIT; either way the arming
    /// it belonged to is over by our own decision, so it counts as self-caused, not as a
    /// device wake, and never feeds the flap guard.
    public mutating func exited(drainedWakes: UInt64, now: MonotonicInstant) -> [DeviceAction] {
        guard case .exiting(let then) = state else { preconditionFailure("exited without an exitLowPower action in \(phase)") }
        statistics.selfWakes += drainedWakes
        switch then {
        case .arm(let mode, let reason):
            return beginArming(mode, reason: reason)
        case .holdAwake(let until):
            return holdAwake(until: until, now: now)
        case .closeAndDisable:
            state = .disabled
            return [.close, .log(.released)]
        case .closeAndStop:
            state = .stopped
            return [.close]
        }
    }

    public mutating func exitFailed(_ failure: CallFailure, now: MonotonicInstant) -> [DeviceAction] {
        guard case .exiting(let then) = state else { preconditionFailure("exitFailed without an exitLowPower action in \(phase)") }
        statistics.lastError = DeviceFailure(operation: .exit, failure: failure, at: now)
        switch then {
        case .closeAndStop:
            // Closing exits low power in the kernel anyway; nothing more to try on the way out.
            state = .stopped
            return [.close, .log(.exitFailed(failure, .closedInstead))]
        case .closeAndDisable:
            state = .disabled
            return [.close, .log(.exitFailed(failure, .closedInstead))]
        case .arm, .holdAwake:
            return failClosed(failure, operation: .exit) { .exitFailed($0, .closedUntilRetried) }
        }
    }

    /// The `d3cold_allowed` write before an arm failed; the arm was skipped.
    public mutating func d3coldWriteFailed(_ failure: CallFailure, now: MonotonicInstant) -> [DeviceAction] {
        guard case .arming(let arming) = state else { preconditionFailure("d3coldWriteFailed without a setD3coldAllowed action in \(phase)") }
        statistics.lastError = DeviceFailure(operation: .setD3coldAllowed, failure: failure, at: now)
        let wanted = policy.d3cold == .allow
        d3coldWritten = nil
        if failure.kind == .gone {
            state = .gone
            return [.close, .log(.deviceGone(failure.errno))]
        }
        if wanted {
            // Failing to give D3cold back is not a risk to the device: arm anyway.
            d3coldWritten = false
            return [.log(.d3coldWriteFailed(failure, .armedAnyway)), .arm(arming.mode)]
        }
        state = .failed(.setD3coldAllowed, failure)
        return [.close, .log(.d3coldWriteFailed(failure, .notArmed))]
    }

    // MARK: vmm events

    /// `vmm`: a process may have opened the device's group (inotify saw an open of the group
    /// node, the fallback scan found a VMM, or the operator said `vfio-powerctl adopt`).
    /// Looked into only where no VMM is known: an adopted device is not adopted twice.
    public mutating func vmmMayHaveOpened(now: MonotonicInstant) -> [DeviceAction] {
        guard policy.source == .vmm, policy.isManaged else { return [] }
        switch state {
        case .idle, .failed:
            // Look, and keep looking for a while if the opener is not visible yet.
            priorIdle = .idle(lookingUntil: now + Self.lookingAfterAnOpen)
            state = .adopting
            return [.cancelTimer, .adopt]
        case .notAdopted(.noDeviceFile):
            state = .adopting
            return [.cancelTimer, .adopt]
        default:
            return []
        }
    }

    /// After an open was seen, how long a holder is looked for, and how often. (The opener's
    /// file shows in /proc microseconds after the event; the margin is for a daemon starved of
    /// CPU, as in the lab's TCG guest, where one look took 3.7 s.)
    public static let lookingAfterAnOpen: Duration = .seconds(5)
    public static let lookAgainDelay: Duration = .milliseconds(100)

    /// `vmm`: a launcher or VMM sent the device's file over the control socket. Taken where the
    /// daemon holds no file of the device (nobody's, or a holder it left alone); the `adopt`
    /// that follows takes the file that was sent.
    public mutating func handoffOffered(now: MonotonicInstant) -> [DeviceAction] {
        guard policy.source == .vmm, policy.isManaged else { return [] }
        switch state {
        case .idle, .failed:
            priorIdle = .idle(lookingUntil: nil)
            state = .adopting
            return [.cancelTimer, .adopt]
        case .notAdopted:
            state = .adopting
            return [.cancelTimer, .close, .adopt]
        default:
            return []
        }
    }

    /// `adopt` found the VMM and holds a duplicate of its device file (and a wakeup eventfd).
    /// `kept`: the wakeup eventfd is the previous run's (after a restart).
    public mutating func adopted(_ holder: VMMHolder, method: AdoptionMethod, kept: KeptWakeup? = nil,
                                 now: MonotonicInstant) -> [DeviceAction] {
        guard case .adopting = state else { preconditionFailure("adopted without an adopt action in \(phase)") }
        self.holder = holder
        flap = FlapGuard()
        if let kept {
            // Wakes of the previous run's arming while the daemon was down.
            statistics.wakes += kept.wakesWhileAway
            mayStillBeArmed = kept.wakesWhileAway == 0
        }
        state = .guestActive
        return [.log(.adopted(holder, method))]
    }

    /// `adopt` found a holder that the daemon leaves alone (it watches the holder's exit).
    public mutating func adoptionRefused(_ holder: VMMHolder, _ refusal: AdoptionRefusal, now: MonotonicInstant) -> [DeviceAction] {
        guard case .adopting = state else { preconditionFailure("adoptionRefused without an adopt action in \(phase)") }
        // A VMM that is still starting is asked again quietly; the rest is said once per holder.
        let alreadySaid = self.holder == holder
        self.holder = holder
        state = .notAdopted(refusal)
        if refusal == .noDeviceFile {
            return [.startTimer(Self.deviceFileRetryDelay)]
        }
        if case .notPermitted(let errno) = refusal {
            statistics.lastError = DeviceFailure(operation: .adopt, failure: CallFailure(.refused, errno: errno), at: now)
        }
        return alreadySaid ? [] : [.log(.adoptionRefused(holder, refusal))]
    }

    /// `adopt` found no process holding the group.
    public mutating func noVMM(now: MonotonicInstant) -> [DeviceAction] {
        guard case .adopting = state else { preconditionFailure("noVMM without an adopt action in \(phase)") }
        holder = nil
        if case .idle(let until?) = priorIdle, now < until {
            state = .idle(lookingUntil: until)
            return [.startTimer(Self.lookAgainDelay)]
        }
        state = .idle(lookingUntil: nil)
        return []
    }

    /// `vmm`: the holder exited (its pidfd became readable). The duplicate is closed at once:
    /// while it is open, the next VM cannot start on the device.
    public mutating func vmmExited(now: MonotonicInstant) -> [DeviceAction] {
        release(.vmmExited, now: now)
    }

    /// `vmm`: the operator, or the launcher that handed the device file over, asks the daemon
    /// to let go of it now.
    public mutating func releaseRequested(now: MonotonicInstant) -> [DeviceAction] {
        release(.requested, now: now)
    }

    /// Whether a sample of an awake guest in D0 matters to the machine: the daemon's sampler
    /// leaves those out (the common case, every interval for every device) unless this says so.
    public var wantsEverySample: Bool { mayStillBeArmed }

    /// How long after arming the kernel has to suspend the device before the status says it
    /// keeps it awake. vfio-pci sets no autosuspend delay: a device that may suspend does so
    /// within milliseconds of the arm.
    public static let residencyBound: Duration = .seconds(2)

    /// Whether the daemon's sampler should read this device's `power/runtime_status`: armed,
    /// and not yet seen suspended (or kept awake). Once suspended, nothing is read: a wake
    /// of a one-shot arming comes as an eventfd, and a re-entrant one suspends again itself.
    public var wantsResidencySample: Bool {
        guard case .lowPower(let lowPower) = state else { return false }
        return lowPower.residency != .suspended
    }

    /// The daemon's sampler read `power/runtime_status` of an armed device.
    public mutating func residencySampled(_ sample: ResidencySample, now: MonotonicInstant) -> [DeviceAction] {
        guard case .lowPower(var lowPower) = state else { return [] }
        let before = lowPower.residency
        if sample.suspended {
            lowPower.residency = .suspended
            state = .lowPower(lowPower)
            if case .keptAwake = before { return [.log(.suspendedAtLast(afterArmedFor: now - lowPower.since))] }
            return []
        }
        switch before {
        case .unconfirmed:
            guard now - lowPower.since >= Self.residencyBound else { return [] }
            lowPower.residency = .keptAwake(sample.keptAwakeBy)
            state = .lowPower(lowPower)
            return [.log(.keptAwake(sample.keptAwakeBy))]
        case .keptAwake:
            // Said once per arming; the status follows the latest reason.
            lowPower.residency = .keptAwake(sample.keptAwakeBy)
            state = .lowPower(lowPower)
            return []
        case .suspended:
            return []
        }
    }

    /// The daemon's sampler read the power state of a device in use by its guest.
    public mutating func sampled(_ sample: GuestPowerSample, now: MonotonicInstant) -> [DeviceAction] {
        // A sample taken before the state changed (the sampler and the device's own events
        // share the queue, so only one that raced a change): nothing to decide.
        guard case .guestActive = state else { return [] }
        guard sample.vmmHoldsDevice else { return release(.vmmClosedDevice, now: now) }
        if mayStillBeArmed {
            mayStillBeArmed = false
            if sample.runtimeSuspended {
                // The previous run's arming is engaged (its eventfd has not fired): another
                // entry would resume the device first. Take it as armed.
                statistics.lowPowerSince = now
                state = .lowPower(LowPower(mode: .oneShot, since: now, quietCheckAt: nil, residency: .suspended))
                return [.log(.keptArmed)]
            }
        }
        if sample.isGuestD3 {
            return beginArming(.oneShot, reason: .guestD3)
        }
        // In D0 the guest may touch the BARs at any moment: arming would kill its VM. Suspended
        // already (armed by someone else, such as a daemon run that was killed): arming would
        // wake it. Either way, the sampler looks again later.
        return []
    }

    /// Closes the duplicate of a `vmm` device whose VMM is gone or let go of the device, and
    /// waits for the next VMM.
    private mutating func release(_ reason: ReleaseReason, now: MonotonicInstant) -> [DeviceAction] {
        guard policy.source == .vmm, let holder else { return [] }
        switch state {
        case .lowPower, .guestActive, .waitingToRearm, .backingOff, .heldAwake:
            endLowPowerPeriod(now: now)
            self.holder = nil
            state = .idle(lookingUntil: nil)
            return [.cancelTimer, .close, .log(.vmmReleased(holder, reason))]
        case .notAdopted, .failed:
            // Nothing duplicated: stop watching the holder.
            self.holder = nil
            state = .idle(lookingUntil: nil)
            return [.cancelTimer, .close]
        case .opening, .arming, .exiting, .adopting:
            preconditionFailure("vmm release while the outcome of the last action is pending in \(phase); report it first")
        case .unconfigured, .disabled, .gone, .unsupported, .stopped, .idle:
            return []
        }
    }

    /// The wakeup eventfd was read: `count` signals coalesced since the last read.
    public mutating func woke(count: UInt64, now: MonotonicInstant) -> [DeviceAction] {
        guard count > 0 else {
            // A read source can fire for a counter that `exitLowPower`'s drain already emptied.
            return []
        }
        guard case .lowPower(let lowPower) = state, lowPower.mode == .oneShot else {
            // Not a wake of an arming of ours. The kernel signals once per one-shot arming and
            // then disarms, and the daemon reads every count it gets, so a count here was
            // written before the current state began: in waitingToRearm/backingOff the device
            // is already disarmed (a stale read); in re-entrant mode nothing is registered; in
            // opening/arming/exiting the outcome report goes first (so it predates it); after
            // close, unbind resumes the device and fires once more. Counted, never acted on.
            statistics.selfWakes += count
            return []
        }
        // A wake read right after `armed` is taken as a real wake of the new arming, never
        // as a stale one: the machine only arms from disarmed states, every earlier count has
        // been read or drained (exitLowPower's drain), and the arm ioctl itself cannot signal
        // an arming that is not engaged. Guessing "stale" instead could leave a disarmed
        // device awake forever; guessing "real" costs at most one extra arm cycle.
        statistics.wakes += count
        statistics.lastWake = now
        endLowPowerPeriod(now: now)
        let inLowPowerFor = now - lowPower.since

        switch flap.wake(count: count, at: now, limits: policy.flapGuard, backoffBase: backoffBase) {
        case .calm:
            break
        case .continuing(let backoff):
            state = .backingOff(until: now + backoff, wokeAt: now)
            return [.startTimer(backoff)]   // replaces the quiet-check timer
        case .started(let wakes, let backoff):
            statistics.flapEpisodes += 1
            state = .backingOff(until: now + backoff, wokeAt: now)
            return [.log(.woke(count: count, inLowPowerFor: inLowPowerFor)),
                    .log(.flappingStarted(wakes: wakes, window: policy.flapGuard.window, backoff: backoff)),
                    .startTimer(backoff)]
        }
        if policy.rearmDelay == .zero {
            // No quiet period asked for: arm again at once, without a trip through a timer.
            return [.log(.woke(count: count, inLowPowerFor: inLowPowerFor))] + quietPeriodOver(wokeAt: now)
        }
        state = .waitingToRearm(until: now + policy.rearmDelay, wokeAt: now)
        return [.log(.woke(count: count, inLowPowerFor: inLowPowerFor)), .startTimer(policy.rearmDelay)]
    }

    public mutating func timerFired(now: MonotonicInstant) -> [DeviceAction] {
        switch state {
        case .waitingToRearm(let until, let wokeAt), .backingOff(let until, let wokeAt):
            // Early: an expiry of a timer that was replaced (the re-arm delay changed), or
            // the timer's clock a hair ahead of the one passed in. Either way the deadline
            // stands: the timer is set for what is left of it.
            guard now >= until else { return [.startTimer(until - now)] }
            return quietPeriodOver(wokeAt: wokeAt)
        case .heldAwake(let until):
            guard let until else { return [] }
            guard now >= until else { return [.startTimer(until - now)] }
            if policy.source == .vmm { return watchGuest() }
            return beginArming(armMode, reason: .operatorRequest)
        case .notAdopted(.noDeviceFile):
            state = .adopting
            return [.adopt]
        case .idle(let until?):
            guard now <= until else {
                state = .idle(lookingUntil: nil)
                return []
            }
            priorIdle = .idle(lookingUntil: until)
            state = .adopting
            return [.adopt]
        case .lowPower(var lowPower):
            guard let quietCheckAt = lowPower.quietCheckAt, now >= quietCheckAt else { return [] }
            lowPower.quietCheckAt = nil
            state = .lowPower(lowPower)
            return [endFlapping(now: now)]
        case .unconfigured, .disabled, .opening, .arming, .exiting, .failed, .gone, .unsupported, .stopped,
             .idle, .adopting, .notAdopted, .guestActive:
            // A timer that was cancelled after its expiry was already queued.
            return []
        }
    }

    /// The device was removed or unbound (the daemon saw it leave sysfs or got a request).
    public mutating func removed(now: MonotonicInstant) -> [DeviceAction] {
        switch state {
        case .lowPower(let lowPower):
            endLowPowerPeriod(now: now)
            holder = nil
            state = .gone
            return (lowPower.quietCheckAt == nil ? [] : [.cancelTimer]) + [.close, .log(.deviceGone(nil))]
        case .waitingToRearm, .backingOff, .heldAwake, .guestActive:
            holder = nil
            state = .gone
            return [.cancelTimer, .close, .log(.deviceGone(nil))]
        case .notAdopted:
            // Nothing duplicated; stop watching the holder.
            holder = nil
            state = .gone
            return [.cancelTimer, .close]
        case .failed:
            // Already closed; from gone, `returned` reopens it.
            state = .gone
            return []
        case .idle:
            // Nothing open (its look-again timer may run); from gone, `returned` takes it up.
            state = .gone
            return [.cancelTimer]
        case .unconfigured, .disabled, .gone, .unsupported, .stopped:
            // Nothing open: nothing to release (a second notice of the same removal, or a
            // device the daemon does not manage).
            return []
        case .opening, .arming, .exiting, .adopting:
            preconditionFailure("removed(now:) while the outcome of the last action is pending in \(phase); report it first")
        }
    }

    /// The device is present again (the daemon's rescan or reload found it).
    public mutating func returned(now: MonotonicInstant) -> [DeviceAction] {
        switch state {
        case .gone, .failed:
            d3coldWritten = nil   // a re-added device starts with the kernel's default
            guard policy.isManaged else {
                state = .disabled
                return [.log(.deviceBack)]
            }
            return [.log(.deviceBack)] + startManaging()
        default:
            // Present all along, or a repeated notice: nothing to do.
            return []
        }
    }

    /// The configuration was reloaded. An identical policy produces no action in any state:
    /// the daemon relies on it to leave unchanged devices untouched (any ioctl wakes them).
    public mutating func policyChanged(_ newPolicy: DevicePolicy, now: MonotonicInstant) -> [DeviceAction] {
        guard newPolicy != policy else { return [] }
        // The daemon manages a device under a new source with a new machine (how it holds the
        // device changes completely).
        precondition(newPolicy.source == policy.source, "policyChanged across device sources; make a new DeviceStateMachine")
        let old = policy
        policy = newPolicy
        switch state {
        case .unconfigured, .gone, .unsupported, .stopped:
            // Kept for later (`configured`, `returned`).
            return []
        case .disabled:
            guard newPolicy.isManaged else { return [] }
            return startManaging()
        case .failed:
            guard newPolicy.affectsDevice(comparedTo: old) else { return [] }
            guard newPolicy.isManaged else {
                state = .disabled
                return []
            }
            return startManaging()
        case .opening, .arming, .exiting, .adopting:
            preconditionFailure("policyChanged while the outcome of the last action is pending in \(phase); report it first")
        case .idle:
            guard !newPolicy.isManaged else { return [] }
            state = .disabled
            return [.cancelTimer]
        case .notAdopted:
            guard !newPolicy.isManaged else { return [] }
            holder = nil
            state = .disabled
            return [.cancelTimer, .close]
        case .guestActive:
            guard !newPolicy.isManaged else { return [] }
            holder = nil
            state = .disabled
            return [.cancelTimer, .close, .log(.released)]
        case .lowPower(let lowPower) where policy.source == .vmm:
            // The VMM holds the device: closing the duplicate leaves it asleep, and the guest's
            // next D0 write wakes it. Other changes apply from the next decision on.
            guard !newPolicy.isManaged else { return [] }
            endLowPowerPeriod(now: now)
            holder = nil
            state = .disabled
            return (lowPower.quietCheckAt == nil ? [] : [.cancelTimer]) + [.close, .log(.released)]
        case .lowPower(let lowPower):
            let cancel: [DeviceAction] = lowPower.quietCheckAt == nil ? [] : [.cancelTimer]
            if !newPolicy.isManaged {
                endLowPowerPeriod(now: now)
                state = .exiting(then: .closeAndDisable)
                return cancel + [.exitLowPower]
            }
            if armMode != lowPower.mode || newPolicy.d3cold != old.d3cold {
                // Writing d3cold_allowed resumes the device, so a d3cold change needs the same
                // exit/arm cycle as a mode change.
                endLowPowerPeriod(now: now)
                state = .exiting(then: .arm(armMode, .policyChange))
                return cancel + [.exitLowPower]
            }
            // Rearm delay, flap numbers, label, on_stop: used from the next decision on.
            return []
        case .waitingToRearm(let until, let wokeAt), .backingOff(let until, let wokeAt):
            let isBackingOff = if case .backingOff = state { true } else { false }
            if !newPolicy.isManaged {
                holder = nil
                state = .disabled
                return [.cancelTimer, .close, .log(.released)]
            }
            if armMode == .reentrant {
                // Disarmed and awake: arm in the new mode right away, no delay applies.
                var actions: [DeviceAction] = [.cancelTimer]
                if flap.isFlapping { actions.append(endFlapping(now: now)) }
                return actions + beginArming(.reentrant, reason: .policyChange)
            }
            if !isBackingOff && newPolicy.rearmDelay != old.rearmDelay {
                let newUntil = wokeAt + newPolicy.rearmDelay
                if newUntil <= now {
                    return [.cancelTimer] + quietPeriodOver(wokeAt: wokeAt)
                }
                state = .waitingToRearm(until: newUntil, wokeAt: wokeAt)
                return [.startTimer(newUntil - now)]
            }
            // d3cold is written right before the next arm; other fields need nothing now.
            _ = until
            return []
        case .heldAwake:
            if !newPolicy.isManaged {
                holder = nil
                state = .disabled
                return [.cancelTimer, .close, .log(.released)]
            }
            // The operator's hold stands; the new policy applies from the next arm.
            return []
        }
    }

    /// The daemon is stopping.
    public mutating func stopRequested(now: MonotonicInstant) -> [DeviceAction] {
        switch state {
        case .lowPower(let lowPower):
            endLowPowerPeriod(now: now)
            let cancel: [DeviceAction] = lowPower.quietCheckAt == nil ? [] : [.cancelTimer]
            switch policy.onStop {
            case .exit:
                state = .exiting(then: .closeAndStop)
                return cancel + [.exitLowPower]
            case .keep:
                // `vmm`: the VMM's own file keeps the device in low power until the guest's
                // next D0 write. `own`: the kernel exits low power itself when the fd closes.
                state = .stopped
                return cancel + [.close]
            }
        case .waitingToRearm, .backingOff, .heldAwake, .guestActive, .notAdopted:
            // Disarmed and awake already (or nothing duplicated): no exit needed.
            state = .stopped
            return [.cancelTimer, .close]
        case .idle:
            state = .stopped
            return [.cancelTimer]
        case .unconfigured, .disabled, .failed, .gone, .unsupported, .stopped:
            state = .stopped
            return []
        case .opening, .arming, .exiting, .adopting:
            preconditionFailure("stopRequested while the outcome of the last action is pending in \(phase); report it first")
        }
    }

    /// The operator asked to wake the device now and keep it out of low power until `until`,
    /// or, with no deadline, until `armRequested`. Not open or not managed: nothing to wake.
    public mutating func wakeRequested(until: MonotonicInstant?, now: MonotonicInstant) -> [DeviceAction] {
        switch state {
        case .lowPower(let lowPower):
            endLowPowerPeriod(now: now)
            state = .exiting(then: .holdAwake(until: until))
            return (lowPower.quietCheckAt == nil ? [] : [.cancelTimer]) + [.exitLowPower]
        case .waitingToRearm, .backingOff, .heldAwake, .guestActive:
            // Already awake and disarmed: only the deadline changes.
            return [.cancelTimer] + holdAwake(until: until, now: now)
        case .unconfigured, .disabled, .failed, .gone, .unsupported, .stopped, .idle, .notAdopted:
            return []
        case .opening, .arming, .exiting, .adopting:
            preconditionFailure("wakeRequested while the outcome of the last action is pending in \(phase); report it first")
        }
    }

    /// The operator asked to arm the device now: a device held awake, or waiting to re-arm,
    /// is armed at once; a failed or missing one is opened again. Already in low power, or
    /// not managed: nothing to do.
    ///
    /// `vmm` devices are never armed on request while their guest may use them: the request
    /// ends a hold or a wait and samples at once, and the device is armed only if the guest
    /// has it in D3hot. An idle `vmm` device is looked at for a VMM (`vfio-powerctl adopt`).
    public mutating func armRequested(now: MonotonicInstant) -> [DeviceAction] {
        switch state {
        case .heldAwake, .waitingToRearm, .backingOff, .guestActive:
            var actions: [DeviceAction] = [.cancelTimer]
            if flap.isFlapping { actions.append(endFlapping(now: now)) }
            if policy.source == .vmm { return actions + watchGuest() }
            return actions + beginArming(armMode, reason: .operatorRequest)
        case .failed, .gone:
            guard policy.isManaged else { return [] }
            d3coldWritten = nil
            return startManaging()
        case .idle, .notAdopted:
            return vmmMayHaveOpened(now: now)
        case .unconfigured, .disabled, .lowPower, .unsupported, .stopped:
            return []
        case .opening, .arming, .exiting, .adopting:
            preconditionFailure("armRequested while the outcome of the last action is pending in \(phase); report it first")
        }
    }

    // MARK: Helpers

    private var armMode: ArmMode { policy.mode == .reentrant ? .reentrant : .oneShot }

    /// After a wake's quiet period: `own` arms again; `vmm` waits for the guest's next D3hot.
    private mutating func quietPeriodOver(wokeAt: MonotonicInstant) -> [DeviceAction] {
        switch policy.source {
        case .own: beginArming(.oneShot, reason: .rearm(wokeAt: wokeAt))
        case .vmm: watchGuest()
        }
    }

    /// `vmm`: back to the sampler, which looks for the guest's next D3hot.
    private mutating func watchGuest() -> [DeviceAction] {
        state = .guestActive
        return []
    }

    /// Flapping backs off from the re-arm delay, but never from less than a second: with
    /// `rearm_delay = "0s"` doubling nothing would leave the flap guard without teeth.
    static let minimumBackoffBase: Duration = .seconds(1)
    private var backoffBase: Duration { max(policy.rearmDelay, Self.minimumBackoffBase) }

    private mutating func holdAwake(until: MonotonicInstant?, now: MonotonicInstant) -> [DeviceAction] {
        state = .heldAwake(until: until)
        guard let until else { return [.log(.heldAwake(for: nil))] }
        return [.startTimer(max(.zero, until - now)), .log(.heldAwake(for: max(.zero, until - now)))]
    }

    private mutating func beginArming(_ mode: ArmMode, reason: ArmReason) -> [DeviceAction] {
        state = .arming(Arming(mode: mode, reason: reason))
        var actions: [DeviceAction] = []
        switch policy.d3cold {
        case .forbid where d3coldWritten != false:
            d3coldWritten = false
            actions.append(.setD3coldAllowed(false))
        case .allow where d3coldWritten == false:
            d3coldWritten = true
            actions.append(.setD3coldAllowed(true))
        default:
            break
        }
        return actions + [.arm(mode)]
    }

    private mutating func failClosed(_ failure: CallFailure, operation: DeviceFailure.Operation,
                                     _ event: (CallFailure) -> PolicyEvent) -> [DeviceAction] {
        if failure.kind == .unsupported {
            state = .unsupported
            return [.close, .log(.unsupported(failure.errno))]
        }
        // `.close` also stops watching a `vmm` device's holder.
        holder = nil
        if failure.kind == .gone {
            state = .gone
            return [.close, .log(.deviceGone(failure.errno))]
        }
        state = .failed(operation, failure)
        return [.close, .log(event(failure))]
    }

    private mutating func endFlapping(now: MonotonicInstant) -> DeviceAction {
        let ended = flap.end(at: now)
        return .log(.flappingEnded(suppressedWakes: ended.suppressedWakes, lasted: ended.lasted))
    }

    private mutating func endLowPowerPeriod(now: MonotonicInstant) {
        if let since = statistics.lowPowerSince {
            statistics.timeInLowPowerCompleted += max(.zero, now - since)
            statistics.lowPowerSince = nil
        }
    }
}

/// A read-only summary of where a device stands.
public enum DevicePhase: Hashable, Sendable {
    case unconfigured
    case disabled
    case opening
    case arming
    case lowPower(ArmMode, since: MonotonicInstant)
    /// Armed, but the kernel has not suspended the device (see `KeptAwakeReason`).
    case keptAwake(ArmMode, KeptAwakeReason)
    case waitingToRearm(until: MonotonicInstant)
    case backingOff(until: MonotonicInstant)
    case heldAwake(until: MonotonicInstant?)
    case exiting
    /// A call failed (see `AfterFailure` in the event that said so); `statistics.lastError`
    /// holds the same failure with its time.
    case failed(DeviceFailure.Operation, CallFailure)
    case gone
    case unsupported
    case stopped
    /// `vmm`: no VMM holds the device.
    case idle
    case adopting
    /// `vmm`: a process holds the device that the daemon leaves alone.
    case notAdopted(VMMHolder?, AdoptionRefusal)
    /// `vmm`: adopted and awake: the guest uses it (D0); its power state is sampled.
    case guestActive

    /// Whether the device is believed to be in low power (armed and not woken).
    public var isLowPower: Bool { if case .lowPower = self { true } else { false } }
}

/// Counters for one device, kept by its state machine.
public struct DeviceStatistics: Hashable, Sendable {
    /// Successful arms.
    public internal(set) var arms: UInt64 = 0
    /// Device wakes: the sum of the coalesced eventfd counts read while armed one-shot.
    public internal(set) var wakes: UInt64 = 0
    /// Eventfd counts the daemon caused (EXIT on a suspended device) or that were stale;
    /// never counted as wakes nor toward flapping.
    public internal(set) var selfWakes: UInt64 = 0
    public internal(set) var flapEpisodes: UInt64 = 0
    /// Time in low power over the periods that have ended (armed → wake, exit, removal, stop).
    public internal(set) var timeInLowPowerCompleted: Duration = .zero
    /// When the current low-power period began, if one is running.
    public internal(set) var lowPowerSince: MonotonicInstant?
    public internal(set) var lastWake: MonotonicInstant?
    public internal(set) var lastError: DeviceFailure?

    public init() {}

    /// Total time in low power, counting the running period up to `now`.
    public func timeInLowPower(asOf now: MonotonicInstant) -> Duration {
        guard let since = lowPowerSince else { return timeInLowPowerCompleted }
        return timeInLowPowerCompleted + max(.zero, now - since)
    }
}

/// The last thing that went wrong with a device.
public struct DeviceFailure: Hashable, Sendable {
    public enum Operation: Hashable, Sendable { case open, arm, exit, setD3coldAllowed, adopt }
    public var operation: Operation
    public var failure: CallFailure
    public var at: MonotonicInstant

    public init(operation: Operation, failure: CallFailure, at: MonotonicInstant) {
        self.operation = operation
        self.failure = failure
        self.at = at
    }
}
