import ArgumentParser

/// vfio-powerctl: the operator's command for vfio-powerd.
@main
struct VFIOPowerCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfio-powerctl",
        abstract: "Inspect and control low power of vfio-pci devices.",
        discussion: """
            status, show, monitor, arm, wake and reload talk to the running daemon over its \
            control socket (/run/vfio-powerd/io.vfiopowerd.Manager). check-config and probe \
            work without it; probe opens the device itself, so the device must not be held \
            by the daemon or a VM while it runs.

            Exit status: 0 success; 1 no such device, or it cannot do low power (probe); \
            64 usage; 69 the daemon is not running, or the device cannot be opened (probe); \
            70 unexpected failure; 77 permission denied; 78 configuration rejected.
            """,
        version: "0.1.0",
        subcommands: [Status.self, Show.self, Monitor.self, Arm.self, Wake.self, Adopt.self, Reload.self, CheckConfig.self, Probe.self]
    )
}

/// Exit statuses scripts can rely on (sysexits.h where one fits).
enum ExitStatus {
    /// The device cannot do low power, or the cycle did not behave as the kernel documents.
    static let lowPowerUnavailable: Int32 = 1
    /// EX_UNAVAILABLE: the device could not be opened (not bound, busy, no VFIO, ...).
    static let cannotOpen: Int32 = 69
    /// EX_NOPERM.
    static let notPermitted: Int32 = 77
}
