import Logging
import PowerPolicy
import SystemPackage
import VFIO
import VFIOWords

/// Turns what happened into what the operator reads: the words, the priority, the
/// MESSAGE_ID and the fields to filter on. Pure, so the words are tested exactly; the
/// manager is the one place that hands the result to the logger. A VFIO error's own words
/// come from VFIOWords, which vfio-powerctl shares.
enum EventReporter {
    struct Entry: Equatable {
        var event: DaemonEvent
        var level: Logger.Level
        var message: String
        /// The journal fields, MESSAGE_ID included: handed to the logger as they are, so an
        /// entry is one dictionary, built once.
        var metadata: Logger.Metadata

        init(event: DaemonEvent, level: Logger.Level, message: String, metadata: Logger.Metadata) {
            self.event = event
            self.level = level
            self.message = message
            self.metadata = metadata
        }

        /// An entry with `fields` and the event's MESSAGE_ID (how the tests spell the expected one).
        init(event: DaemonEvent, level: Logger.Level, message: String, fields: [String: String]) {
            self.init(event: event, level: level, message: message,
                      metadata: event.metadata(fields.mapValues { .string($0) }))
        }

        /// The fields other than MESSAGE_ID, as text.
        var fields: [String: String] {
            var fields: [String: String] = [:]
            for (key, value) in metadata where key != JournalField.messageID { fields[key] = "\(value)" }
            return fields
        }
    }

    /// Which kind of entry an event makes, and at what priority: cheap, so the manager can skip
    /// building entries the logger would drop (`--log-level notice` drops every wake's two).
    static func classify(_ event: PolicyEvent, _ context: DeviceController.Context) -> (event: DaemonEvent, level: Logger.Level) {
        let kind: DaemonEvent
        switch event {
        case .armed: kind = .armed
        case .woke: kind = .woke
        case .rearmed: kind = .rearmed
        case .flappingStarted: kind = .flappingStarted
        case .flappingEnded: kind = .flappingEnded
        case .alreadyEngaged: return (.armFailed, .notice)
        case .armFailed, .d3coldWriteFailed: kind = .armFailed
        case .openFailed, .unsupported: kind = .deviceSkipped
        case .exitFailed: kind = .wakeFailed
        case .deviceGone where context.error.map({ waitingCodes.contains($0.code) }) == true: kind = .deviceSkipped
        case .deviceGone: kind = .deviceGone
        case .deviceBack, .busyHolderExited: kind = .deviceBack
        case .released: kind = .deviceReleased
        case .heldAwake: kind = .heldAwake
        case .adopted(_, .handoff): kind = .handoffReceived
        case .adopted: kind = .adopted
        case .adoptionRefused: kind = .adoptionRefused
        case .vmmReleased: kind = .vmmReleased
        case .armedInGuestD3, .keptArmed: kind = .armedInGuestD3
        case .keptAwake: kind = .keptAwake
        case .suspendedAtLast: kind = .suspendedAtLast
        case .stuck: kind = .deviceStuck
        case .unstuck: kind = .deviceBack
        }
        return (kind, kind.defaultPriority)
    }

    static func entry(for event: PolicyEvent, _ context: DeviceController.Context) -> Entry {
        let (kind, level) = classify(event, context)
        var fields = Logger.Metadata(minimumCapacity: 5)
        fields[JournalField.messageID] = .string(kind.messageID)
        fields[JournalField.device] = .string(context.addressText)
        // Only `vmm` devices carry it: an `own` device's entries stay as they have always been.
        if context.source == .vmm { fields[JournalField.source] = .string(context.source.rawValue) }
        if let name = context.name { fields["VFIO_NAME"] = .string(name) }
        func make(_ text: String) -> Entry {
            Entry(event: kind, level: level, message: context.label + ": " + text, metadata: fields)
        }
        /// The daemon's own error words when it has them (they name the holder of a busy
        /// group, the driver a device is bound to, ...), else the state machine's.
        func because(_ errno: Errno?, _ explanation: String) -> String {
            if let errno { fields[JournalField.errno] = .string("\(errno.rawValue)") }
            if let error = context.error {
                return "\(error.explanation)\(error.errno.map { " (\($0.symbolicName))" } ?? "")\(error.advice.map { ". \($0)" } ?? "")"
            }
            return explanation + (errno.map { " (\($0.symbolicName))" } ?? "")
        }

        switch event {
        case .armed(let mode):
            fields[JournalField.mode] = .string(mode.rawValue)
            return make("armed \(words(mode)) low power")
        case .woke(let count, let inLowPowerFor):
            fields[JournalField.wakes] = .string("\(count)")
            fields[JournalField.lowPowerUsec] = .string("\(inLowPowerFor.microseconds)")
            let times = count == 1 ? "" : " (\(count) wakes coalesced)"
            return make("woke after \(DurationText.format(inLowPowerFor)) in low power\(times)")
        case .rearmed(let mode, let quietFor):
            fields[JournalField.mode] = .string(mode.rawValue)
            return make("re-armed \(words(mode)) low power after \(DurationText.format(quietFor)) awake")
        case .flappingStarted(let wakes, let window, let backoff):
            fields[JournalField.wakes] = .string("\(wakes)")
            return make("flapping: \(wakes) wakes within \(DurationText.format(window)); re-arming only after \(DurationText.format(backoff)), doubling with each further wake; wakes are summarised until it is quiet again")
        case .flappingEnded(let suppressedWakes, let lasted):
            fields[JournalField.wakes] = .string("\(suppressedWakes)")
            return make("quiet again after \(DurationText.format(lasted)) of flapping (\(suppressedWakes) wakes summarised); normal re-arming resumes")
        case .alreadyEngaged(let mode):
            fields[JournalField.mode] = .string(mode.rawValue)
            return make("already in low power (a previous holder of the device left it engaged); exiting low power and arming \(words(mode)) again")
        case .armFailed(let failure, let after):
            return make("cannot arm: \(because(failure.errno, afterFailure(after, context.source)))")
        case .d3coldWriteFailed(let failure, let after):
            return make("cannot write d3cold_allowed: \(because(failure.errno, afterFailure(after, context.source)))")
        case .openFailed(let failure) where context.error.map({ $0.code == .groupBusy && !$0.holders.isEmpty }) == true:
            return make("not managed yet: \(because(failure.errno, openFailure(failure))); it is taken as soon as \(context.error!.holders.count == 1 ? "that process exits" : "one of them exits")")
        case .openFailed(let failure):
            return make("not managed: \(because(failure.errno, openFailure(failure)))")
        case .unsupported(let errno):
            return make("not managed: \(because(errno, "the kernel has no VFIO low-power feature for this device (needs Linux >= 6.1 and the vfio-pci driver); not retried"))")
        case .exitFailed(let failure, let after):
            return make("cannot exit low power: \(because(failure.errno, afterFailure(after, context.source)))")
        case .deviceGone where context.error.map({ waitingCodes.contains($0.code) }) == true:
            // Never opened: not there yet, or not bound to vfio-pci. Say what is missing.
            let error = context.error!
            return make("not available: \(error.explanation)\(error.advice.map { ". \($0)" } ?? ""); managed as soon as it is (looked for every rescan_interval and on reload)")
        case .deviceGone(let errno):
            let why = context.error.map { ": \($0.explanation)" } ?? (errno.map { " (\($0.symbolicName))" } ?? " (removed or unbound)")
            if let errno { fields[JournalField.errno] = .string("\(errno.rawValue)") }
            return make("gone\(why); closed so the kernel can finish removing it; it is managed again when it returns")
        case .deviceBack:
            return make("back; managing it again")
        case .busyHolderExited:
            return make("the process that held its group exited; opening it now")
        case .released where context.source == .vmm:
            return make("no longer managed; the daemon's copy of the VMM's device file is closed and the device left as its guest has it")
        case .released:
            return make("no longer managed; left awake")
        case .heldAwake(let duration):
            let until = duration.map { "for \(DurationText.format($0))" } ?? "until `vfio-powerctl arm`"
            return make("woken by the operator; kept out of low power \(until)")
        case .adopted(let holder, let method):
            holderFields(holder)
            let how = switch method {
            case .fdinfo: "the kernel names the device in its fdinfo"
            case .unambiguous: "its only VFIO device file, of a group with this one device"
            case .handoff: ""
            }
            if method == .handoff {
                return make("device file received by handoff; released when \(holder) exits; armed whenever its guest puts the device into D3hot")
            }
            return make("adopted from \(holder) (\(how)); armed whenever its guest puts the device into D3hot")
        case .adoptionRefused(let holder, let refusal):
            holderFields(holder)
            switch refusal {
            case .executableNotAllowed:
                return make("held by \(holder.executable) (pid \(holder.pid)), which is not in vmm_executables; left alone. If it is a VMM, add it to vmm_executables in vfio-powerd.conf")
            case .ambiguous(let files):
                return make("held by \(holder), but this kernel does not name the device of a VFIO file (before Linux 6.18) and the VMM has \(files) device files or the group has several devices, so the daemon will not guess; left alone. Hand the device over with `vfio-powerctl adopt` from a start hook on one device per VMM, or use Linux 6.18 or later")
            case .noDeviceFile:
                return make("held by \(holder), which has not opened the device yet; asking again shortly")
            case .notPermitted(let errno):
                fields[JournalField.errno] = .string("\(errno.rawValue)")
                return make("held by \(holder), but duplicating its device file was refused (\(errno.symbolicName)); the daemon needs CAP_SYS_PTRACE and pidfd_getfd (see the unit), and Yama's ptrace_scope must be below 3")
            }
        case .vmmReleased(let holder, let reason):
            holderFields(holder)
            let why = switch reason {
            case .vmmExited: "exited"
            case .vmmClosedDevice: "closed the device (unplugged from its guest)"
            case .requested: "is let go of, as asked (Release)"
            }
            return make("released: \(holder) \(why); the device is free for the next VM")
        case .armedInGuestD3:
            fields[JournalField.mode] = .string(ArmMode.oneShot.rawValue)
            return make("armed one-shot low power: the guest put the device into D3hot")
        case .keptAwake(let reason):
            let bound = DurationText.format(DeviceStateMachine.residencyBound)
            let why = switch reason {
            case .runtimePMForbidden:
                "power/control is \"on\", which forbids runtime suspend. Write \"auto\" to /sys/bus/pci/devices/\(context.addressText)/power/control (and find what set it: a udev rule, tlp, powertop's counterpart)"
            case .activeChildren(let count):
                "\(count) device\(count == 1 ? "" : "s") below it \(count == 1 ? "is" : "are") active (power/runtime_active_kids); it suspends once \(count == 1 ? "that one does" : "they do")"
            case .unknown:
                "sysfs shows no reason (power/control is auto and no child is active): look for a consumer link or a driver holding a runtime PM reference"
            }
            return make("armed, but the kernel keeps it awake \(bound) later: \(why). Checked again every guest_d3_interval")
        case .stuck(let call, let duration):
            return make("stuck: its \(call) has not returned for \(DurationText.format(duration)); the device may be hung (dmesg may say why). Other devices are not held up; this one takes no other call until it returns")
        case .unstuck(let call, let after):
            return make("its \(call) returned after \(DurationText.format(after)); managing it again")
        case .suspendedAtLast(let afterArmedFor):
            return make("suspended at last, \(DurationText.format(afterArmedFor)) after it was armed: the kernel no longer keeps it awake")
        case .keptArmed:
            fields[JournalField.mode] = .string(ArmMode.oneShot.rawValue)
            return make("still in one-shot low power from before the daemon restarted (its wakeup eventfd came back from systemd's fd store); not armed again, which would have woken it")
        }

        func holderFields(_ holder: VMMHolder) {
            fields[JournalField.vmmPID] = .string("\(holder.pid)")
            fields[JournalField.vmmExecutable] = .string(holder.executable)
        }
    }

    /// A device's last error for its status: the VFIO layer's account of it while it has one
    /// (it names a busy group's holder, the driver bound, ...), else the failure the state
    /// machine recorded, "arm: EBUSY".
    static func lastError(_ vfio: VFIOError?, _ failure: DeviceFailure?) -> String? {
        if let vfio { return vfio.description }
        guard let failure else { return nil }
        let call = switch failure.operation {
        case .open: "open"
        case .arm: "arm"
        case .exit: "exit"
        case .setD3coldAllowed: "set d3cold_allowed"
        case .adopt: "adopt"
        }
        return "\(call): " + (failure.failure.errno?.symbolicName ?? words(failure.failure.kind))
    }

    /// What followed a failed call, in words.
    static func afterFailure(_ after: AfterFailure, _ source: DevicePolicy.Source) -> String {
        switch after {
        case .closedUntilRetried where source == .vmm:
            "releasing the device; retried when a VMM opens it again, on reload, or when its policy changes"
        case .closedUntilRetried:
            "closing the device; retried when it returns, on reload, or when its policy changes"
        case .gaveUpAfterExit:
            "still refused after exiting low power; giving up on this device until it returns or its policy changes"
        case .closedInstead:
            "closing the device instead (the kernel exits low power on close)"
        case .armedAnyway:
            "could not set d3cold_allowed back to 1; arming anyway"
        case .notArmed:
            "could not forbid D3cold, so the device is not armed (its policy says it may not resume from D3cold)"
        }
    }

    /// Why an open failed, when the VFIO layer had no words of its own.
    static func openFailure(_ failure: CallFailure) -> String {
        switch (failure.kind, failure.errno) {
        case (.busy, _): "the device or its IOMMU group is held by another process (a VMM?); it is taken as soon as that process exits"
        case (_, .notPermitted?), (_, .permissionDenied?): "permission denied opening the device: the daemon needs /dev/vfio access (DeviceAllow=, root)"
        default: "cannot open the device"
        }
    }

    /// A failure no errno names (no call answered): what the daemon saw.
    static func words(_ kind: CallFailure.Kind) -> String {
        switch kind {
        case .gone: "the device is gone or not bound to vfio-pci"
        case .unsupported: "no low-power feature"
        case .busy: "held by another process"
        case .alreadyEngaged: "already in low power"
        case .refused: "refused"
        }
    }

    /// The mode in a sentence; VFIO_MODE carries it as the configuration spells it.
    static func words(_ mode: ArmMode) -> String {
        switch mode {
        case .oneShot: "one-shot"
        case .reentrant: "re-entrant"
        }
    }
}

/// Errors that mean "not there yet" rather than "was there and went away".
private let waitingCodes: Set<VFIOError.Code> = [.deviceNotFound, .notBoundToVFIO, .noIOMMUGroup, .groupNotViable, .vfioUnavailable]
