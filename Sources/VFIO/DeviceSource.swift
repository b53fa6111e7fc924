import SystemPackage

/// A device the daemon can put into low power: the real `VFIODevice`, or a simulated one in
/// tests and benchmarks. The calls mirror the kernel's: each may wake the device.
/// Sendable: the daemon calls it on the device's own queue and on the daemon's queue.
public protocol LowPowerDevice: AnyObject, Sendable {
    var address: PCIAddress { get }
    /// What the kernel answered to PROBE at open.
    var lowPowerSupport: LowPowerSupport { get }
    /// Signalled when the kernel wants the device back (unbind, hot-unplug); nil if none.
    var removalRequest: EventFD? { get }
    func arm(_ entry: LowPowerEntry) throws(VFIOError)
    func exitLowPower() throws(VFIOError)
    /// The wakeup eventfd fired: the one-shot entry is over.
    func noteWoke()
    func close()
}

extension VFIODevice: LowPowerDevice {}

/// Where the daemon gets a device from (PRODUCT.md, "device source"): `own` opens it through
/// VFIO; `vmm` adopts the open file of the VMM that holds it. The real kernel is
/// `KernelDeviceSource`; tests and benchmarks use a simulated one.
/// Sendable: the daemon calls it from its queue, the devices' queues and the lookout at once.
public protocol DeviceSource: AnyObject, Sendable {
    /// Checks, opens and probes the device; nothing is armed.
    func openDevice(_ address: PCIAddress) throws(VFIOError) -> any LowPowerDevice
    /// Whether the device could be opened now as far as sysfs and /dev tell (present, bound
    /// to vfio-pci, a viable IOMMU group), without opening anything.
    func isAvailable(_ address: PCIAddress) -> Bool
    /// Writes d3cold_allowed (resumes the device: only before arming).
    func setD3coldAllowed(_ allowed: Bool, for address: PCIAddress) throws(SysfsError)

    // MARK: vmm

    /// Looks for the process that holds the device and duplicates its device file if its
    /// executable is allowed. `candidates`: only these processes (the operator's pid, or the
    /// fallback scan's VMMs); nil: every process.
    func adopt(_ address: PCIAddress, candidates: [Int32]?, allowed: ExecutableAllowList) -> AdoptionOutcome
    /// The running processes whose executable is allowed: one readlink per process, for the
    /// fallback scan.
    func runningVMMs(allowed: ExecutableAllowList) -> [Int32]
    /// The device nodes whose open announces a VMM (for inotify).
    func announcingNodes(_ address: PCIAddress) -> [FilePath]
    /// `power_state` and `runtime_status` from sysfs (never wakes the device), and whether the
    /// VMM still holds the adopted file. Nil when sysfs no longer has the device.
    func sampleGuest(_ device: any LowPowerDevice) -> GuestSample?
    /// Whether the kernel suspended an armed device, and the facts that say why not:
    /// `power/runtime_status`, and only when it is not suspended `power/control` and
    /// `power/runtime_active_kids`. Never wakes the device. Nil when sysfs no longer has it.
    func residency(_ address: PCIAddress) -> ResidencyRead?
    /// Checks a device file sent over the control socket and takes it over (see
    /// `VMMFinder.takeHandedOver`); closes `fd` when it refuses.
    func takeHandedOver(_ fd: Int32, for address: PCIAddress, sender: Int32) -> Result<(any LowPowerDevice, VMMProcess), HandoffRefusal>
}

/// One look at an armed device's runtime PM, from files that never wake it.
public struct ResidencyRead: Equatable, Sendable {
    public var runtimeStatus: RuntimeStatus
    /// Read only when the device is not suspended.
    public var powerControl: PowerControl?
    public var activeChildren: Int?

    public init(runtimeStatus: RuntimeStatus, powerControl: PowerControl? = nil, activeChildren: Int? = nil) {
        self.runtimeStatus = runtimeStatus
        self.powerControl = powerControl
        self.activeChildren = activeChildren
    }
}

/// One look at an adopted device, from files that never wake it.
public struct GuestSample: Equatable, Sendable {
    public var powerState: PCIPowerState
    /// Read only when `powerState` is D3hot: a device the kernel has runtime-suspended is in
    /// D3hot (or D3cold), so in D0 it is active.
    public var runtimeStatus: RuntimeStatus
    public var vmmHoldsDevice: Bool

    public init(powerState: PCIPowerState, runtimeStatus: RuntimeStatus, vmmHoldsDevice: Bool) {
        self.powerState = powerState
        self.runtimeStatus = runtimeStatus
        self.vmmHoldsDevice = vmmHoldsDevice
    }
}

/// The real kernel: `own` devices are opened through the group path, `vmm` devices adopted
/// from their VMM (`VMMFinder`).
public final class KernelDeviceSource: DeviceSource, @unchecked Sendable {
    public let session: VFIOSession
    public let finder: VMMFinder

    public init(session: VFIOSession) {
        self.session = session
        self.finder = VMMFinder(sysfsRoot: session.preflight.sysfsRoot, devRoot: session.preflight.devRoot,
                                procRoot: session.procRoot)
    }

    public func adopt(_ address: PCIAddress, candidates: [Int32]?, allowed: ExecutableAllowList) -> AdoptionOutcome {
        finder.adopt(address, candidates: candidates, allowed: allowed)
    }

    public func runningVMMs(allowed: ExecutableAllowList) -> [Int32] { finder.runningVMMs(allowed: allowed) }

    public func announcingNodes(_ address: PCIAddress) -> [FilePath] { finder.announcingNodes(address) }

    public func takeHandedOver(_ fd: Int32, for address: PCIAddress, sender: Int32) -> Result<(any LowPowerDevice, VMMProcess), HandoffRefusal> {
        finder.takeHandedOver(fd, for: address, sender: sender)
    }

    public func sampleGuest(_ device: any LowPowerDevice) -> GuestSample? {
        guard let adopted = device as? AdoptedDevice, let powerState = adopted.powerState?.read() else { return nil }
        var runtimeStatus = RuntimeStatus.active
        if powerState != .d0 {
            let sysfs = SysfsPCIDevice(address: device.address, sysfsRoot: session.preflight.sysfsRoot)
            guard let status = try? sysfs.runtimeStatus() else { return nil }
            runtimeStatus = status
        }
        return GuestSample(powerState: powerState, runtimeStatus: runtimeStatus, vmmHoldsDevice: adopted.vmmStillHoldsDevice())
    }

    public func residency(_ address: PCIAddress) -> ResidencyRead? {
        let sysfs = SysfsPCIDevice(address: address, sysfsRoot: session.preflight.sysfsRoot)
        guard let status = try? sysfs.runtimeStatus() else { return nil }
        if status == .suspended { return ResidencyRead(runtimeStatus: status) }
        return ResidencyRead(runtimeStatus: status, powerControl: try? sysfs.powerControl(),
                             activeChildren: try? sysfs.runtimeActiveChildren())
    }

    public func openDevice(_ address: PCIAddress) throws(VFIOError) -> any LowPowerDevice {
        try session.openDevice(address)
    }

    public func isAvailable(_ address: PCIAddress) -> Bool {
        (try? session.preflight.check(address)) != nil
    }

    public func setD3coldAllowed(_ allowed: Bool, for address: PCIAddress) throws(SysfsError) {
        try SysfsPCIDevice(address: address, sysfsRoot: session.preflight.sysfsRoot).setD3coldAllowed(allowed)
    }
}
