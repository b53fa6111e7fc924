/// What io.vfiopowerd.Manager says about one device (its `Device` type), as a client reads it.
public struct DeviceRecord: Codable, Equatable, Sendable {
    public var address: String
    public var name: String?
    public var driver: String?
    public var source: String
    /// vmm: the process holding the device (adopted from, or left alone).
    public var holderPid: Int64?
    public var holderExecutable: String?
    /// sysfs as the kernel had it: power_state, power/runtime_status, runtime_suspended_time.
    public var powerState: String?
    public var runtimeStatus: String?
    public var runtimeSuspendedMs: Int64?
    public var mode: String
    public var state: String
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

    public init(address: String, name: String? = nil, driver: String? = "vfio-pci", source: String = "own",
                mode: String = "oneshot", state: String, wakes: Int64 = 0, selfWakes: Int64 = 0, arms: Int64 = 1,
                flapping: Bool = false, flapEpisodes: Int64 = 0, lowPowerUsec: Int64 = 0, managedUsec: Int64 = 0,
                lastWakeRealtimeUsec: Int64? = nil, nextArmRealtimeUsec: Int64? = nil, lastError: String? = nil,
                configuredAt: String = "") {
        self.address = address
        self.name = name
        self.driver = driver
        self.source = source
        self.mode = mode
        self.state = state
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

/// The daemon as a whole (the `Statistics` type).
public struct StatisticsRecord: Codable, Equatable, Sendable {
    public var devices: Int
    public var lowPower: Int
    public var awake: Int
    public var missing: Int
    public var failing: Int
    public var wakes: Int64
    public var selfWakes: Int64
    public var arms: Int64
    public var flapping: Int
    public var status: String
    public var uptimeSeconds: Int64
}
