import Logging
import PowerPolicy
import VFIO

/// Turns what happened into what the operator reads: the words, the priority, the
/// MESSAGE_ID and the fields to filter on. Pure, so the words are tested exactly; the
/// manager is the one place that hands the result to the logger.
enum EventReporter {
    struct Entry: Equatable {
        var event: DaemonEvent
        var level: Logger.Level
        var message: String
        var fields: [String: String]
    }

    static func entry(for event: PolicyEvent, _ context: DeviceController.Context) -> Entry {
        let device = context.name.map { "\(context.address) (\($0))" } ?? "\(context.address)"
        var fields = [JournalField.device: "\(context.address)"]
        if let name = context.name { fields["VFIO_NAME"] = name }
        func make(_ kind: DaemonEvent, _ text: String, level: Logger.Level? = nil) -> Entry {
            Entry(event: kind, level: level ?? kind.defaultPriority, message: "\(device): \(text)", fields: fields)
        }
        /// The daemon's own error words when it has them (they name the holder of a busy
        /// group, the driver a device is bound to, ...), else the state machine's.
        func because(_ errno: ErrorNumber?, _ explanation: String) -> String {
            if let errno { fields[JournalField.errno] = "\(errno.rawValue)" }
            if let error = context.error {
                return "\(error.explanation)\(error.errno.map { " (\($0.symbolicName))" } ?? "")\(error.advice.map { ". \($0)" } ?? "")"
            }
            return explanation + (errno.map { " (\($0.name))" } ?? "")
        }

        switch event {
        case .armed(let mode):
            fields[JournalField.mode] = mode.rawValue
            return make(.armed, "armed \(mode) low power")
        case .woke(let count, let inLowPowerFor):
            fields[JournalField.wakes] = "\(count)"
            fields[JournalField.lowPowerUsec] = "\(inLowPowerFor.microseconds)"
            let times = count == 1 ? "" : " (\(count) wakes coalesced)"
            return make(.woke, "woke after \(DurationText.format(inLowPowerFor)) in low power\(times)")
        case .rearmed(let mode, let quietFor):
            fields[JournalField.mode] = mode.rawValue
            return make(.rearmed, "re-armed \(mode) low power after \(DurationText.format(quietFor)) awake")
        case .flappingStarted(let wakes, let window, let backoff):
            fields[JournalField.wakes] = "\(wakes)"
            return make(.flappingStarted, "flapping: \(wakes) wakes within \(DurationText.format(window)); re-arming only after \(DurationText.format(backoff)), doubling with each further wake; wakes are summarised until it is quiet again")
        case .flappingEnded(let suppressedWakes, let lasted):
            fields[JournalField.wakes] = "\(suppressedWakes)"
            return make(.flappingEnded, "quiet again after \(DurationText.format(lasted)) of flapping (\(suppressedWakes) wakes summarised); normal re-arming resumes")
        case .alreadyEngaged(let mode):
            fields[JournalField.mode] = mode.rawValue
            return make(.armFailed, "already in low power (a previous holder of the device left it engaged); exiting low power and arming \(mode) again", level: .notice)
        case .armFailed(let errno, let explanation):
            return make(.armFailed, "cannot arm: \(because(errno, explanation))")
        case .d3coldWriteFailed(let errno, let explanation):
            return make(.armFailed, "cannot write d3cold_allowed: \(because(errno, explanation))")
        case .openFailed(let errno, let explanation):
            return make(.deviceSkipped, "not managed: \(because(errno, explanation))")
        case .unsupported(let errno, let explanation):
            return make(.deviceSkipped, "not managed: \(because(errno, explanation))")
        case .exitFailed(let errno, let explanation):
            return make(.wakeFailed, "cannot exit low power: \(because(errno, explanation))")
        case .deviceGone where context.error.map({ waitingCodes.contains($0.code) }) == true:
            // Never opened: not there yet, or not bound to vfio-pci. Say what is missing.
            let error = context.error!
            return make(.deviceSkipped, "not available: \(error.explanation)\(error.advice.map { ". \($0)" } ?? ""); managed as soon as it is (looked for every rescan_interval and on reload)")
        case .deviceGone(let errno):
            let why = context.error.map { ": \($0.explanation)" } ?? (errno.map { " (\($0.name))" } ?? " (removed or unbound)")
            if let errno { fields[JournalField.errno] = "\(errno.rawValue)" }
            return make(.deviceGone, "gone\(why); closed so the kernel can finish removing it; it is managed again when it returns")
        case .deviceBack:
            return make(.deviceBack, "back; managing it again")
        case .released:
            return make(.deviceReleased, "no longer managed; left awake")
        case .heldAwake(let duration):
            let until = duration.map { "for \(DurationText.format($0))" } ?? "until `vfio-powerctl arm`"
            return make(.heldAwake, "woken by the operator; kept out of low power \(until)")
        }
    }
}

/// Errors that mean "not there yet" rather than "was there and went away".
private let waitingCodes: Set<VFIOError.Code> = [.deviceNotFound, .notBoundToVFIO, .noIOMMUGroup, .groupNotViable, .vfioUnavailable]

extension Duration {
    var microseconds: Int64 {
        components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000
    }
}
