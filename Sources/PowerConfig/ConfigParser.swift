import PowerPolicy
import VFIO
import VFIOWords

/// Turns one file's TOML text into typed settings, collecting every problem in it.
///
/// Table-driven in systemd's way: each known key has one typed reader; anything else is an
/// unknown key with a "did you mean". Keys are visited in file order so problems come out in
/// the order an operator reads the file.
struct ConfigFileParser {
    let file: String
    private let document: TOMLDocument?
    private var root: TOMLTable? { document?.root }
    private(set) var problems: [ConfigProblem] = []

    /// Parses the text; a syntax error becomes the file's only problem (toml++ stops at the first).
    init(file: String, text: String) {
        self.file = file
        let findings = TOMLPrecheck.check(text)
        guard findings.isEmpty else {
            // Such a text is refused unparsed (TOMLPrecheck says why).
            document = nil
            problems = findings.map { ConfigProblem(file: file, line: $0.line, column: $0.column, message: $0.message) }
            return
        }
        switch TOMLDocument.parse(text, file: file) {
        case .success(let parsed):
            document = parsed
        case .failure(let error):
            document = nil
            if let position = error.position {
                problems.append(ConfigProblem(file: file, line: position.line, column: position.column,
                                              message: "TOML syntax error: \(error.description)"))
            } else {
                problems.append(ConfigProblem(file: file, message: "cannot parse: \(error.description)"))
            }
        }
    }

    static let policyKeyNames = PolicyKey.allCases.map(\.rawValue)
    static let mainTopKeys = ["daemon", "defaults"]
    static let daemonKeys = DaemonKey.allCases.map(\.rawValue)
    static let deviceKeys = ["name", "enabled", "address", "match"] + policyKeyNames
    static let matchKeys = ["vendor", "device", "class", "driver"]

    /// The shape of a POSIX group name as useradd/groupadd accept it; whether the group
    /// exists is the daemon's question at start, not the file's.
    static func isGroupName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.unicodeScalars.count <= 32 else { return false }
        let lowercase = Unicode.Scalar("a").value ... Unicode.Scalar("z").value
        let digits = Unicode.Scalar("0").value ... Unicode.Scalar("9").value
        guard lowercase.contains(first.value) || first == "_" else { return false }
        return name.unicodeScalars.allSatisfy { lowercase.contains($0.value) || digits.contains($0.value) || $0 == "_" || $0 == "-" }
    }

    // MARK: The main file

    mutating func parseMain() -> (DaemonSettings, PolicySettings) {
        var daemon = DaemonSettings()
        var defaults = PolicySettings()
        guard let root else { return (daemon, defaults) }
        for (key, value) in root.entries {
            switch key {
            case "daemon":
                guard let table = expectTable(value, path: ["daemon"]) else { continue }
                for (subkey, value) in table.entries {
                    let path = ["daemon", subkey]
                    guard let daemonKey = DaemonKey(rawValue: subkey) else {
                        unknownKey(path, candidates: Self.daemonKeys)
                        continue
                    }
                    let definition = daemonKey.definition
                    if let parsed = readDaemonValue(value, path: path, type: definition.type) {
                        definition.assign(&daemon, parsed, provenance(path))
                    }
                }
            case "defaults":
                guard let table = expectTable(value, path: ["defaults"]) else { continue }
                defaults = readPolicy(table.entries, path: ["defaults"], extraKeys: [])
            case "device":
                problems.append(problem(keyPath: ["device"], message:
                    "devices belong in devices.d/*.conf, not in the main file; move this entry to e.g. devices.d/50-local.conf"))
            default:
                if let policyKey = PolicyKey(rawValue: key) {
                    problems.append(problem(keyPath: [key], message:
                        "policy keys belong in the [defaults] table; write `\(policyKey.rawValue)` under [defaults]"))
                } else {
                    unknownKey([key], candidates: Self.mainTopKeys)
                }
            }
        }
        if let defaultsTable = root["defaults"]?.table {
            checkConflicts(defaults.applied(over: .builtIn), written: defaults, path: ["defaults"], table: defaultsTable)
        }
        return (daemon, defaults)
    }

    // MARK: A devices.d file

    mutating func parseDevices(defaults: EffectivePolicy) -> [DeviceEntry] {
        guard let root else { return [] }
        var entries: [DeviceEntry] = []
        for (key, value) in root.entries {
            guard key == "device" else {
                if Self.deviceKeys.contains(key) {
                    problems.append(problem(keyPath: [key], message:
                        "`\(key)` must be inside a [[device]] entry; start the entry with a [[device]] line above it"))
                } else if ["defaults", "daemon"].contains(key) {
                    problems.append(problem(keyPath: [key], message:
                        "[\(key)] belongs in vfio-powerd.conf, not in devices.d"))
                } else {
                    unknownKey([key], candidates: ["device"])
                }
                continue
            }
            guard let array = value.array else {
                problems.append(problem(keyPath: ["device"], message: value.table != nil
                    ? "write each device as [[device]] (double brackets: an array of tables), not [device]"
                    : "expected [[device]] entries, got \(describe(value))"))
                continue
            }
            for index in 0..<array.count {
                let path = ["device", "#\(index)"]
                guard let table = array[index].table else {
                    problems.append(problem(keyPath: path, message: "expected a table for each device, got \(describe(array[index]))"))
                    continue
                }
                if let entry = readDevice(table, path: path, defaults: defaults) { entries.append(entry) }
            }
        }
        return entries
    }

    private mutating func readDevice(_ table: TOMLTable, path: [String], defaults: EffectivePolicy) -> DeviceEntry? {
        let headerLocation = location(bestKeyPosition(path))
        var name: String?
        var enabled = Sourced(true, .builtInDefault)
        var address: (PCIAddress, ConfigLocation)?
        var rule: (MatchRule, ConfigLocation)?
        var selectorBroken = false
        let entries = table.entries
        for (key, value) in entries where PolicyKey(rawValue: key) == nil {
            let keyPath = path + [key]
            switch key {
            case "name":
                if let text = readString(value, path: keyPath) {
                    if text.isEmpty || text.count > 64 || text.contains(where: { $0.isNewline }) {
                        problems.append(problem(valuePath: keyPath, message: "a name is 1 to 64 characters on one line, got \"\(text)\""))
                    } else {
                        name = text
                    }
                }
            case "enabled":
                if let flag = readBool(value, path: keyPath) { enabled = .init(flag, provenance(keyPath)) }
            case "address":
                guard let text = readString(value, path: keyPath) else { selectorBroken = true; continue }
                switch PCIAddress.parse(text) {
                case .success(let parsed): address = (parsed, location(bestValuePosition(keyPath)))
                case .failure(let error):
                    selectorBroken = true
                    problems.append(problem(valuePath: keyPath, message: error.description))
                }
            case "match":
                guard let matchTable = expectTable(value, path: keyPath) else { selectorBroken = true; continue }
                if let parsed = readMatch(matchTable, path: keyPath) {
                    rule = (parsed, location(bestKeyPosition(keyPath)))
                } else {
                    selectorBroken = true
                }
            default:
                unknownKey(keyPath, candidates: Self.deviceKeys)
            }
        }
        let settings = readPolicy(entries, path: path, extraKeys: Self.deviceKeys)
        let effective = settings.applied(over: defaults)
        checkConflicts(effective, written: settings, path: path, table: table)

        let selector: DeviceSelector
        let selectorLocation: ConfigLocation
        switch (address, rule) {
        case (let address?, _?):
            problems.append(ConfigProblem(at: address.1, key: "device.address", message:
                "an entry selects its device by `address` or by a [device.match] table, not both; split it into two [[device]] entries or drop one"))
            return nil
        case (let address?, nil):
            (selector, selectorLocation) = (.address(address.0), address.1)
        case (nil, let rule?):
            (selector, selectorLocation) = (.match(rule.0), rule.1)
        case (nil, nil):
            if !selectorBroken {
                problems.append(ConfigProblem(at: headerLocation, key: "device", message:
                    "this entry selects no device: add `address = \"0000:01:00.0\"` or a [device.match] table (vendor, device, class, driver)"))
            }
            return nil
        }
        return DeviceEntry(location: headerLocation, name: name, enabled: enabled, selector: selector,
                           selectorLocation: selectorLocation, settings: settings)
    }

    private mutating func readMatch(_ table: TOMLTable, path: [String]) -> MatchRule? {
        var rule = MatchRule()
        var ok = true
        for (key, value) in table.entries {
            let keyPath = path + [key]
            switch key {
            case "vendor", "device":
                if let id = readID(value, path: keyPath) {
                    if key == "vendor" { rule.vendor = id } else { rule.device = id }
                } else { ok = false }
            case "class":
                guard let text = readString(value, path: keyPath, advice:
                    "write the class as a string of 2, 4 or 6 hex digits: \"0x03\" for every display controller, \"0x0200\" for Ethernet, \"0x030000\" exactly")
                else { ok = false; continue }
                if let classMatch = ClassMatch(text) { rule.classCode = classMatch } else {
                    ok = false
                    problems.append(problem(valuePath: keyPath, message:
                        "\"\(text)\" is not a class pattern: write 2, 4 or 6 hex digits, e.g. \"0x03\" (every display controller), \"0x0300\" (VGA), \"0x030000\" (exactly)"))
                }
            case "driver":
                guard let text = readString(value, path: keyPath) else { ok = false; continue }
                if text.isEmpty || text.contains("/") {
                    ok = false
                    problems.append(problem(valuePath: keyPath, message: "expected a driver name like \"vfio-pci\", got \"\(text)\""))
                } else { rule.driver = text }
            default:
                ok = false
                unknownKey(keyPath, candidates: Self.matchKeys)
            }
        }
        guard ok else { return nil }
        if rule.vendor == nil && rule.device == nil && rule.classCode == nil && rule.driver == nil {
            problems.append(problem(keyPath: path, message: "an empty match selects nothing: give at least one of vendor, device, class, driver"))
            return nil
        }
        if rule.device != nil && rule.vendor == nil {
            problems.append(problem(keyPath: path + ["device"], message:
                "a device ID means nothing without its vendor ID (every vendor numbers its own devices); add `vendor`"))
            return nil
        }
        return rule
    }

    // MARK: Policy keys

    private mutating func readPolicy(_ entries: [(key: String, value: TOMLValue)], path: [String], extraKeys: [String]) -> PolicySettings {
        var settings = PolicySettings()
        for (key, value) in entries {
            let keyPath = path + [key]
            guard let policyKey = PolicyKey(rawValue: key) else {
                if extraKeys.isEmpty { unknownKey(keyPath, candidates: Self.policyKeyNames) }
                continue
            }
            if let parsed = readValue(value, path: keyPath, type: policyKey.definition.type) {
                settings[policyKey] = .init(parsed, provenance(keyPath))
            }
        }
        return settings
    }

    /// Settings that contradict each other, reported at the key written in this table.
    private mutating func checkConflicts(_ effective: EffectivePolicy, written: PolicySettings, path: [String], table: TOMLTable) {
        let policy = effective.policy
        func describe(_ key: PolicyKey) -> String {
            let source = effective.source(of: key)
            return "\(key.rawValue) = \(effective.text(of: key))" + (isWritten(key) ? "" : " (\(source))")
        }
        func isWritten(_ key: PolicyKey) -> Bool { table[key.rawValue] != nil }
        // Report where the operator wrote one of the two keys (the later in the file).
        func reportKey(_ a: PolicyKey, _ b: PolicyKey) -> PolicyKey? {
            switch (isWritten(a), isWritten(b)) {
            case (true, true):
                let pa = bestKeyPosition(path + [a.rawValue]), pb = bestKeyPosition(path + [b.rawValue])
                return (pa.line, pa.column) > (pb.line, pb.column) ? a : b
            case (true, false): return a
            case (false, true): return b
            case (false, false): return nil
            }
        }
        let prefix = path.first ?? ""
        // What a device source allows: a VMM's guest must never meet a BAR that low power has
        // blocked while it uses the device (measured: SIGBUS kills its VMM).
        switch policy.source {
        case .vmm:
            if policy.trigger == .immediate, let key = reportKey(.trigger, .source) {
                problems.append(problem(keyPath: path + [key.rawValue], keyName: "\(prefix).\(key.rawValue)", message:
                    "\(describe(.trigger)) is refused for \(describe(.source)): arming a device while its guest uses it kills the VM (SIGBUS at its next BAR access); use trigger = \"guest-d3\", or source = \"own\" for a device the host keeps"))
            }
            if policy.mode == .reentrant, let key = reportKey(.mode, .source) {
                problems.append(problem(keyPath: path + [key.rawValue], keyName: "\(prefix).\(key.rawValue)", message:
                    "\(describe(.mode)) is refused for \(describe(.source)): re-entrant low power keeps the BARs blocked after the guest's D0 write, so its next BAR access kills the VM; use mode = \"oneshot\""))
            }
        case .own:
            if policy.trigger == .guestD3, let key = reportKey(.trigger, .source) {
                problems.append(problem(keyPath: path + [key.rawValue], keyName: "\(prefix).\(key.rawValue)", message:
                    "\(describe(.trigger)) needs a guest: it is for source = \"vmm\"; an `own` device has none, use trigger = \"immediate\""))
            }
        }
        if policy.mode == .oneShot {
            if policy.flapGuard.window <= policy.rearmDelay, let key = reportKey(.flapWindow, .rearmDelay) {
                problems.append(problem(keyPath: path + [key.rawValue], keyName: "\(prefix).\(key.rawValue)", message:
                    "\(describe(.flapWindow)) must be longer than \(describe(.rearmDelay)): a one-shot device wakes at most once per re-arm delay, so the flap guard could never see two wakes in one window"))
            } else if policy.rearmDelay > .zero,
                      let key = reportKey(.flapMaxWakes, .flapWindow) ?? reportKey(.flapMaxWakes, .rearmDelay) {
                // (With rearm_delay = 0s any number of wakes fits in a window: no warning.)
                let fit = Int(policy.flapGuard.window / policy.rearmDelay) + 1
                if policy.flapGuard.maxWakes >= fit {
                    problems.append(problem(.warning, keyPath: path + [key.rawValue], keyName: "\(prefix).\(key.rawValue)", message:
                        "\(describe(.flapMaxWakes)) can never be exceeded: with \(describe(.rearmDelay)) at most \(fit) wakes fit in \(describe(.flapWindow)), so the flap guard is off"))
                }
            }
            if policy.flapGuard.backoffCap < policy.rearmDelay, let key = reportKey(.flapBackoffMax, .rearmDelay) {
                problems.append(problem(keyPath: path + [key.rawValue], keyName: "\(prefix).\(key.rawValue)", message:
                    "\(describe(.flapBackoffMax)) is shorter than \(describe(.rearmDelay)): backing off would re-arm a flapping device sooner than a quiet one; make it at least as long"))
            }
        }
        if policy.mode == .reentrant && prefix == "device" {
            for key in [PolicyKey.flapMaxWakes, .flapWindow, .flapBackoffMax, .rearmDelay] where isWritten(key) {
                problems.append(problem(.warning, keyPath: path + [key.rawValue], keyName: "device.\(key.rawValue)", message:
                    "has no effect with mode = \"reentrant\": a re-entrant device is armed once and sends no wake notifications"))
            }
        }
    }

    // MARK: Typed readers

    private mutating func readDuration(_ value: TOMLValue, path: [String], range: ClosedRange<Duration>) -> Duration? {
        guard let text = value.string else {
            problems.append(problem(valuePath: path, message: "expected a duration like \"30s\", got \(describe(value))"
                + (value.integer.map { " (write \"\($0)s\" for \($0) seconds)" } ?? "")))
            return nil
        }
        switch DurationText.parse(text) {
        case .success(let duration):
            guard range.contains(duration) else {
                problems.append(problem(valuePath: path, message:
                    "\(duration.configText) is out of range: must be between \(range.lowerBound.configText) and \(range.upperBound.configText)"))
                return nil
            }
            return duration
        case .failure(let error):
            problems.append(problem(valuePath: path, message: error.description))
            return nil
        }
    }

    private mutating func readInteger(_ value: TOMLValue, path: [String], range: ClosedRange<Int>) -> Int? {
        guard let number = value.integer else {
            problems.append(problem(valuePath: path, message: "expected an integer like \(range.lowerBound), got \(describe(value))"))
            return nil
        }
        guard range.contains(number) else {
            problems.append(problem(valuePath: path, message:
                "\(number) is out of range: must be between \(range.lowerBound) and \(range.upperBound)"))
            return nil
        }
        return number
    }

    private mutating func readBool(_ value: TOMLValue, path: [String]) -> Bool? {
        guard let flag = value.boolean else {
            problems.append(problem(valuePath: path, message: "expected true or false, got \(describe(value))"))
            return nil
        }
        return flag
    }

    private mutating func readString(_ value: TOMLValue, path: [String], advice: String? = nil) -> String? {
        guard let text = value.string else {
            problems.append(problem(valuePath: path, message: advice.map { "\($0), got \(describe(value))" }
                ?? "expected a string, got \(describe(value))"))
            return nil
        }
        return text
    }

    /// A vendor or device ID: an integer (0x10de) or a string of 4 hex digits ("10de", "0x10de").
    private mutating func readID(_ value: TOMLValue, path: [String]) -> UInt16? {
        if let number = value.integer {
            guard (0...0xFFFF).contains(number) else {
                problems.append(problem(valuePath: path, message: "\(number) is out of range: a PCI ID is 16 bits (0x0000 to 0xffff)"))
                return nil
            }
            return UInt16(number)
        }
        if let text = value.string {
            var digits = Substring(text)
            if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2) }
            if digits.count == 4, digits.allSatisfy(\.isHexDigit), let number = UInt16(digits, radix: 16) { return number }
            problems.append(problem(valuePath: path, message:
                "\"\(text)\" is not a PCI ID: write 4 hex digits as lspci -nn shows them, e.g. 0x10de or \"10de\""))
            return nil
        }
        problems.append(problem(valuePath: path, message: "expected a PCI ID like 0x10de, got \(describe(value))"))
        return nil
    }

    /// A value of the type a `[daemon]` key's definition gives.
    private mutating func readDaemonValue(_ value: TOMLValue, path: [String], type: DaemonKeyDefinition.ValueType) -> DaemonValue? {
        switch type {
        case .duration(let range, orOff: false):
            return readDuration(value, path: path, range: range).map(DaemonValue.duration)
        case .duration(let range, orOff: true):
            guard let duration = readDuration(value, path: path, range: .zero ... range.upperBound) else { return nil }
            guard duration == .zero || duration >= range.lowerBound else {
                problems.append(problem(valuePath: path, message:
                    "\(duration.configText) is out of range: \"0s\" (off) or between \(range.lowerBound.configText) and \(range.upperBound.configText)"))
                return nil
            }
            return .duration(duration)
        case .integer(let range):
            return readInteger(value, path: path, range: range).map(DaemonValue.integer)
        case .group:
            guard let name = readString(value, path: path, advice: "expected a group name like \"vfio-powerd\"") else { return nil }
            guard Self.isGroupName(name) else {
                problems.append(problem(valuePath: path, message:
                    "\"\(name)\" is not a group name: lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32"))
                return nil
            }
            return .group(name)
        case .executables:
            guard let array = value.array else {
                problems.append(problem(valuePath: path, message:
                    "expected a list of executables like [\"qemu-system-*\", \"crosvm\"], got \(describe(value))"))
                return nil
            }
            var patterns: [String] = []
            for index in 0..<array.count {
                guard let pattern = array[index].string, !pattern.isEmpty else {
                    problems.append(problem(valuePath: path, message:
                        "entry \(index + 1) is \(describe(array[index])): each entry is an executable's name or path (glob patterns allowed), like \"qemu-system-*\""))
                    continue
                }
                patterns.append(pattern)
            }
            return .executables(patterns)
        }
    }

    /// A value of the type a policy key's definition gives.
    private mutating func readValue(_ value: TOMLValue, path: [String], type: PolicyKeyDefinition.ValueType) -> PolicyValue? {
        switch type {
        case .choice(let names): readChoice(value, path: path, names: names).map(PolicyValue.choice)
        case .duration(let range): readDuration(value, path: path, range: range).map(PolicyValue.duration)
        case .integer(let range): readInteger(value, path: path, range: range).map(PolicyValue.integer)
        }
    }

    private mutating func readChoice(_ value: TOMLValue, path: [String], names: [String]) -> String? {
        let list = names.map { "\"\($0)\"" }.joined(separator: ", ")
        guard let text = value.string else {
            problems.append(problem(valuePath: path, message: "expected one of \(list), got \(describe(value))"))
            return nil
        }
        if names.contains(text) { return text }
        var message = "expected one of \(list), got \"\(text)\""
        if let suggestion = closestMatch(to: text, in: names) { message += "; did you mean \"\(suggestion)\"?" }
        problems.append(problem(valuePath: path, message: message))
        return nil
    }

    private mutating func expectTable(_ value: TOMLValue, path: [String]) -> TOMLTable? {
        guard let table = value.table else {
            problems.append(problem(valuePath: path, message: "expected a table ([\(dotted(path))]), got \(describe(value))"))
            return nil
        }
        return table
    }

    private mutating func unknownKey(_ path: [String], candidates: [String]) {
        var message = "unknown key"
        if let suggestion = closestMatch(to: path.last ?? "", in: candidates) {
            message += "; did you mean `\(suggestion)`?"
        } else {
            message += "; known keys here: " + candidates.map { "`\($0)`" }.joined(separator: ", ")
        }
        problems.append(problem(keyPath: path, message: message))
    }

    // MARK: Positions

    /// Where toml++ found the key at `path` (see TOMLDocument.bestKeyPosition); only asked
    /// while reading a parsed document.
    private func bestKeyPosition(_ path: [String]) -> TOMLDocument.Position {
        document?.bestKeyPosition(path) ?? TOMLDocument.Position(line: 1, column: 1)
    }

    private func bestValuePosition(_ path: [String]) -> TOMLDocument.Position {
        document?.bestValuePosition(path) ?? TOMLDocument.Position(line: 1, column: 1)
    }

    private func location(_ position: TOMLDocument.Position) -> ConfigLocation {
        ConfigLocation(file: file, line: position.line, column: position.column)
    }

    private func provenance(_ path: [String]) -> Provenance {
        .file(location(bestKeyPosition(path)))
    }

    private func dotted(_ path: [String]) -> String {
        path.filter { !$0.hasPrefix("#") }.joined(separator: ".")
    }

    private func problem(_ severity: ConfigProblem.Severity = .error, keyPath: [String], keyName: String? = nil, message: String) -> ConfigProblem {
        ConfigProblem(severity, at: location(bestKeyPosition(keyPath)), key: keyName ?? dotted(keyPath), message: message)
    }

    private func problem(valuePath: [String], message: String) -> ConfigProblem {
        ConfigProblem(at: location(bestValuePosition(valuePath)), key: dotted(valuePath), message: message)
    }

    private func describe(_ value: TOMLValue) -> String {
        switch value.kind {
        case .string: "\"\(value.string ?? "")\""
        case .integer: String(value.integer ?? 0)
        case .float: String(value.float ?? 0)
        case .boolean: (value.boolean ?? false) ? "true" : "false"
        case .table: "a table"
        case .array: "an array"
        case .date, .time, .dateTime: "a date or time"
        }
    }
}
