/// Whether the kernel really suspended an armed device. Arming only allows runtime suspend:
/// the PM core can still keep the device awake (power/control=on, an active child), and then
/// "low power" would be the daemon's word, not the kernel's. The daemon confirms each arming
/// with reads of `power/runtime_status` that never wake the device.

/// Why the kernel keeps an armed device awake, as far as sysfs can tell.
public enum KeptAwakeReason: Hashable, Sendable {
    /// `power/control` is `on`: runtime PM is forbidden for the device.
    case runtimePMForbidden
    /// Devices below it are active (`power/runtime_active_kids`).
    case activeChildren(Int)
    /// sysfs shows no reason (a consumer link, a driver's own reference, ...).
    case unknown
}

/// One look at an armed device's runtime PM.
public struct ResidencySample: Hashable, Sendable {
    /// `power/runtime_status` is `suspended`.
    public var suspended: Bool
    /// Why it is not, when it is not.
    public var keptAwakeBy: KeptAwakeReason

    public init(suspended: Bool, keptAwakeBy: KeptAwakeReason = .unknown) {
        self.suspended = suspended
        self.keptAwakeBy = keptAwakeBy
    }
}

/// What the machine knows of the current arming's effect.
enum Residency: Hashable, Sendable {
    /// Armed; no read has shown it suspended yet.
    case unconfirmed
    case suspended
    /// Still awake `DeviceStateMachine.residencyBound` after arming.
    case keptAwake(KeptAwakeReason)
}
