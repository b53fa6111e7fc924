import SystemPackage

/// The values the state machine needs about a `vmm` device's holder and its guest. The daemon
/// finds them (in /proc and sysfs); the machine only decides on them.

/// The process that holds a device's VFIO group: a VMM, or something the daemon leaves alone.
public struct VMMHolder: Hashable, Sendable, CustomStringConvertible {
    public var pid: Int32
    /// The executable (`/proc/PID/exe`), e.g. "/usr/bin/qemu-system-x86_64".
    public var executable: String

    public init(pid: Int32, executable: String) {
        self.pid = pid
        self.executable = executable
    }

    /// "qemu-system-x86_64 (pid 4242)"
    public var description: String {
        "\(executable.split(separator: "/").last.map(String.init) ?? executable) (pid \(pid))"
    }
}

/// How the daemon came to hold a VMM's device file.
public enum AdoptionMethod: String, Hashable, Sendable {
    /// The kernel named the device in the VMM's fdinfo (`vfio-device-syspath`, Linux >= 6.18).
    case fdinfo
    /// An older kernel names no device: the VMM holds exactly one VFIO device file, and the
    /// device's group has exactly one device, so the file can only be this device's.
    case unambiguous
    /// A launcher or VMM sent the file over the control socket (SCM_RIGHTS), and fdinfo
    /// confirmed it is this device's.
    case handoff
}

/// Why the daemon did not adopt the device from the process that holds it.
public enum AdoptionRefusal: Hashable, Sendable {
    /// The holder's executable is not in `vmm_executables`.
    case executableNotAllowed
    /// The kernel names no device in fdinfo (before 6.18) and the holder has `deviceFiles`
    /// VFIO device files, or the group has more than one device: any pick would be a guess.
    case ambiguous(deviceFiles: Int)
    /// The holder has the group open but no device file yet (a VMM that is still starting).
    case noDeviceFile
    /// pidfd_open or pidfd_getfd was refused (ptrace rights, Yama's ptrace_scope = 3).
    case notPermitted(Errno)
}

/// The wakeup eventfd of the daemon's previous run, back from systemd's fd store when the
/// device is adopted again after a restart: the previous run's one-shot arming signals it.
public struct KeptWakeup: Hashable, Sendable {
    /// Its counter: the wakes that happened while the daemon was down (0: none, so if the
    /// device is still suspended, the previous arming is still engaged).
    public var wakesWhileAway: UInt64

    public init(wakesWhileAway: UInt64) { self.wakesWhileAway = wakesWhileAway }
}

/// Why a `vmm` device's duplicate was closed.
public enum ReleaseReason: Hashable, Sendable {
    /// The VMM exited (its pidfd became readable).
    case vmmExited
    /// The VMM closed its own device file (hot-unplug from the guest, `device_del`).
    case vmmClosedDevice
    /// The operator or the launcher that handed the file over asked (`Release`).
    case requested
}

/// One look at a `vmm` device, taken from files that never wake it.
public struct GuestPowerSample: Hashable, Sendable {
    /// sysfs `power_state`: what the guest last wrote to PMCSR (QEMU forwards the write).
    public var powerState: PowerState
    /// sysfs `power/runtime_status`: whether the kernel has the device suspended.
    public var runtimeSuspended: Bool
    /// Whether the VMM still holds the device file the daemon duplicated.
    public var vmmHoldsDevice: Bool

    public init(powerState: PowerState, runtimeSuspended: Bool, vmmHoldsDevice: Bool = true) {
        self.powerState = powerState
        self.runtimeSuspended = runtimeSuspended
        self.vmmHoldsDevice = vmmHoldsDevice
    }

    public enum PowerState: Hashable, Sendable {
        case d0, d3hot, other
    }

    /// The guest has put the device into D3hot and the kernel keeps it awake for the VMM's
    /// open file: what the `guest-d3` trigger arms on.
    public var isGuestD3: Bool { powerState == .d3hot && !runtimeSuspended }
}
