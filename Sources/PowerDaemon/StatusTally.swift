import PowerPolicy

/// The counts behind the STATUS line, kept up to date one device change at a time: a wake
/// costs the same with 4096 devices as with one (the benchmarks showed a per-change scan of
/// every device dominating at scale).
struct StatusTally: Equatable {
    enum Category: Hashable {
        case lowPower, awake, missing, failing, stopped, disabled
        /// `vmm`: no VMM holds it (the kernel suspends it by itself).
        case idle
        /// `vmm`: held by a process the daemon leaves alone.
        case notAdopted
        /// `vmm`: adopted, its guest uses it (D0).
        case inUse
    }

    /// What one device adds to the tally.
    struct Contribution: Equatable {
        var category: Category
        var flapping: Bool
        var wakes: UInt64

        init(phase: DevicePhase, flapping: Bool, wakes: UInt64) {
            switch phase {
            case .lowPower: category = .lowPower
            case .unconfigured, .opening, .arming, .exiting, .waitingToRearm, .backingOff, .heldAwake,
                 .adopting, .keptAwake: category = .awake
            case .guestActive: category = .inUse
            case .idle: category = .idle
            case .notAdopted: category = .notAdopted
            case .gone: category = .missing
            case .failed, .unsupported: category = .failing
            case .stopped: category = .stopped
            case .disabled: category = .disabled
            }
            self.flapping = flapping
            self.wakes = wakes
        }
    }

    private(set) var counts: [Category: Int] = [:]
    private(set) var devices = 0
    private(set) var flapping = 0
    private(set) var wakes: UInt64 = 0

    /// Takes a device's old contribution out (nil: it is new) and its new one in (nil: gone).
    mutating func replace(_ old: Contribution?, with new: Contribution?) {
        if let old {
            counts[old.category, default: 0] -= 1
            devices -= 1
            if old.flapping { flapping -= 1 }
            wakes -= old.wakes
        }
        if let new {
            counts[new.category, default: 0] += 1
            devices += 1
            if new.flapping { flapping += 1 }
            wakes += new.wakes
        }
    }

    func count(_ category: Category) -> Int { counts[category, default: 0] }

    /// "3 devices: 2 in low power, 1 missing; 57 wakes; 1 flapping".
    var line: String {
        let managed = devices - count(.disabled)
        if managed == 0 { return devices == 0 ? "no devices configured" : "no devices managed (\(devices) disabled)" }
        var parts = ["\(count(.lowPower)) in low power"]
        for (category, words) in [(Category.inUse, "in use by a guest"), (.awake, "awake"), (.idle, "idle (no VM)"), (.notAdopted, "held by another process"),
                                  (.missing, "missing"), (.failing, "failing"), (.stopped, "stopped")]
        where count(category) > 0 {
            parts.append("\(count(category)) \(words)")
        }
        var line = "\(managed) device\(managed == 1 ? "" : "s"): " + parts.joined(separator: ", ")
        line += "; \(wakes) wake\(wakes == 1 ? "" : "s")"
        if flapping > 0 { line += "; \(flapping) flapping" }
        return line
    }
}
