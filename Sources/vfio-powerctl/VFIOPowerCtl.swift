import ArgumentParser

/// vfio-powerctl: the operator's command for vfio-powerd.
@main
struct VFIOPowerCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfio-powerctl",
        abstract: "Inspect and control low power of vfio-pci devices.",
        discussion: """
            probe works without the daemon: it opens the device itself, so the device must \
            not be held by the daemon or a VM while it runs.
            """,
        version: "0.1.0",
        subcommands: [Probe.self]
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
