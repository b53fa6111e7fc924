import SystemPackage

/// The low-power entry the daemon asks the kernel for.
public enum ArmMode: String, Hashable, Sendable {
    /// VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, with the device's wakeup eventfd.
    case oneShot = "oneshot"
    /// VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, no eventfd.
    case reentrant = "reentrant"
}

/// What the state machine asks the daemon to do, in order. See `DeviceStateMachine` for the
/// protocol (which actions report an outcome back, and what happens when one fails).
public enum DeviceAction: Hashable, Sendable {
    /// Open the device (group or cdev path), create its wakeup eventfd if there is none, and
    /// probe the low-power feature once (PROBE|SET), before anything is armed.
    /// Outcome: `opened` or `openFailed(failure)` (a probe that finds no feature is an
    /// `unsupported` failure).
    case open
    /// Write `d3cold_allowed`. Always emitted right before an `arm` in the same list, because
    /// the write resumes the device. Outcome: nothing on success; on failure skip the rest of
    /// the list and report `d3coldWriteFailed(failure)`.
    case setD3coldAllowed(Bool)
    /// Arm. Outcome: `armed` or `armFailed(failure)`.
    case arm(ArmMode)
    /// VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, then a non-blocking read of the wakeup eventfd.
    /// Outcome: `exited(drainedWakes:)` with the count read (0 when there was nothing), or
    /// `exitFailed(failure)`. Draining right after the EXIT is what lets the core tell the wake
    /// EXIT itself causes (on a suspended one-shot device) from the device's own wakes.
    case exitLowPower
    /// `vmm` devices: find the process that holds the device's group and, if it may be
    /// adopted, duplicate its device file (pidfd_getfd) and create the wakeup eventfd; watch
    /// the holder's pidfd either way. Never opens the device and makes no ioctl.
    /// Outcome: `adopted(_:method:)`, `adoptionRefused(_:_:)` or `noVMM`.
    case adopt
    /// (Re)schedule the device's one timer to fire once after the duration; a running timer
    /// is replaced. Outcome: `timerFired` when it expires.
    case startTimer(Duration)
    /// Stop the device's timer if it runs. No outcome.
    case cancelTimer
    /// Close the device fd (the kernel then exits low power, resets the device and lets the
    /// unbind of a removed device finish). For a `vmm` device: close the duplicate and stop
    /// watching the holder; the VMM's own file keeps the device (and its low power) as it is.
    /// Never fails; no outcome.
    case close
    /// Tell the operator. The daemon maps these to journal messages; the core never logs.
    case log(PolicyEvent)
}

/// What the machine did after a call on the device failed: the second half of the story
/// the daemon tells about the failure.
public enum AfterFailure: Hashable, Sendable {
    /// Closed (for `vmm`, the daemon's copy released); retried when the device returns or a
    /// VMM opens it again, on reload, or when its policy changes.
    case closedUntilRetried
    /// Arm refused with EINVAL again after exiting low power: given up on until the device
    /// returns or its policy changes.
    case gaveUpAfterExit
    /// EXIT failed on the way out: the device is closed instead (the kernel exits low power
    /// on close).
    case closedInstead
    /// d3cold_allowed could not be set back to 1: armed anyway (not a risk to the device).
    case armedAnyway
    /// D3cold could not be forbidden: not armed, since the policy says the device may not
    /// resume from D3cold.
    case notArmed
}

/// Something worth telling the operator, as a value; the daemon decides the words, priority
/// and MESSAGE_ID.
public enum PolicyEvent: Hashable, Sendable {
    /// Armed for the first time since the device was opened (or after a policy change or the
    /// recovery from "already engaged").
    case armed(ArmMode)
    /// Armed, yet still awake `DeviceStateMachine.residencyBound` later: the kernel keeps it
    /// awake, for this reason. Said once per arming.
    case keptAwake(KeptAwakeReason)
    /// A call on the device (open, arm, exit, a d3cold_allowed write) has not returned for
    /// this long: the device may be hung. Other devices are not held up by it.
    case stuck(call: String, for: Duration)
    /// The call returned after all.
    case unstuck(call: String, after: Duration)
    /// A device the kernel kept awake after arming has suspended after all.
    case suspendedAtLast(afterArmedFor: Duration)
    /// The device woke (one-shot): `count` coalesced eventfd signals, after this long in low power.
    case woke(count: UInt64, inLowPowerFor: Duration)
    /// Armed again after a wake, having been quiet this long.
    case rearmed(ArmMode, quietFor: Duration)
    /// More than `wakes` allowed in `window`: the next re-arm waits `backoff` (doubling per
    /// further wake up to the cap). Wakes are not logged one by one until it ends.
    case flappingStarted(wakes: Int, window: Duration, backoff: Duration)
    /// The device stayed in low power for a whole window: flapping is over.
    case flappingEnded(suppressedWakes: UInt64, lasted: Duration)
    /// Arming said EINVAL although the daemon had not armed: someone (a previous daemon run,
    /// the other holder of a shared file) left it engaged. The daemon exits low power and arms once more.
    case alreadyEngaged(ArmMode)
    case armFailed(CallFailure, AfterFailure)
    /// Opening failed; retried when the device returns, the group's holder exits (EBUSY),
    /// on reload, or when its policy changes.
    case openFailed(CallFailure)
    case exitFailed(CallFailure, AfterFailure)
    case d3coldWriteFailed(CallFailure, AfterFailure)
    /// The kernel has no low-power feature for this device: closed, never retried. `errno`
    /// is what the kernel answered, if a call asked it.
    case unsupported(Errno?)
    /// The device was removed, unbound or broke (ENODEV/EIO); its fd is closed. `errno` is nil
    /// when no call said so (the daemon saw it unbound or removed itself).
    case deviceGone(Errno?)
    /// A gone or failed device is present again and is being opened.
    case deviceBack
    /// The process that held the device's group (EBUSY) exited; the device is being opened.
    case busyHolderExited
    /// Policy changed so that the device is no longer managed; it is left awake and closed.
    case released
    /// The operator woke the device; it is kept out of low power for `for` (nil: until the
    /// operator arms it again).
    case heldAwake(for: Duration?)
    /// `vmm`: the daemon holds a duplicate of the VMM's device file now.
    case adopted(VMMHolder, AdoptionMethod)
    /// `vmm`: a process holds the device, and the daemon leaves it alone (until it exits).
    case adoptionRefused(VMMHolder, AdoptionRefusal)
    /// `vmm`: the duplicate was closed, so the next VM can start on the device.
    case vmmReleased(VMMHolder, ReleaseReason)
    /// `vmm`: armed (one-shot) because the guest has put the device into D3hot.
    case armedInGuestD3
    /// `vmm`: still armed from the daemon's previous run (its wakeup eventfd came back from
    /// systemd's fd store): taken as armed without an ioctl, which would have woken it.
    case keptArmed
}
