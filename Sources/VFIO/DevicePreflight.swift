import SystemPackage

/// The checks made before a device is opened, each failing with a reason that names what is
/// missing (VFIOWords says what to do about it). They read sysfs and /dev only; nothing
/// touches the device.
public struct DevicePreflight: Sendable {
    public let sysfsRoot: FilePath
    public let devRoot: FilePath

    public init(sysfsRoot: FilePath = "/sys", devRoot: FilePath = "/dev") {
        self.sysfsRoot = sysfsRoot
        self.devRoot = devRoot
    }

    /// Drivers that may share an IOMMU group with a VFIO device: they never do DMA on behalf of
    /// the host (the kernel marks them driver_managed_dma).
    public static let groupFriendlyDrivers: Set<String> = ["pci-stub", "pcieport"]

    /// vfio-pci itself, or one of its variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, ...).
    public static func isVFIOPCIDriver(_ name: String) -> Bool {
        name == "vfio-pci" || name.hasSuffix("_vfio_pci") || name.hasSuffix("-vfio-pci")
    }

    /// Where the device's group node is, once every check has passed.
    public struct Verdict: Equatable, Sendable {
        public let address: PCIAddress
        public let driver: String
        /// The name under /dev/vfio: "5", or "noiommu-5".
        public let groupName: String
        public let groupMembers: [PCIAddress]
    }

    /// Runs every check in order and returns where to open the device, or the first failure.
    public func check(_ address: PCIAddress) throws(VFIOError) -> Verdict {
        let sysfs = SysfsPCIDevice(address: address, sysfsRoot: sysfsRoot)
        func failure(_ reason: VFIOError.Reason) -> VFIOError {
            VFIOError(reason, device: address, operation: .openDevice)
        }
        guard sysfs.exists else { throw failure(.deviceNotFound(searched: sysfsRoot.appending("bus/pci/devices"))) }
        let driver = sysfs.driver()
        guard let driver, Self.isVFIOPCIDriver(driver) else { throw failure(.notBoundToVFIO(driver: driver)) }
        guard let group = sysfs.iommuGroup() else { throw failure(.noIOMMUGroup) }
        let members = (try? sysfs.iommuGroupMembers()) ?? [address]
        for member in members where member != address {
            let memberDriver = SysfsPCIDevice(address: member, sysfsRoot: sysfsRoot).driver()
            if let memberDriver, !Self.isVFIOPCIDriver(memberDriver), !Self.groupFriendlyDrivers.contains(memberDriver) {
                throw failure(.groupMemberOnHostDriver(group: group, member: member, driver: memberDriver))
            }
        }
        let vfio = devRoot.appending("vfio")
        guard Syscalls.exists(vfio.appending("vfio")) else {
            if Syscalls.exists(sysfs.directory.appending("vfio-dev")) { throw failure(.cdevOnly) }
            throw failure(.noVFIO(missing: vfio.appending("vfio")))
        }
        for name in [group, "noiommu-\(group)"] where Syscalls.exists(vfio.appending(name)) {
            return Verdict(address: address, driver: driver, groupName: name, groupMembers: members)
        }
        throw failure(.noGroupNode(vfio.appending(group)))
    }
}

/// Who holds a VFIO group node open, from /proc (best effort: needs permission to read
/// other processes' fd tables; root has it).
public struct ProcessHolding: Equatable, Sendable, CustomStringConvertible {
    public let pid: Int32
    public let command: String

    public init(pid: Int32, command: String) {
        self.pid = pid
        self.command = command
    }

    public var description: String { "\(command) (pid \(pid))" }

    /// Every process with `node` among its open files.
    public static func holders(of node: FilePath, procRoot: FilePath = "/proc") -> [ProcessHolding] {
        guard case .success(let entries) = Syscalls.listDirectory(procRoot) else { return [] }
        var holders: [ProcessHolding] = []
        for entry in entries {
            guard let pid = Int32(entry) else { continue }
            let fdDirectory = procRoot.appending(entry).appending("fd")
            guard case .success(let fds) = Syscalls.listDirectory(fdDirectory) else { continue }
            let holds = fds.contains { fd in
                if case .success(let target) = Syscalls.readlink(fdDirectory.appending(fd)) {
                    return FilePath(target) == node
                }
                return false
            }
            guard holds else { continue }
            let command = (try? Syscalls.readSmallFile(procRoot.appending(entry).appending("comm")).get())?
                .trimmingTrailingWhitespace() ?? "?"
            holders.append(ProcessHolding(pid: pid, command: command))
        }
        return holders.sorted { $0.pid < $1.pid }
    }
}
