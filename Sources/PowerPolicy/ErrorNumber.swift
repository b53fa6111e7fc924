import Glibc

/// An errno value as the kernel returned it. The core only classifies it; it never calls
/// anything that sets errno. (A plain wrapper so PowerPolicy needs no dependency.)
public struct ErrorNumber: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = ErrorNumber(Glibc_EPERM)
    public static let ENOENT = ErrorNumber(Glibc_ENOENT)
    public static let EIO = ErrorNumber(Glibc_EIO)
    public static let ENXIO = ErrorNumber(Glibc_ENXIO)
    public static let EBADF = ErrorNumber(Glibc_EBADF)
    public static let EACCES = ErrorNumber(Glibc_EACCES)
    public static let EBUSY = ErrorNumber(Glibc_EBUSY)
    public static let ENODEV = ErrorNumber(Glibc_ENODEV)
    public static let EINVAL = ErrorNumber(Glibc_EINVAL)
    public static let ENOTTY = ErrorNumber(Glibc_ENOTTY)

    /// The symbolic name ("ENODEV") for the values the core reasons about, else "errno N".
    public var name: String {
        switch self {
        case .EPERM: "EPERM"
        case .ENOENT: "ENOENT"
        case .EIO: "EIO"
        case .ENXIO: "ENXIO"
        case .EBADF: "EBADF"
        case .EACCES: "EACCES"
        case .EBUSY: "EBUSY"
        case .ENODEV: "ENODEV"
        case .EINVAL: "EINVAL"
        case .ENOTTY: "ENOTTY"
        default: "errno \(rawValue)"
        }
    }

    public var description: String { name }

    /// The device is gone or broken: removed, unbound, or stuck in D3cold (the kernel's
    /// resume failed). The holder must close its fd so the kernel can finish an unbind.
    var meansDeviceGone: Bool { self == .ENODEV || self == .EIO || self == .ENXIO || self == .ENOENT }
}

// The C macros under names that do not collide with the static members above.
private let Glibc_EPERM: Int32 = EPERM
private let Glibc_ENOENT: Int32 = ENOENT
private let Glibc_EIO: Int32 = EIO
private let Glibc_ENXIO: Int32 = ENXIO
private let Glibc_EBADF: Int32 = EBADF
private let Glibc_EACCES: Int32 = EACCES
private let Glibc_EBUSY: Int32 = EBUSY
private let Glibc_ENODEV: Int32 = ENODEV
private let Glibc_EINVAL: Int32 = EINVAL
private let Glibc_ENOTTY: Int32 = ENOTTY
