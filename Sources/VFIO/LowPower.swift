import CVFIO

/// The three low-power device features of Linux 6.1 (VFIO_DEVICE_FEATURE_LOW_POWER_*).
public enum LowPowerFeature: CaseIterable, Sendable, CustomStringConvertible {
    /// LOW_POWER_ENTRY: re-entrant. The kernel lets the device suspend again after every
    /// access, with no notification, until EXIT.
    case reentrantEntry
    /// LOW_POWER_ENTRY_WITH_WAKEUP: one-shot. The first resume signals the eventfd and
    /// disengages; the device stays awake until the next entry.
    case oneShotEntry
    /// LOW_POWER_EXIT: disengage. Always succeeds; wakes a suspended device.
    case exit

    /// The feature index from <linux/vfio.h>.
    public var index: UInt32 {
        switch self {
        case .reentrantEntry: CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
        case .oneShotEntry: CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP
        case .exit: CVFIO_DEVICE_FEATURE_LOW_POWER_EXIT
        }
    }

    /// The smallest argsz the kernel accepts: the header, plus the wakeup payload for one-shot.
    public var minimumArgumentSize: UInt32 {
        switch self {
        case .oneShotEntry: CVFIO_DEVICE_FEATURE_HEADER_SIZE + CVFIO_LOW_POWER_WAKEUP_PAYLOAD_SIZE
        case .reentrantEntry, .exit: CVFIO_DEVICE_FEATURE_HEADER_SIZE
        }
    }

    /// The uAPI name, as the kernel header spells it.
    public var description: String {
        switch self {
        case .reentrantEntry: "LOW_POWER_ENTRY"
        case .oneShotEntry: "LOW_POWER_ENTRY_WITH_WAKEUP"
        case .exit: "LOW_POWER_EXIT"
        }
    }
}

/// How to enter low power.
public enum LowPowerEntry: Sendable {
    /// LOW_POWER_ENTRY_WITH_WAKEUP: `wakeup` is signalled (count 1) when the device wakes.
    case oneShot(wakeup: EventFD)
    /// LOW_POWER_ENTRY: the device suspends again by itself after each access.
    case reentrant

    public var feature: LowPowerFeature {
        switch self {
        case .oneShot: .oneShotEntry
        case .reentrant: .reentrantEntry
        }
    }
}

/// What the kernel answered to PROBE|SET for each low-power feature, asked once at open,
/// before anything could be armed (the probe is an ioctl, and every ioctl wakes the device).
public struct LowPowerSupport: Equatable, Sendable, CustomStringConvertible {
    /// Per feature: nil when supported, else the errno of the probe (ENOTTY: absent).
    public let refusals: [LowPowerFeature: Errno]

    public init(refusals: [LowPowerFeature: Errno]) { self.refusals = refusals }

    public func supports(_ feature: LowPowerFeature) -> Bool { refusals[feature] == nil }

    /// All three features are there: the device can be managed.
    public var isComplete: Bool { LowPowerFeature.allCases.allSatisfy(supports) }

    public var description: String {
        LowPowerFeature.allCases.map { feature in
            "\(feature): " + (refusals[feature].map { "no (\($0.symbolicName))" } ?? "yes")
        }.joined(separator: ", ")
    }
}

import SystemPackage

/// What this handle last asked of the kernel and has not been told has ended.
public enum Engagement: Equatable, Sendable, CustomStringConvertible {
    case none
    case oneShot
    case reentrant

    public var description: String {
        switch self {
        case .none: "none"
        case .oneShot: "oneshot"
        case .reentrant: "reentrant"
        }
    }
}
