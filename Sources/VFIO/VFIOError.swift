import Glibc
import CVFIO
import SystemPackage

/// Something the kernel or the host refused, explained in the domain's words.
///
/// Every error names the device (when there is one), what was being done, the errno the
/// kernel gave (when it gave one), what that means for low power, and what to do about it.
/// `description` is the one line an operator reads.
public struct VFIOError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What went wrong, as a kind a caller can switch over.
    public enum Code: String, Equatable, Sendable {
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
        /// No VFIO on this host: /dev/vfio/vfio is missing.
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

    public let code: Code
    public let device: PCIAddress?
    /// What was being done, e.g. "arm one-shot low power".
    public let operation: String
    public let errno: Errno?
    /// What happened, in the domain's words.
    public let explanation: String
    /// What to do about it; nil when there is nothing to do.
    public let advice: String?
    /// `groupBusy`: the processes /proc shows holding the group (empty when it shows none).
    public let holders: [ProcessHolding]

    public init(_ code: Code, device: PCIAddress?, operation: String, errno: Errno? = nil,
                explanation: String, advice: String? = nil, holders: [ProcessHolding] = []) {
        self.code = code
        self.device = device
        self.operation = operation
        self.errno = errno
        self.explanation = explanation
        self.advice = advice
        self.holders = holders
    }

    public var description: String {
        var line = device.map { "\($0): " } ?? ""
        line += "cannot \(operation): \(explanation)"
        if let errno { line += " (\(errno.symbolicName))" }
        if let advice { line += ". \(advice)" }
        return line
    }
}

extension Errno {
    /// The C name of the error, "EINVAL", as operators grep for it (glibc's strerrorname_np).
    public var symbolicName: String {
        guard let name = cvfio_errno_name(rawValue) else { return "errno \(rawValue)" }
        return String(cString: name)
    }
}
