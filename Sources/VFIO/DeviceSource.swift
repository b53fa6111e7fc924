import SystemPackage

/// A device the daemon can put into low power: the real `VFIODevice`, or a simulated one in
/// tests and benchmarks. The calls mirror the kernel's: each may wake the device.
public protocol LowPowerDevice: AnyObject {
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

/// Where the daemon gets a device from (PRODUCT.md, "device source"). `own` opens it through
/// VFIO; `handoff` and `adopt` will receive an fd from a VMM later.
public protocol DeviceSource: AnyObject {
    /// Checks, opens and probes the device; nothing is armed.
    func openDevice(_ address: PCIAddress) throws(VFIOError) -> any LowPowerDevice
    /// Whether the device could be opened now as far as sysfs and /dev tell (present, bound
    /// to vfio-pci, a viable IOMMU group), without opening anything.
    func isAvailable(_ address: PCIAddress) -> Bool
    /// Writes d3cold_allowed (resumes the device: only before arming).
    func setD3coldAllowed(_ allowed: Bool, for address: PCIAddress) throws(SysfsError)
}

/// The `own` source: the daemon opens devices itself through the group path.
public final class OwnDeviceSource: DeviceSource, @unchecked Sendable {
    public let session: VFIOSession

    public init(session: VFIOSession) { self.session = session }

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
