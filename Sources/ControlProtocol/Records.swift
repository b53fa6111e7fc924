/// io.vfiopowerd.Manager's records, as the daemon writes them and vfio-powerctl reads them.
///
/// Sources/ControlProtocol/io.vfiopowerd.Manager.varlink is the protocol; these types are
/// its Swift form, and ControlProtocolTests holds each field and type, and each enum's
/// values, against that file both ways. Add a field there and here, or the test says which.

/// One managed device (the interface's `Device` type).
public struct DeviceRecord: Codable, Equatable, Sendable {
    /// How the daemon holds a device (PRODUCT.md "device source").
    public enum Source: String, Codable, CaseIterable, Sendable {
        /// It adopts the device file of the VM that holds the device.
        case vmm
        /// It opens the device itself.
        case own
    }

    /// The policy's mode, as the configuration spells it.
    public enum Mode: String, Codable, CaseIterable, Sendable {
        case oneshot, reentrant, off
    }

    /// What a device is doing: the daemon's state for it, one value on the wire, and the
    /// words an operator reads for it, in one table.
    public enum State: String, Codable, CaseIterable, Sendable {
        case unconfigured
        case disabled
        case opening
        case arming
        case lowPower = "low_power"
        /// Armed, yet the kernel has not suspended it (the journal says why).
        case keptAwake = "kept_awake"
        case waitingToRearm = "waiting_to_rearm"
        case backingOff = "backing_off"
        case heldAwake = "held_awake"
        case exiting
        case failed
        case gone
        case unsupported
        case stopped
        /// vmm: no VM holds the device.
        case idle
        case adopting
        /// vmm: held by a process the daemon leaves alone.
        case notAdopted = "not_adopted"
        /// vmm: adopted, and the guest has the device in D0.
        case guestActive = "guest_active"
        /// A call on the device has not returned (see `stuckCall`).
        case stuck

        /// How the status line, vfio-powerctl and the journal name the state.
        public var words: String {
            switch self {
            case .unconfigured: "unconfigured"
            case .disabled: "disabled"
            case .opening: "opening"
            case .arming: "arming"
            case .lowPower: "low power"
            case .keptAwake: "armed, but the kernel keeps it awake"
            case .waitingToRearm: "waiting to re-arm"
            case .backingOff: "backing off"
            case .heldAwake: "held awake"
            case .exiting: "exiting low power"
            case .failed: "failed"
            case .gone: "gone"
            case .unsupported: "unsupported"
            case .stopped: "stopped"
            case .idle: "idle"
            case .adopting: "adopting"
            case .notAdopted: "not adopted"
            case .guestActive: "in use by the guest"
            case .stuck: "stuck"
            }
        }
    }

    public var address: String
    public var name: String?
    public var driver: String?
    public var source: Source
    /// vmm: the process holding the device (adopted from, or left alone).
    public var holderPid: Int64?
    public var holderExecutable: String?
    /// sysfs as the kernel had it: power_state, power/runtime_status, runtime_suspended_time.
    public var powerState: String?
    public var runtimeStatus: String?
    public var runtimeSuspendedMs: Int64?
    public var mode: Mode
    public var state: State
    /// state == .stuck: the call that has not returned, and for how long.
    public var stuckCall: String?
    public var stuckUsec: Int64?
    public var wakes: Int64
    public var selfWakes: Int64
    public var arms: Int64
    public var flapping: Bool
    public var flapEpisodes: Int64
    public var lowPowerUsec: Int64
    public var managedUsec: Int64
    public var lastWakeRealtimeUsec: Int64?
    public var nextArmRealtimeUsec: Int64?
    public var lastError: String?
    public var configuredAt: String

    public init(address: String, name: String? = nil, driver: String? = "vfio-pci", source: Source = .own,
                holderPid: Int64? = nil, holderExecutable: String? = nil,
                powerState: String? = nil, runtimeStatus: String? = nil, runtimeSuspendedMs: Int64? = nil,
                mode: Mode = .oneshot, state: State, stuckCall: String? = nil, stuckUsec: Int64? = nil,
                wakes: Int64 = 0, selfWakes: Int64 = 0, arms: Int64 = 1,
                flapping: Bool = false, flapEpisodes: Int64 = 0, lowPowerUsec: Int64 = 0, managedUsec: Int64 = 0,
                lastWakeRealtimeUsec: Int64? = nil, nextArmRealtimeUsec: Int64? = nil, lastError: String? = nil,
                configuredAt: String = "") {
        self.address = address
        self.name = name
        self.driver = driver
        self.source = source
        self.holderPid = holderPid
        self.holderExecutable = holderExecutable
        self.powerState = powerState
        self.runtimeStatus = runtimeStatus
        self.runtimeSuspendedMs = runtimeSuspendedMs
        self.mode = mode
        self.state = state
        self.stuckCall = stuckCall
        self.stuckUsec = stuckUsec
        self.wakes = wakes
        self.selfWakes = selfWakes
        self.arms = arms
        self.flapping = flapping
        self.flapEpisodes = flapEpisodes
        self.lowPowerUsec = lowPowerUsec
        self.managedUsec = managedUsec
        self.lastWakeRealtimeUsec = lastWakeRealtimeUsec
        self.nextArmRealtimeUsec = nextArmRealtimeUsec
        self.lastError = lastError
        self.configuredAt = configuredAt
    }

    /// The share of its managed time the device spent in low power, 0...1.
    public var lowPowerShare: Double? {
        managedUsec > 0 ? min(1, Double(lowPowerUsec) / Double(managedUsec)) : nil
    }
}

/// The daemon as a whole (the interface's `Statistics` type).
public struct StatisticsRecord: Codable, Equatable, Sendable {
    public var devices: Int64
    public var lowPower: Int64
    public var awake: Int64
    public var missing: Int64
    public var failing: Int64
    public var wakes: Int64
    public var selfWakes: Int64
    public var arms: Int64
    public var flapping: Int64
    /// The STATUS= line systemd shows.
    public var status: String
    /// Seconds since the daemon became ready.
    public var uptimeSeconds: Int64
    /// Configuration reloads since the start, applied or rejected.
    public var reloads: Int64
    /// Whether the last reload was applied; nil before the first.
    public var lastReloadSucceeded: Bool?
    /// CLOCK_REALTIME microseconds when the last reload finished; nil before the first.
    public var lastReloadRealtimeUsec: Int64?

    public init(devices: Int64, lowPower: Int64, awake: Int64, missing: Int64, failing: Int64, wakes: Int64,
                selfWakes: Int64, arms: Int64, flapping: Int64, status: String, uptimeSeconds: Int64,
                reloads: Int64 = 0, lastReloadSucceeded: Bool? = nil, lastReloadRealtimeUsec: Int64? = nil) {
        self.devices = devices
        self.lowPower = lowPower
        self.awake = awake
        self.missing = missing
        self.failing = failing
        self.wakes = wakes
        self.selfWakes = selfWakes
        self.arms = arms
        self.flapping = flapping
        self.status = status
        self.uptimeSeconds = uptimeSeconds
        self.reloads = reloads
        self.lastReloadSucceeded = lastReloadSucceeded
        self.lastReloadRealtimeUsec = lastReloadRealtimeUsec
    }
}
