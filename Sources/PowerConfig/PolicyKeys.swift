import PowerPolicy

/// The policy keys, as spelled in the files. Each can appear in `[defaults]` of
/// vfio-powerd.conf and in any `[[device]]` entry.
///
/// Everything else about a key is in its `definition`, in systemd's way (the
/// `config_parse_*` table of load-fragment-gperf.gperf: a name, a typed reader, a place in the
/// struct). The parser, the merge of `[defaults]` and entries, `--check-config`'s provenance
/// report, the reload's difference and vfio-powerd.conf(5)'s key table all read it, so a new
/// key is one case here and one definition below; the `switch` makes the compiler ask for it,
/// and PolicyKeyTableTests holds the man page against the table.
public enum PolicyKey: String, CaseIterable, Hashable, Sendable, Comparable {
    case source
    case mode
    case trigger
    case rearmDelay = "rearm_delay"
    case flapMaxWakes = "flap_max_wakes"
    case flapWindow = "flap_window"
    case flapBackoffMax = "flap_backoff_max"
    case d3cold
    case onStop = "on_stop"

    public static func < (a: PolicyKey, b: PolicyKey) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }

    /// What the key holds, where its value goes in a `DevicePolicy`, and its line of doc.
    public var definition: PolicyKeyDefinition { Self.definitions[self]! }

    private static let definitions = Dictionary(uniqueKeysWithValues: allCases.map { ($0, $0.define()) })

    private func define() -> PolicyKeyDefinition {
        switch self {
        case .source:
            .choice(\.source, "Adopt a VMM's device file, or open the device itself.")
        case .mode:
            .choice(\.mode, "One-shot, re-entrant, or not managed.")
        case .trigger:
            .choice(\.trigger, "Arm in the guest's D3hot, or at once.")
        case .rearmDelay:
            .duration(\.rearmDelay, .zero ... .seconds(86_400), "Quiet time after a wake before arming again.")
        case .flapMaxWakes:
            .integer(\.flapGuard.maxWakes, 1...1000, "More wakes in a window: the device flaps.")
        case .flapWindow:
            .duration(\.flapGuard.window, .seconds(1) ... .seconds(86_400), "The flap guard's window.")
        case .flapBackoffMax:
            .duration(\.flapGuard.backoffCap, .seconds(1) ... .seconds(86_400), "The longest re-arm delay when flapping.")
        case .d3cold:
            .choice(\.d3cold, "May the platform take it to D3cold?")
        case .onStop:
            .choice(\.onStop, "At stop: leave it in low power, or awake.")
        }
    }

    /// The built-in default as a TOML value (`"30s"`, `10`). A default that follows `source`
    /// says so: `"guest-d3" (vmm), "immediate" (own)`.
    public var defaultText: String {
        guard self != .source else { return definition.literal(DevicePolicy()) }
        let sources = DevicePolicy.Source.allCases
        let literals = sources.map { definition.literal(DevicePolicy(source: $0)) }
        if Set(literals).count == 1 { return literals[0] }
        return zip(literals, sources).map { "\($0) (\($1))" }.joined(separator: ", ")
    }

    /// The keys whose values differ between two policies, in the files' spelling: what a
    /// reload changes on a device.
    public static func changes(from old: DevicePolicy, to new: DevicePolicy) -> [PolicyChange] {
        allCases.compactMap { key in
            let before = key.definition.text(old), after = key.definition.text(new)
            return before == after ? nil : PolicyChange(key: key, old: before, new: after)
        }
    }
}

/// One key's value before and after a reload.
public struct PolicyChange: Hashable, Sendable, CustomStringConvertible {
    public var key: PolicyKey
    public var old: String
    public var new: String

    /// "rearm_delay 30s → 1m"
    public var description: String { "\(key.rawValue) \(old) → \(new)" }
}

/// A policy value as read from a file, checked against its key's type and range.
public enum PolicyValue: Hashable, Sendable {
    /// One of the key's choices, as spelled ("oneshot").
    case choice(String)
    case duration(Duration)
    case integer(Int)
}

/// One row of the policy-key table.
public struct PolicyKeyDefinition: Sendable {
    public enum ValueType: Hashable, Sendable {
        /// One of these strings.
        case choice([String])
        case duration(ClosedRange<Duration>)
        case integer(ClosedRange<Int>)
    }

    public let type: ValueType
    /// One sentence for vfio-powerd.conf(5)'s key table; the man page's prose says the rest.
    public let summary: String
    /// Writes a value of `type` into a policy.
    let assign: @Sendable (inout DevicePolicy, PolicyValue) -> Void
    /// The policy's value, as the files spell it ("oneshot", "30s", "10").
    public let text: @Sendable (DevicePolicy) -> String

    /// The policy's value as a TOML value: quoted, but for an integer.
    public func literal(_ policy: DevicePolicy) -> String {
        if case .integer = type { return text(policy) }
        return "\"\(text(policy))\""
    }

    /// The values the key accepts, as the man page's table gives them: `"vmm", "own"`,
    /// `0s to 1d`, `1 to 1000`.
    public var valuesText: String {
        switch type {
        case .choice(let names): names.map { "\"\($0)\"" }.joined(separator: ", ")
        case .duration(let range): "\(range.lowerBound.configText) to \(range.upperBound.configText)"
        case .integer(let range): "\(range.lowerBound) to \(range.upperBound)"
        }
    }

    static func choice<Choice>(_ field: WritableKeyPath<DevicePolicy, Choice> & Sendable, _ summary: String) -> Self
    where Choice: CaseIterable & RawRepresentable & Sendable, Choice.RawValue == String {
        row(field, .choice(Choice.allCases.map(\.rawValue)), summary, text: \.rawValue) { value in
            if case .choice(let name) = value { Choice(rawValue: name) } else { nil }
        }
    }

    static func duration(_ field: WritableKeyPath<DevicePolicy, Duration> & Sendable, _ range: ClosedRange<Duration>,
                         _ summary: String) -> Self {
        row(field, .duration(range), summary, text: \.configText) { value in
            if case .duration(let duration) = value { duration } else { nil }
        }
    }

    static func integer(_ field: WritableKeyPath<DevicePolicy, Int> & Sendable, _ range: ClosedRange<Int>,
                        _ summary: String) -> Self {
        row(field, .integer(range), summary, text: { String($0) }) { value in
            if case .integer(let number) = value { number } else { nil }
        }
    }

    /// A row whose values live in `field`: `unwrap` takes the field's value out of a
    /// `PolicyValue` of the row's type (the parser read it by that type, so it always can).
    private static func row<Value: Sendable>(_ field: WritableKeyPath<DevicePolicy, Value> & Sendable, _ type: ValueType,
                                             _ summary: String, text: @escaping @Sendable (Value) -> String,
                                             unwrap: @escaping @Sendable (PolicyValue) -> Value?) -> Self {
        Self(type: type, summary: summary,
             assign: { policy, value in
                 guard let unwrapped = unwrap(value) else {
                     preconditionFailure("\(value) is not a value of \(type): the parser reads a key by its row's type")
                 }
                 policy[keyPath: field] = unwrapped
             },
             text: { text($0[keyPath: field]) })
    }
}
