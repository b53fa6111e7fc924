import Glibc
import CVFIO
import SystemPackage

/// Something the kernel or the host refused, as a reason: which device, what was being
/// done, why (with the facts a sentence about it needs), and the errno the kernel gave.
///
/// No words here: VFIOWords turns an error into the line an operator reads (`description`).
public struct VFIOError: Error, Equatable, Sendable {
    /// What went wrong, as a kind a caller can switch over or compare.
    public enum Code: String, Hashable, Sendable {
        /// No such PCI device in sysfs.
        case deviceNotFound
        /// The device is bound to another driver (or none), not vfio-pci.
        case notBoundToVFIO
        /// The device has no IOMMU group (IOMMU off, or no noiommu mode).
        case noIOMMUGroup
        /// Another device of the IOMMU group is bound to a host driver.
        case groupNotViable
        /// The group (or the device) is held by another process: EBUSY.
        case groupBusy
        /// No VFIO on this host: /dev/vfio/vfio (or the group's node) is missing.
        case vfioUnavailable
        /// The kernel offers only the cdev interface (/dev/vfio/devices), which is not used yet.
        case cdevOnly
        /// EPERM or EACCES.
        case notPermitted
        /// EINVAL on an entry: low power is already engaged on this device.
        case alreadyEngaged
        /// ENOTTY: the kernel (older than 6.1) or the driver does not offer the feature.
        case featureAbsent
        /// ENODEV: the device was removed or unbound.
        case deviceGone
        /// EIO: the device failed to resume (stuck in D3cold).
        case resumeFailed
        /// EBADF, or EINVAL for an fd that is not an eventfd.
        case badEventFD
        /// The handle was closed.
        case closed
        /// Anything else; `errno` says what.
        case unexpected
    }

    /// Why, with the facts that say it exactly.
    public enum Reason: Equatable, Sendable {
        /// No such device in `searched` (sysfs' bus/pci/devices).
        case deviceNotFound(searched: FilePath)
        /// Bound to `driver` (nil: to none) instead of vfio-pci.
        case notBoundToVFIO(driver: String?)
        case noIOMMUGroup
        /// `member`, in the same IOMMU group, is bound to the host driver `driver`.
        case groupMemberOnHostDriver(group: String, member: PCIAddress, driver: String)
        /// The kernel says the group (by its /dev/vfio name) is not viable.
        case groupNotViable(group: String)
        /// Opening the group's node gave EBUSY; `holders` as /proc shows them (maybe none).
        case groupBusy(node: FilePath, holders: [ProcessHolding])
        /// A call on the device gave EBUSY.
        case deviceBusy
        /// The VFIO container node is missing.
        case noVFIO(missing: FilePath)
        /// The group's node is missing.
        case noGroupNode(FilePath)
        case cdevOnly
        /// A step of opening the group was refused (EPERM, EACCES).
        case groupStepRefused(GroupStep, node: FilePath)
        /// A step of opening the group failed otherwise.
        case groupStepFailed(GroupStep)
        /// The container speaks an API version this header does not describe.
        case unknownAPIVersion
        /// A call on the device was refused (EPERM, EACCES).
        case permissionRefused
        /// EINVAL on an entry: something is engaged already.
        case alreadyEngaged
        /// ENOTTY for `feature` (nil: for the call made).
        case featureAbsent(LowPowerFeature?)
        case deviceGone
        case resumeFailed
        case badEventFD
        /// This handle of the device was closed.
        case closed
        /// The VMM's device file this handle duplicated was released.
        case released
        case noConfigRegion
        /// A system call the layer needs failed.
        case systemCallFailed(SystemCall)
        /// The kernel refused with an errno nothing above expects.
        case kernelRefused
    }

    /// The steps of opening a VFIO group.
    public enum GroupStep: Equatable, Sendable {
        case openContainer(FilePath)
        case openGroup(FilePath)
        case getStatus
        case setContainer
        case setIOMMU
    }

    public enum SystemCall: Equatable, Sendable {
        case eventfd
        case pidfdOpen
    }

    /// What was being done.
    public enum Operation: Equatable, Sendable {
        case openDevice
        /// Opening the IOMMU group by its /dev/vfio name.
        case openGroup(String)
        case readDeviceInfo
        /// Arming an entry feature.
        case arm(LowPowerFeature)
        case exitLowPower
        case accessDevice
        /// Accessing the device with VFIO_DEVICE_GET_INFO.
        case accessDeviceInfo
        case readConfigSpace
        case writeConfigSpace
        case lookForVMM
        case followVMM(pid: Int32)
        case createEventFD
        case manageLowPower
    }

    public let reason: Reason
    public let device: PCIAddress?
    public let operation: Operation
    public let errno: Errno?

    public init(_ reason: Reason, device: PCIAddress?, operation: Operation, errno: Errno? = nil) {
        self.reason = reason
        self.device = device
        self.operation = operation
        self.errno = errno
    }

    public var code: Code {
        switch reason {
        case .deviceNotFound: .deviceNotFound
        case .notBoundToVFIO: .notBoundToVFIO
        case .noIOMMUGroup: .noIOMMUGroup
        case .groupMemberOnHostDriver, .groupNotViable: .groupNotViable
        case .groupBusy, .deviceBusy: .groupBusy
        case .noVFIO, .noGroupNode: .vfioUnavailable
        case .cdevOnly: .cdevOnly
        case .groupStepRefused, .permissionRefused: .notPermitted
        case .alreadyEngaged: .alreadyEngaged
        case .featureAbsent: .featureAbsent
        case .deviceGone: .deviceGone
        case .resumeFailed: .resumeFailed
        case .badEventFD: .badEventFD
        case .closed, .released: .closed
        case .groupStepFailed, .unknownAPIVersion, .noConfigRegion, .systemCallFailed, .kernelRefused: .unexpected
        }
    }

    /// `groupBusy`: the processes /proc shows holding the group (empty when it shows none).
    public var holders: [ProcessHolding] {
        if case .groupBusy(_, let holders) = reason { return holders }
        return []
    }
}

extension Errno {
    /// The C name of the error, "EINVAL", as operators grep for it (glibc's strerrorname_np).
    public var symbolicName: String {
        guard let name = cvfio_errno_name(rawValue) else { return "errno \(rawValue)" }
        return String(cString: name)
    }
}
