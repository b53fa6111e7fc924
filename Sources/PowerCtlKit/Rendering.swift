import ControlProtocol

/// How vfio-powerctl shows what the daemon says: pure functions of the records and the
/// current time, so their output is tested exactly.
public enum Rendering {
    /// `vfio-powerctl status`: the STATUS line, then one row per device.
    public static func statusTable(_ devices: [DeviceRecord], status: String, nowRealtimeUsec: Int64) -> String {
        let header = ["DEVICE", "NAME", "SOURCE", "MODE", "STATE", "HOLDER", "WAKES", "LAST WAKE", "LOW POWER"]
        let rows = devices.map { device in
            [device.address, device.name ?? "-", device.source.rawValue, device.mode.rawValue,
             state(device) + (device.flapping && device.state != .backingOff ? " (flapping)" : ""),
             holder(device) ?? "-",
             String(device.wakes),
             device.lastWakeRealtimeUsec.map { ago($0, now: nowRealtimeUsec) } ?? "-",
             device.lowPowerShare.map { percent($0) } ?? "-"].map(shown)
        }
        // Numbers right-aligned, words left-aligned.
        let rightAligned: Set<Int> = [6, 7, 8]
        var widths = header.map(\.count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                let padding = String(repeating: " ", count: widths[index] - cell.count)
                return rightAligned.contains(index) ? padding + cell : cell + padding
            }.joined(separator: "  ").trimmingTrailingSpaces()
        }
        var out = "vfio-powerd: \(shown(status))\n"
        if devices.isEmpty { return out + "no devices configured (see /etc/vfio-powerd/devices.d)\n" }
        out += line(header) + "\n"
        for row in rows { out += line(row) + "\n" }
        return out
    }

    /// `vfio-powerctl show DEVICE`: every field, one per line.
    public static func detail(_ device: DeviceRecord, nowRealtimeUsec: Int64) -> String {
        var lines: [(String, String)] = [
            ("Device", device.address + (device.name.map { " (\($0))" } ?? "")),
            ("Driver", device.driver ?? "none"),
            ("Source", device.source.rawValue),
            ("Mode", device.mode.rawValue),
            ("State", state(device)),
        ]
        if let holder = holder(device) { lines.append(("Held by", holder)) }
        if device.powerState != nil || device.runtimeStatus != nil {
            lines.append(("Kernel", "power_state \(device.powerState ?? "?"), runtime_status \(device.runtimeStatus ?? "?")"
                          + (device.runtimeSuspendedMs.map { ", suspended for \(duration($0 * 1000)) in all" } ?? "")))
        }
        if let next = device.nextArmRealtimeUsec {
            lines.append(("Next arm", next > nowRealtimeUsec ? "in " + duration(next - nowRealtimeUsec) : "due"))
        }
        lines += [
            ("Wakes", "\(device.wakes)" + (device.selfWakes > 0 ? " (+\(device.selfWakes) caused by the daemon itself)" : "")),
            ("Last wake", device.lastWakeRealtimeUsec.map { ago($0, now: nowRealtimeUsec) } ?? "never"),
            ("Arms", "\(device.arms)"),
            ("Flapping", device.flapping ? "yes (episode \(device.flapEpisodes))" : "no" + (device.flapEpisodes > 0 ? " (\(device.flapEpisodes) episodes so far)" : "")),
            ("In low power", duration(device.lowPowerUsec) + (device.lowPowerShare.map { " of \(duration(device.managedUsec)) managed (\(percent($0)))" } ?? "")),
            ("Last error", device.lastError ?? "none"),
            ("Configured at", device.configuredAt),
        ]
        let width = lines.map(\.0.count).max() ?? 0
        return lines.map { $0.0 + ":" + String(repeating: " ", count: width - $0.0.count + 1) + shown($0.1) }.joined(separator: "\n") + "\n"
    }

    /// `vfio-powerctl monitor`: one line per change.
    public static func monitorLine(_ device: DeviceRecord, nowRealtimeUsec: Int64) -> String {
        var text = "\(clock(nowRealtimeUsec)) \(device.address)"
        if let name = device.name { text += " (\(name))" }
        text += " \(state(device))"
        if let holder = holder(device) { text += " (\(holder))" }
        if let next = device.nextArmRealtimeUsec, next > nowRealtimeUsec { text += ", arms in \(duration(next - nowRealtimeUsec))" }
        text += "; \(device.wakes) wake\(device.wakes == 1 ? "" : "s")"
        if device.flapping { text += "; flapping" }
        if let error = device.lastError, [.failed, .gone, .unsupported].contains(device.state) { text += "; \(error)" }
        return shown(text)
    }

    /// What the daemon sends, safe to print on a terminal: a device's name comes from a
    /// configuration file, and an escape sequence or a line break in it must not reach the
    /// operator's terminal as one. Control characters and the invisible bidirectional
    /// overrides become `\u{1B}`-style escapes, as Swift writes them.
    public static func shown(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isHidden) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if isHidden(scalar) {
                out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    private static func isHidden(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.generalCategory == .control || (0x202A...0x202E).contains(scalar.value)
            || (0x2066...0x2069).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
    }

    /// "low power", "stuck (arm has not returned for 12s)".
    public static func state(_ device: DeviceRecord) -> String {
        guard device.state == .stuck, let call = device.stuckCall else { return device.state.words }
        return "stuck (\(call) has not returned for \(duration(device.stuckUsec ?? 0)))"
    }

    /// "qemu-system-x86_64 (pid 4242)"
    static func holder(_ device: DeviceRecord) -> String? {
        guard let pid = device.holderPid else { return nil }
        let name = device.holderExecutable.map { $0.split(separator: "/").last.map(String.init) ?? $0 } ?? "?"
        return "\(name) (pid \(pid))"
    }

    /// "3s ago", "5m ago", "2h ago", "3d ago".
    static func ago(_ realtimeUsec: Int64, now: Int64) -> String {
        duration(max(0, now - realtimeUsec), coarse: true) + " ago"
    }

    /// "950ms", "12s", "3m20s", "2h5m", "3d4h".
    static func duration(_ usec: Int64, coarse: Bool = false) -> String {
        let seconds = usec / 1_000_000
        if seconds < 1 { return "\(usec / 1000)ms" }
        if seconds < 60 { return "\(seconds)s" }
        if seconds < 3600 { return coarse ? "\(seconds / 60)m" : "\(seconds / 60)m\(pad(seconds % 60))s" }
        if seconds < 86_400 { return coarse ? "\(seconds / 3600)h" : "\(seconds / 3600)h\(pad(seconds % 3600 / 60))m" }
        return coarse ? "\(seconds / 86_400)d" : "\(seconds / 86_400)d\(seconds % 86_400 / 3600)h"
    }

    static func percent(_ share: Double) -> String { "\(Int((share * 100).rounded()))%" }

    /// HH:MM:SS in UTC (the journal's own lines carry the local time; this is for a glance).
    static func clock(_ realtimeUsec: Int64) -> String {
        let seconds = realtimeUsec / 1_000_000 % 86_400
        return "\(pad(seconds / 3600)):\(pad(seconds % 3600 / 60)):\(pad(seconds % 60))"
    }

    private static func pad(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var text = Substring(self)
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}
