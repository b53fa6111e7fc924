import PowerPolicy
import VFIO

/// The `[daemon]` keys of vfio-powerd.conf, each defined once as the policy keys are
/// (PolicyKeys.swift): its type, range, default (`DaemonSettings()`), a line of doc and its
/// field. The parser, `--check-config`'s report and vfio-powerd.conf(5)'s table read it.
public enum DaemonKey: String, CaseIterable, Hashable, Sendable {
    case rescanInterval = "rescan_interval"
    case maxDevices = "max_devices"
    case socketGroup = "socket_group"
    case adminGroup = "admin_group"
    case vmmExecutables = "vmm_executables"
    case guestD3Interval = "guest_d3_interval"
    case vmmScanInterval = "vmm_scan_interval"

    public var definition: DaemonKeyDefinition { Self.definitions[self]! }

    private static let definitions = Dictionary(uniqueKeysWithValues: allCases.map { ($0, $0.define()) })

    private func define() -> DaemonKeyDefinition {
        switch self {
        case .rescanInterval:
            .duration(\.rescanInterval, .seconds(1) ... .seconds(3600), "How often missing devices are looked for.")
        case .maxDevices:
            .integer(\.maxDevices, 1...4096, "The most devices managed at once.")
        case .socketGroup:
            .group(\.socketGroup, "May read the control socket.")
        case .adminGroup:
            .group(\.adminGroup, "May also arm, wake and reload.")
        case .vmmExecutables:
            .executables(\.vmmExecutables, "The VMMs whose device files are adopted.")
        case .guestD3Interval:
            .duration(\.guestD3Interval, .milliseconds(100) ... .seconds(60), "How often a guest's device is sampled for D3hot.")
        case .vmmScanInterval:
            .duration(\.vmmScanInterval, .seconds(1) ... .seconds(3600), orOff: true, "How often /proc is scanned for VMMs that inotify cannot see.")
        }
    }
}

/// A `[daemon]` value as read from the file, checked against its key's definition.
public enum DaemonValue: Hashable, Sendable {
    case duration(Duration)
    case integer(Int)
    /// A group name.
    case group(String)
    /// Executable patterns.
    case executables([String])
}

/// One row of the `[daemon]` key table.
public struct DaemonKeyDefinition: Sendable {
    public enum ValueType: Hashable, Sendable {
        /// A duration in `range`; with `orOff`, "0s" too (the feature off).
        case duration(ClosedRange<Duration>, orOff: Bool)
        case integer(ClosedRange<Int>)
        /// A POSIX group name; unset means root only.
        case group
        /// A list of fnmatch(3) patterns over an executable's name or path.
        case executables
    }

    public let type: ValueType
    /// One line for vfio-powerd.conf(5)'s table; the man page's prose says the rest.
    public let summary: String
    /// Sets the value and where it came from.
    let assign: @Sendable (inout DaemonSettings, DaemonValue, Provenance) -> Void
    /// The value as `--check-config` prints it (`30s`, `256`, `"vfio-powerd"`,
    /// `["qemu-*"]`); nil when unset.
    public let text: @Sendable (DaemonSettings) -> String?
    /// Where the value came from.
    public let source: @Sendable (DaemonSettings) -> Provenance

    /// The values the key accepts, as the man page's table gives them.
    public var valuesText: String {
        switch type {
        case .duration(let range, let orOff):
            (orOff ? "\"0s\" (off), " : "") + "\(range.lowerBound.configText) to \(range.upperBound.configText)"
        case .integer(let range): "\(range.lowerBound) to \(range.upperBound)"
        case .group: "a group name"
        case .executables: "a list of patterns"
        }
    }

    /// The built-in default as a TOML value, as the man page's table gives it.
    public var defaultText: String {
        guard let text = text(DaemonSettings()) else { return "none: root only" }
        if case .duration = type { return "\"\(text)\"" }
        return text
    }

    static func duration(_ field: WritableKeyPath<DaemonSettings, Sourced<Duration>> & Sendable, _ range: ClosedRange<Duration>,
                         orOff: Bool = false, _ summary: String) -> Self {
        Self(type: .duration(range, orOff: orOff), summary: summary,
             assign: { settings, value, source in
                 guard case .duration(let duration) = value else { preconditionFailure("\(value) is not a duration") }
                 settings[keyPath: field] = .init(duration, source)
             },
             text: { $0[keyPath: field].value.configText },
             source: { $0[keyPath: field].source })
    }

    static func integer(_ field: WritableKeyPath<DaemonSettings, Sourced<Int>> & Sendable, _ range: ClosedRange<Int>,
                        _ summary: String) -> Self {
        Self(type: .integer(range), summary: summary,
             assign: { settings, value, source in
                 guard case .integer(let number) = value else { preconditionFailure("\(value) is not an integer") }
                 settings[keyPath: field] = .init(number, source)
             },
             text: { String($0[keyPath: field].value) },
             source: { $0[keyPath: field].source })
    }

    static func group(_ field: WritableKeyPath<DaemonSettings, Sourced<String>?> & Sendable, _ summary: String) -> Self {
        Self(type: .group, summary: summary,
             assign: { settings, value, source in
                 guard case .group(let name) = value else { preconditionFailure("\(value) is not a group name") }
                 settings[keyPath: field] = .init(name, source)
             },
             text: { $0[keyPath: field].map { "\"\($0.value)\"" } },
             source: { $0[keyPath: field]?.source ?? .builtInDefault })
    }

    static func executables(_ field: WritableKeyPath<DaemonSettings, Sourced<[String]>> & Sendable, _ summary: String) -> Self {
        Self(type: .executables, summary: summary,
             assign: { settings, value, source in
                 guard case .executables(let patterns) = value else { preconditionFailure("\(value) is not a list of patterns") }
                 settings[keyPath: field] = .init(patterns, source)
             },
             text: { "[" + $0[keyPath: field].value.map { "\"\($0)\"" }.joined(separator: ", ") + "]" },
             source: { $0[keyPath: field].source })
    }
}
