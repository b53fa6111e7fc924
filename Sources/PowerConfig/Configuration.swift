import PowerPolicy
import VFIO

/// Policy values as written in one place (defaults or one device entry); a key not written
/// there has no value.
///
/// Most device entries write no policy key: theirs is the empty dictionary, which allocates
/// nothing (at 4096 entries, held twice during a reload, inline settings per entry cost
/// megabytes).
public struct PolicySettings: Hashable, Sendable {
    private var values: [PolicyKey: Sourced<PolicyValue>] = [:]

    public init() {}

    /// The value written for `key`, and where; nil if it is not written here.
    public subscript(key: PolicyKey) -> Sourced<PolicyValue>? {
        get { values[key] }
        set { values[key] = newValue }
    }

    /// `self` written over `base`: the effective policy and where each value came from.
    public func applied(over base: EffectivePolicy) -> EffectivePolicy {
        guard !values.isEmpty else { return base }
        var result = base
        for (key, setting) in values {
            key.definition.assign(&result.policy, setting.value)
            result.sources[key] = setting.source
        }
        result.applySourceDefaults()
        return result
    }
}

/// A policy with the source of every value.
public struct EffectivePolicy: Hashable, Sendable {
    public var policy: DevicePolicy
    public var sources: [PolicyKey: Provenance]

    /// The built-in defaults (`DevicePolicy()`), every value from "built-in default".
    public static let builtIn = EffectivePolicy(
        policy: DevicePolicy(),
        sources: Dictionary(uniqueKeysWithValues: PolicyKey.allCases.map { ($0, Provenance.builtInDefault) }))

    public func source(of key: PolicyKey) -> Provenance { sources[key] ?? .builtInDefault }

    /// `trigger` and `on_stop` that nobody wrote follow the device source: `guest-d3` and
    /// `keep` for `vmm`, `immediate` and `exit` for `own`.
    mutating func applySourceDefaults() {
        if source(of: .trigger) == .builtInDefault { policy.trigger = policy.source.defaultTrigger }
        if source(of: .onStop) == .builtInDefault { policy.onStop = policy.source.defaultOnStop }
    }

    /// The value of `key` as the configuration spells it ("oneshot", "30s", "10").
    public func text(of key: PolicyKey) -> String { key.definition.text(policy) }
}

/// Daemon-wide settings from `[daemon]` in vfio-powerd.conf.
public struct DaemonSettings: Hashable, Sendable {
    /// How often to look for devices that are configured but missing. The timer runs only
    /// while at least one is missing.
    public var rescanInterval: Sourced<Duration> = .init(.seconds(30), .builtInDefault)
    /// The most devices the daemon manages at once (a resource limit: every device costs its
    /// device fd, one or two eventfds in the daemon's epoll set, and memory).
    public var maxDevices: Sourced<Int> = .init(256, .builtInDefault)
    /// The group that owns the control socket (mode 0660): its members may read
    /// (vfio-powerctl status, show, monitor). Nil: root only.
    public var socketGroup: Sourced<String>? = nil
    /// The group whose members may also change things (Arm, Wake, Reload); root always may.
    /// Nil: root only.
    public var adminGroup: Sourced<String>? = nil
    /// `vmm` devices: the executables (fnmatch patterns over the file name, or the whole path
    /// when the pattern has a '/') whose device files the daemon adopts.
    public var vmmExecutables: Sourced<[String]> = .init(ExecutableAllowList.defaultPatterns, .builtInDefault)
    /// `vmm` devices: how often an adopted, awake device's `power_state` is sampled for the
    /// guest's D3hot (it cannot be waited on).
    public var guestD3Interval: Sourced<Duration> = .init(.seconds(1), .builtInDefault)
    /// `vmm` devices: how often /proc is looked through for a VMM holding an idle device, for
    /// VMMs whose open the daemon cannot see (libvirt's private /dev). Zero: never.
    public var vmmScanInterval: Sourced<Duration> = .init(.seconds(5), .builtInDefault)
    public init() {}
}

/// A class-code pattern: the digits given must match, the rest is free.
/// "0x03" matches every display controller (0x03xxxx), "0x0300" VGA controllers (0x0300xx),
/// "0x030000" exactly.
public struct ClassMatch: Hashable, Sendable, CustomStringConvertible {
    public var value: UInt32
    public var mask: UInt32

    public init(value: UInt32, mask: UInt32) {
        self.value = value & mask
        self.mask = mask
    }

    /// "03", "0x0300", "030000": 2, 4 or 6 hex digits.
    public init?(_ text: String) {
        var digits = Substring(text)
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2) }
        guard [2, 4, 6].contains(digits.count), digits.allSatisfy(\.isHexDigit),
              let number = UInt32(digits, radix: 16) else { return nil }
        let shift = UInt32(24 - 4 * digits.count)
        self.init(value: number << shift, mask: (0xFFFFFF >> shift) << shift)
    }

    public func matches(_ classCode: UInt32) -> Bool { classCode & mask == value }

    /// "0x03xxxx"
    public var description: String {
        var text = "0x"
        for nibble in (0..<6).reversed() {
            let shift = UInt32(nibble * 4)
            text += (mask >> shift) & 0xF == 0 ? "x" : String((value >> shift) & 0xF, radix: 16)
        }
        return text
    }
}

/// Selects the devices present in sysfs whose identity matches every given field.
public struct MatchRule: Hashable, Sendable, CustomStringConvertible {
    public var vendor: UInt16?
    public var device: UInt16?
    public var classCode: ClassMatch?
    /// The bound driver. A rule that names none selects only devices bound to vfio-pci, so
    /// "all display controllers" never reaches for the host's own GPU.
    public var driver: String?

    public init(vendor: UInt16? = nil, device: UInt16? = nil, classCode: ClassMatch? = nil, driver: String? = nil) {
        self.vendor = vendor
        self.device = device
        self.classCode = classCode
        self.driver = driver
    }

    public static let defaultDriver = "vfio-pci"

    public func matches(_ identity: DeviceIdentity) -> Bool {
        if let vendor, identity.vendor != vendor { return false }
        if let device, identity.device != device { return false }
        if let classCode, !classCode.matches(identity.classCode) { return false }
        return identity.driver == (driver ?? Self.defaultDriver)
    }

    /// "vendor=0x10de device=0x2204 class=0x03xxxx driver=vfio-pci"
    public var description: String {
        var parts: [String] = []
        if let vendor { parts.append("vendor=" + hex4(vendor)) }
        if let device { parts.append("device=" + hex4(device)) }
        if let classCode { parts.append("class=\(classCode)") }
        parts.append("driver=" + (driver ?? Self.defaultDriver) + (driver == nil ? " (implied)" : ""))
        return parts.joined(separator: " ")
    }
}

func hex4(_ value: UInt16) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}

/// How a device entry names its device(s).
public enum DeviceSelector: Hashable, Sendable {
    case address(PCIAddress)
    case match(MatchRule)
}

/// One `[[device]]` entry.
public struct DeviceEntry: Hashable, Sendable {
    /// Where the entry starts (its `[[device]]` header).
    public var location: ConfigLocation
    public var name: String?
    public var enabled: Sourced<Bool>
    public var selector: DeviceSelector
    /// Where the selector (`address` or the match table) is written.
    public var selectorLocation: ConfigLocation
    public var settings: PolicySettings

    /// How the entry is named in messages: `"gpu0" (FILE:LINE)` or `FILE:LINE`.
    public var label: String {
        if let name { return "\"\(name)\" (\(location.fileAndLine))" }
        return location.fileAndLine
    }
}

/// A configuration file that was considered, and what became of it.
public struct ConfigFileRecord: Hashable, Sendable {
    public enum Status: Hashable, Sendable {
        case used
        /// A file of the same name in a directory of higher precedence wins.
        case overridden(by: String)
        /// A symlink to /dev/null (in this or a higher directory) masks the name.
        case masked(by: String)
        /// Refused (permissions, size, encoding): see the problems.
        case refused
    }
    public var path: String
    public var status: Status

    public init(path: String, status: Status) {
        self.path = path
        self.status = status
    }
}

/// Everything read from the files, before matching against sysfs.
public struct Configuration: Hashable, Sendable {
    public var daemon = DaemonSettings()
    /// `[defaults]` of the main file.
    public var defaults = PolicySettings()
    public var devices: [DeviceEntry] = []
    public var files: [ConfigFileRecord] = []

    public init() {}

    /// Built-in defaults with `[defaults]` over them.
    public var effectiveDefaults: EffectivePolicy { defaults.applied(over: .builtIn) }

    /// The effective policy of one entry: built-in, then `[defaults]`, then the entry.
    public func effectivePolicy(of entry: DeviceEntry) -> EffectivePolicy {
        effectivePolicy(of: entry, defaults: effectiveDefaults)
    }

    /// The same with `effectiveDefaults` computed once by the caller: entries that write no
    /// policy key then share one `sources` dictionary instead of each building its own.
    func effectivePolicy(of entry: DeviceEntry, defaults: EffectivePolicy) -> EffectivePolicy {
        var effective = entry.settings.applied(over: defaults)
        effective.policy.name = entry.name
        effective.policy.enabled = entry.enabled.value
        return effective
    }
}
