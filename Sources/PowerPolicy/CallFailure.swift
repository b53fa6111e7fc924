import SystemPackage

/// Why a call on the device failed, in the terms the core decides by. The daemon says which
/// from what the VFIO layer reported; `errno` is what the kernel answered, and nil where no
/// call answered (a device found unbound in sysfs before any ioctl): the core never invents
/// an errno to classify a failure, and the journal's VFIO_ERRNO is only ever the kernel's.
public struct CallFailure: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// Removed, unbound, or broken (stuck in D3cold): the daemon closes its file so the
        /// kernel can finish an unbind, and waits for the device to return.
        case gone
        /// The kernel or the driver offers no low power for it: never retried.
        case unsupported
        /// Another process holds its group (EBUSY): retried when that process exits.
        case busy
        /// An entry found low power engaged already (EINVAL): a previous holder left it so.
        case alreadyEngaged
        /// Anything else the kernel or the host refused.
        case refused
    }

    public var kind: Kind
    public var errno: Errno?

    public init(_ kind: Kind, errno: Errno?) {
        self.kind = kind
        self.errno = errno
    }

    /// What an errno alone says, where nothing more is known (a sysfs write): ENOTTY is no
    /// feature; ENODEV, EIO, ENXIO and ENOENT a device gone or broken; EBUSY a held group.
    public init(errno: Errno) {
        let kind: Kind = switch errno {
        case .inappropriateIOCTLForDevice: .unsupported
        case .operationNotSupportedByDevice, .ioError, .noSuchAddressOrDevice, .noSuchFileOrDirectory: .gone
        case .resourceBusy: .busy
        default: .refused
        }
        self.init(kind, errno: errno)
    }
}
