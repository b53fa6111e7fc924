import Logging

/// Every kind of event the daemon logs, each with a fixed journal MESSAGE_ID.
///
/// The ids are forever: operators filter on them (`journalctl MESSAGE_ID=...`) and
/// systemd/vfio-powerd.catalog explains each one for `journalctl -x`. A new kind of event
/// gets a new id (`python3 -c 'import uuid; print(uuid.uuid4().hex)'`) and a catalog entry;
/// an id is never reused or changed.
///
/// Log an event with its id in the metadata:
///
///     logger.info("\(address): armed (\(mode))",
///                 metadata: DaemonEvent.armed.metadata([JournalField.device: "\(address)"]))
public enum DaemonEvent: String, CaseIterable, Sendable {
    /// The daemon is up and has told systemd READY=1.
    case started
    /// Shutdown began (SIGTERM/SIGINT).
    case stopping
    /// A reload applied a new configuration.
    case reloaded
    /// A configuration (at start or on reload) was invalid and was not applied.
    case configRejected
    /// A device was put into low power.
    case armed
    /// An armed device woke (its wakeup eventfd fired).
    case woke
    /// A device that had woken was put into low power again after its re-arm delay.
    case rearmed
    /// A device woke more often than its policy allows; the daemon backs off.
    case flappingStarted
    /// A flapping device has been quiet again; normal re-arming resumes.
    case flappingEnded
    /// Asking the kernel for low power failed.
    case armFailed
    /// Bringing a device out of low power (on stop, reload or policy change) failed.
    case wakeFailed
    /// A configured device is not managed: it is not bound to vfio-pci, the kernel lacks the
    /// low-power feature for it, or someone else holds it.
    case deviceSkipped
    /// A managed device disappeared or failed (ENODEV, EIO, unbound, removed); it was closed.
    case deviceGone
    /// A device that was gone is back and managed again.
    case deviceBack
    /// The daemon stopped managing a device (removed from the configuration, or shutdown)
    /// and left it awake.
    case deviceReleased
    /// The operator woke a device through the control interface (`vfio-powerctl wake`); it
    /// is kept out of low power until a deadline or the next `vfio-powerctl arm`.
    case heldAwake
    /// A control client was refused a call that changes something (Arm, Wake, Reload).
    case controlRefused
    /// A `vmm` device: the daemon duplicated the device file of the VMM that holds it.
    case adopted
    /// A `vmm` device: the duplicate was closed because the VMM exited or let go of the
    /// device, so the next VM can start on it.
    case vmmReleased
    /// A `vmm` device: a process holds it that the daemon leaves alone (not an allowed VMM,
    /// its device file cannot be told apart, or ptrace rights were refused).
    case adoptionRefused
    /// A `vmm` device: armed because its guest put it into D3hot.
    case armedInGuestD3
    /// A `vmm` device: a launcher or VMM sent its device file over the control socket, and
    /// the kernel confirmed it is this device's.
    case handoffReceived
    /// A device was armed, but the kernel did not suspend it within the bound: the status
    /// says "armed, but the kernel keeps it awake", and this entry says why, once.
    case keptAwake
    /// A device the kernel had kept awake after arming has suspended after all.
    case suspendedAtLast
    /// A call on a device (open, arm, exit, a d3cold_allowed write) has not returned within
    /// the bound: the device may be hung. No other device waits for it.
    case deviceStuck

    /// The journal MESSAGE_ID: 32 lowercase hex digits.
    public var messageID: String {
        switch self {
        case .started: return "02dd449b645941f4a867d9ec758d81b4"
        case .stopping: return "ff55aae19bc141f38818d87f347f1977"
        case .reloaded: return "25938282f9544edcac862caae3a47fd0"
        case .configRejected: return "42d48b2d83814325b0bbdbbd9b8e8ec9"
        case .armed: return "f0d77591cc6e4f6c84ae6fca434db188"
        case .woke: return "26b0b23d85094099b2b7dade736c3580"
        case .rearmed: return "351fabf97d8246ab9a23ea8158bc7d52"
        case .flappingStarted: return "e6bf0ea41fee4bd5820454992f0de6aa"
        case .flappingEnded: return "3601fbfd932b446a942e806355f7a53b"
        case .armFailed: return "8387996d5f3942dc995eec09ee2d7b54"
        case .wakeFailed: return "cfe55f1197de4c8c88bb6aa3da95fa6d"
        case .deviceSkipped: return "6b13699fa7744b828e21576041fc3670"
        case .deviceGone: return "92bf75dcec894182848e58cf18444baa"
        case .deviceBack: return "129bee0d85364af7b35aa1e52aff3a82"
        case .deviceReleased: return "12c86ff8cc4a4e28bc22e158ba399180"
        case .heldAwake: return "eaa63e2528604a3a9ab8067fce24a31c"
        case .controlRefused: return "d9ab805be9504611a34d8953c1ad03cf"
        case .adopted: return "4bd9bcb50b4e4965ae021860a1a02ff6"
        case .vmmReleased: return "2b2c4b5ee835458292ac55e78211c69c"
        case .adoptionRefused: return "328d7da0c5e94e239e77ee26ae650300"
        case .armedInGuestD3: return "ddb52301f2e44aa4bc327743d4f353e7"
        case .handoffReceived: return "53c8b930b2954eb390af1cd0c421dddb"
        case .keptAwake: return "35be08c21f3d4446a61f40f0f60e1f83"
        case .suspendedAtLast: return "6394f886530b43dea9dab48f1cf77987"
        case .deviceStuck: return "463cf77d34014ce4b01a801c284d15cb"
        }
    }

    /// The level the daemon logs this event at (the journal's PRIORITY follows from it).
    public var defaultPriority: Logger.Level {
        switch self {
        case .armed, .woke, .rearmed, .deviceReleased, .armedInGuestD3: return .info
        case .started, .stopping, .reloaded, .flappingEnded, .deviceBack, .heldAwake, .adopted, .vmmReleased,
             .handoffReceived, .suspendedAtLast: return .notice
        case .flappingStarted, .deviceSkipped, .deviceGone, .controlRefused, .adoptionRefused, .keptAwake, .deviceStuck: return .warning
        case .configRejected, .armFailed, .wakeFailed: return .error
        }
    }

    /// `extra` with this event's MESSAGE_ID added.
    public func metadata(_ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var metadata = extra
        metadata[JournalField.messageID] = .string(messageID)
        return metadata
    }
}

/// Names of the journal fields the daemon sets, for metadata keys and for operators'
/// filters (`journalctl VFIO_DEVICE=0000:01:00.0`). They are valid journal field names, so
/// the journal handler passes them through unchanged.
public enum JournalField {
    /// The event's id (``DaemonEvent/messageID``).
    public static let messageID = "MESSAGE_ID"
    /// The device's PCI address, `0000:01:00.0`.
    public static let device = "VFIO_DEVICE"
    /// The low-power mode: `one-shot` or `re-entrant`.
    public static let mode = "VFIO_MODE"
    /// Wakes counted (for `woke`: coalesced wakes in this event; for flapping: in the window).
    public static let wakes = "VFIO_WAKES"
    /// Microseconds the device spent in low power before this wake.
    public static let lowPowerUsec = "VFIO_LOW_POWER_USEC"
    /// The errno of a failure, decimal (the journal's own well-known field name).
    public static let errno = "ERRNO"
    /// How the daemon holds the device: `vmm` or `own`.
    public static let source = "VFIO_SOURCE"
    /// The VMM (or other process) holding a `vmm` device: its pid and executable.
    public static let vmmPID = "VFIO_VMM_PID"
    public static let vmmExecutable = "VFIO_VMM_EXE"
}
