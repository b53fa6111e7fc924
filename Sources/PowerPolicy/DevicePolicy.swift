/// How one device is managed. Every field has a safe default (`DevicePolicy()`), which is also
/// what the configuration's built-in defaults are; vfio-powerd.conf(5) documents each one.
public struct DevicePolicy: Equatable, Hashable, Sendable {
    /// A human label for logs and status ("gpu0", "lab NIC"). Never changes behaviour: a
    /// policy change that only renames a device produces no action at all.
    public var name: String?
    /// `false` keeps the entry in the configuration (and its device claimed, so no match rule
    /// picks it up) without touching the device. Differs from `mode = off` only in intent:
    /// `enabled = false` is "temporarily out of service", `off` is "never power-manage this".
    public var enabled: Bool
    /// Where the daemon gets the device's fd from (PRODUCT.md, "device source").
    public var source: Source
    public var mode: Mode
    public var trigger: Trigger
    /// How long a one-shot device must stay quiet (awake, untouched by us) after a wake
    /// before it is armed again.
    public var rearmDelay: Duration
    public var flapGuard: FlapGuard
    public var d3cold: D3cold
    public var onStop: OnStop

    /// `trigger` and `onStop` default to what `source` calls for (`Source.defaultTrigger`,
    /// `Source.defaultOnStop`).
    public init(name: String? = nil, enabled: Bool = true, source: Source = .vmm, mode: Mode = .oneShot,
                trigger: Trigger? = nil, rearmDelay: Duration = .seconds(30),
                flapGuard: FlapGuard = FlapGuard(), d3cold: D3cold = .allow, onStop: OnStop? = nil) {
        self.name = name
        self.enabled = enabled
        self.source = source
        self.mode = mode
        self.trigger = trigger ?? source.defaultTrigger
        self.rearmDelay = rearmDelay
        self.flapGuard = flapGuard
        self.d3cold = d3cold
        self.onStop = onStop ?? source.defaultOnStop
    }

    /// How the daemon gets hold of the device.
    public enum Source: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
        /// The device belongs to VMs. The daemon never opens it: it adopts the open file of the
        /// VMM that holds it (pidfd_getfd(2)) and releases it the moment the VMM exits, so the
        /// next VM can start.
        case vmm = "vmm"
        /// The daemon opens the device itself (the group path). While it holds the device no
        /// VM can use it: for devices the host keeps for itself.
        case own = "own"
        public var description: String { rawValue }

        /// `vmm` devices arm only while their guest has them in D3hot; `own` devices at once.
        public var defaultTrigger: Trigger { self == .vmm ? .guestD3 : .immediate }
        /// A `vmm` device is left as its guest put it (asleep stays asleep: the guest's next D0
        /// write wakes it); an `own` device is handed back awake.
        public var defaultOnStop: OnStop { self == .vmm ? .keep : .exit }
    }

    /// Which low-power entry the daemon asks for.
    public enum Mode: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
        /// LOW_POWER_ENTRY_WITH_WAKEUP: the first access wakes the device, the eventfd fires,
        /// and the device stays awake until armed again (after the re-arm delay).
        case oneShot = "oneshot"
        /// LOW_POWER_ENTRY: the kernel lets the device sleep again after every access, with no
        /// notification; armed once, engaged until exit. Wakes cannot be counted.
        case reentrant = "reentrant"
        /// Not managed: never opened.
        case off = "off"
        public var description: String { rawValue }
    }

    /// What makes the daemon arm.
    public enum Trigger: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
        /// `own` devices: arm when managed, and after each wake once the re-arm delay has
        /// passed quietly.
        case immediate = "immediate"
        /// `vmm` devices (the only trigger they allow): arm while the guest has put the device
        /// into D3hot (sysfs `power_state`, sampled while the device is awake). In D3hot the
        /// guest cannot reach the BARs anyway, so arming adds no risk it did not take itself;
        /// arming a device the guest uses (D0) would kill its VM with SIGBUS at the next BAR
        /// access. After a wake (the guest's D0 write), wait for the next D3hot.
        case guestD3 = "guest-d3"
        public var description: String { rawValue }
    }

    /// Whether the platform may take the device to D3cold while it is in low power.
    public enum D3cold: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
        /// Leave the kernel's `d3cold_allowed` as it is (1 unless someone changed it). If the
        /// daemon earlier wrote 0 for this device (policy was `forbid`), it writes 1 back.
        case allow = "allow"
        /// Write `d3cold_allowed = 0` after opening and before arming, for devices that fail
        /// to resume from D3cold. The write resumes the device, so it never happens while armed.
        case forbid = "forbid"
        public var description: String { rawValue }
    }

    /// What the daemon does with the device when it stops.
    public enum OnStop: String, CaseIterable, Hashable, Sendable, CustomStringConvertible {
        /// Exit low power, then close: the device is left awake and usable.
        case exit = "exit"
        /// Close without the explicit exit. For a `vmm` device (its default) the VMM still holds
        /// the device, so it stays in low power and the guest's next D0 write wakes it. For an
        /// `own` device the kernel exits low power itself when the last fd closes.
        case keep = "keep"
        public var description: String { rawValue }
    }

    /// "At most `maxWakes` wakes per `window`": past it the device is flapping, and the
    /// re-arm delay doubles with every further wake, up to `backoffCap`. Flapping ends when the
    /// device stays in low power for a whole window. One-shot mode only (re-entrant mode has no
    /// wake notifications).
    public struct FlapGuard: Equatable, Hashable, Sendable {
        public var maxWakes: Int
        public var window: Duration
        public var backoffCap: Duration

        public init(maxWakes: Int = 10, window: Duration = .seconds(600), backoffCap: Duration = .seconds(3600)) {
            self.maxWakes = maxWakes
            self.window = window
            self.backoffCap = backoffCap
        }
    }

    /// Whether the device is managed at all (opened and armed).
    public var isManaged: Bool { enabled && mode != .off }

    /// Whether `other` differs from `self` only in ways that never touch the device (label,
    /// on-stop, flap-guard numbers). Used by the daemon's reload to skip unchanged devices and
    /// by the state machine to decide between "no action" and an exit/arm cycle.
    func affectsDevice(comparedTo other: DevicePolicy) -> Bool {
        isManaged != other.isManaged
            || (isManaged && (source != other.source || mode != other.mode || trigger != other.trigger || d3cold != other.d3cold))
    }
}
