import PowerPolicy
import SystemPackage
import VFIO

/// `vfio-powerd --check-config`: load, validate, resolve against sysfs, and describe it all.
/// Never opens a device; reads only sysfs identity attributes.
public enum ConfigCheck {
    /// sysexits.h EX_CONFIG: "something was found in an unconfigured or misconfigured state".
    public static let exitConfigError: Int32 = 78

    public struct Outcome: Hashable, Sendable {
        /// The report for stdout.
        public var report: String
        /// 0, or `exitConfigError` when there is any error.
        public var exitStatus: Int32
        public var problems: [ConfigProblem]
    }

    public static func run(_ options: ConfigLoadOptions, sysfsRoot: FilePath = "/sys") -> Outcome {
        let loaded = ConfigLoader.load(options)
        let resolution = DeviceResolver.resolve(loaded.configuration, sysfsRoot: sysfsRoot, reads: .ofSelectedDevices)
        return report(loaded, resolution)
    }

    /// The report text for a loaded and resolved configuration.
    public static func report(_ loaded: ConfigLoadResult, _ resolution: Resolution) -> Outcome {
        let problems = ConfigLoader.sortProblems(loaded.problems + resolution.problems)
        let errors = problems.filter(\.isError).count
        let warnings = problems.count - errors
        var lines: [String] = []

        lines.append("Files:")
        if loaded.configuration.files.isEmpty { lines.append("  (none: built-in defaults, no devices)") }
        for record in loaded.configuration.files {
            switch record.status {
            case .used: lines.append("  \(record.path)")
            case .overridden(let by): lines.append("  \(record.path) (overridden by \(by))")
            case .masked(let by): lines.append("  \(record.path) (masked by \(by) -> /dev/null)")
            case .refused: lines.append("  \(record.path) (refused)")
            }
        }

        if !problems.isEmpty {
            lines.append("")
            lines.append("Problems:")
            lines += problems.map(\.description)
        }

        lines.append("")
        let daemon = loaded.configuration.daemon
        lines.append("Daemon:")
        for key in DaemonKey.allCases {
            let definition = key.definition
            let text = definition.text(daemon) ?? "(none: root only)"
            lines.append("  " + pad("\(key.rawValue) = \(text)") + "(\(definition.source(daemon)))")
        }

        lines.append("")
        lines.append("Devices:")
        if resolution.devices.isEmpty { lines.append("  (none selected)") }
        for device in resolution.devices {
            var header = "  \(device.address)"
            if let name = device.entry.name { header += " \"\(name)\"" }
            if let identity = device.identity {
                header += ": \(identity)"
                if identity.driver != MatchRule.defaultDriver {
                    header += " (not vfio-pci: the daemon waits until it is bound to vfio-pci)"
                }
            } else if device.isPresent {
                header += ": present (identity not read)"
            } else {
                header += ": not present (the daemon waits for it)"
            }
            lines.append(header)
            switch device.entry.selector {
            case .address: lines.append("    selected by address at \(device.entry.selectorLocation.fileAndLine)")
            case .match(let rule): lines.append("    selected by match \(rule) at \(device.entry.selectorLocation.fileAndLine)")
            }
            let enabled = device.entry.enabled
            lines.append("    " + pad("enabled = \(enabled.value)") + "(\(enabled.source))")
            for key in PolicyKey.allCases {
                lines.append("    " + pad("\(key.rawValue) = \(device.effective.text(of: key))") + "(\(device.effective.source(of: key)))")
            }
            if device.effective.policy.source == .own && device.effective.policy.isManaged {
                lines.append("    note: source = \"own\": the daemon holds this device open, so no VM can use it while it runs "
                             + "(QEMU fails with \"Device or resource busy\"); use source = \"vmm\" for a device that VMs use")
            }
        }
        for entry in resolution.unmatchedRules {
            if case .match(let rule) = entry.selector {
                lines.append("  match \(rule) at \(entry.selectorLocation.fileAndLine)\(entry.name.map { " \"\($0)\"" } ?? ""): selects no device present now")
            }
        }

        lines.append("")
        let absent = resolution.devices.filter { !$0.isPresent }.count
        let summary = "\(resolution.devices.count) device\(resolution.devices.count == 1 ? "" : "s") selected"
            + (absent > 0 ? " (\(absent) not present)" : "")
        if errors > 0 {
            lines.append("Configuration refused: \(errors) error\(errors == 1 ? "" : "s"), \(warnings) warning\(warnings == 1 ? "" : "s"); \(summary).")
        } else {
            lines.append("Configuration OK: \(warnings) warning\(warnings == 1 ? "" : "s"); \(summary).")
        }
        return Outcome(report: lines.joined(separator: "\n") + "\n", exitStatus: errors > 0 ? exitConfigError : 0, problems: problems)
    }

    private static func pad(_ text: String) -> String {
        text.count >= 28 ? text + " " : text + String(repeating: " ", count: 28 - text.count)
    }
}
