import SystemPackage
import Glibc

/// What sysfs says about one PCI device, read without waking it.
///
/// Every read here is one the kernel serves from its own bookkeeping (runtime PM state,
/// cached IDs, driver links), never from the device, so it is safe on an armed device
/// (see docs in ../shared/docs/vfio-low-power.md, "Reads that do not wake the device").
/// `config` and link-speed attributes are deliberately absent: they touch the device in
/// D3cold. The one write, `setD3coldAllowed`, does resume the device and says so.
///
/// Every function takes the sysfs root from `init`, so tests point it at a folder.
public struct SysfsPCIDevice: Sendable {
    public let address: PCIAddress
    public let sysfsRoot: FilePath
    /// `directory` spelled once: the reads append "/" and an attribute's name to it instead
    /// of building a FilePath per read (a resolve at 4096 devices reads thousands).
    private let directoryPath: String

    public init(address: PCIAddress, sysfsRoot: FilePath = "/sys") {
        self.address = address
        self.sysfsRoot = sysfsRoot
        directoryPath = sysfsRoot.appending("bus/pci/devices").appending(address.description).string
    }

    /// /sys/bus/pci/devices/DDDD:BB:DD.F
    public var directory: FilePath {
        sysfsRoot.appending("bus/pci/devices").appending(address.description)
    }

    public var exists: Bool { directoryPath.withCString { access($0, F_OK) } == 0 }

    // MARK: Identity

    /// The vendor ID (`vendor`), e.g. 0x8086.
    public func vendorID() throws(SysfsError) -> UInt16 { try readHex("vendor") }
    /// The device ID (`device`), e.g. 0x10d3.
    public func deviceID() throws(SysfsError) -> UInt16 { try readHex("device") }
    /// The 24-bit class code (`class`): base class, subclass, programming interface;
    /// 0x030000 is a VGA controller, 0x020000 an Ethernet controller.
    public func classCode() throws(SysfsError) -> UInt32 { try readHex("class") }

    /// The bound driver's name ("vfio-pci"), or nil when no driver is bound.
    public func driver() -> String? { linkName("driver") }

    /// The IOMMU group's number as named under /sys/kernel/iommu_groups, or nil without one.
    public func iommuGroup() -> String? { linkName("iommu_group") }

    /// Every device in this device's IOMMU group, this one included, in address order.
    public func iommuGroupMembers() throws(SysfsError) -> [PCIAddress] {
        guard let group = iommuGroup() else { return [] }
        let path = sysfsRoot.appending("kernel/iommu_groups").appending(group).appending("devices")
        switch Syscalls.listDirectory(path) {
        case .success(let names): return names.compactMap { PCIAddress($0) }.sorted()
        case .failure(let errno): throw SysfsError(path: path, errno: errno)
        }
    }

    // MARK: Runtime power management

    /// `power/runtime_status`.
    public func runtimeStatus() throws(SysfsError) -> RuntimeStatus {
        let text = try read("power/runtime_status")
        return RuntimeStatus(rawValue: text) ?? .unknown(text)
    }

    /// `power_state`: the PCI power state the kernel last set (D0, D3hot, D3cold, ...).
    public func powerState() throws(SysfsError) -> PCIPowerState {
        let text = try read("power_state")
        return PCIPowerState(rawValue: text) ?? .unknown(text)
    }

    /// `power/runtime_suspended_time`: total time spent runtime-suspended.
    public func runtimeSuspendedTime() throws(SysfsError) -> Duration {
        .milliseconds(try readDecimal("power/runtime_suspended_time"))
    }

    /// `power/runtime_active_time`: total time spent runtime-active.
    public func runtimeActiveTime() throws(SysfsError) -> Duration {
        .milliseconds(try readDecimal("power/runtime_active_time"))
    }

    /// `power/control`: `auto` lets the device runtime-suspend; `on` keeps it awake
    /// (then a low-power entry succeeds but the device never suspends and nothing fires).
    public func powerControl() throws(SysfsError) -> PowerControl {
        let text = try read("power/control")
        return PowerControl(rawValue: text) ?? .unknown(text)
    }

    /// `power/runtime_active_kids`: how many devices below this one are runtime-active (each
    /// keeps it awake).
    public func runtimeActiveChildren() throws(SysfsError) -> Int {
        Int(try readDecimal("power/runtime_active_kids"))
    }

    /// `d3cold_allowed`.
    public func d3coldAllowed() throws(SysfsError) -> Bool { try readDecimal("d3cold_allowed") != 0 }

    /// Writes `d3cold_allowed`. This resumes the device (pm_runtime_resume): do it before
    /// arming, never on an armed device.
    public func setD3coldAllowed(_ allowed: Bool) throws(SysfsError) {
        let path = directory.appending("d3cold_allowed")
        if case .failure(let errno) = Syscalls.writeSmallFile(path, allowed ? "1" : "0") {
            throw SysfsError(path: path, errno: errno)
        }
    }

    /// A snapshot of the whole power view; attributes the kernel does not offer are nil.
    public func powerView() -> PowerView {
        PowerView(runtimeStatus: try? runtimeStatus(), powerState: try? powerState(),
                  runtimeSuspendedTime: try? runtimeSuspendedTime(),
                  runtimeActiveTime: try? runtimeActiveTime(),
                  powerControl: try? powerControl(), d3coldAllowed: try? d3coldAllowed())
    }

    // MARK: Enumeration

    /// Every PCI device sysfs lists, in address order.
    public static func allAddresses(sysfsRoot: FilePath = "/sys") throws(SysfsError) -> [PCIAddress] {
        let path = sysfsRoot.appending("bus/pci/devices")
        switch Syscalls.listDirectory(path) {
        case .success(let names): return names.compactMap { PCIAddress($0) }.sorted()
        case .failure(let errno): throw SysfsError(path: path, errno: errno)
        }
    }

    // MARK: Reading attributes

    private func read(_ attribute: String) throws(SysfsError) -> String {
        switch readSmallFile(directoryPath + "/" + attribute) {
        case .success(let text): return text.trimmingTrailingWhitespace()
        case .failure(let errno): throw SysfsError(path: directory.appending(attribute), errno: errno)
        }
    }

    /// Reads an attribute whole (sysfs attributes are at most a page): open, read, close,
    /// retrying reads interrupted by a signal, as `Syscalls.readSmallFile`.
    private func readSmallFile(_ path: String) -> Result<String, Errno> {
        let fd = path.withCString { open($0, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { return .failure(Errno(rawValue: errno)) }
        defer { close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { chunk -> Result<String, Errno> in
            var bytes: [UInt8] = []
            while true {
                let count = Glibc.read(fd, chunk.baseAddress, chunk.count)
                if count < 0 {
                    if errno == EINTR { continue }
                    return .failure(Errno(rawValue: errno))
                }
                if count == 0 { break }
                bytes.append(contentsOf: chunk[..<count])
                if bytes.count > 1 << 20 { break }  // a sysfs attribute is never this large
            }
            return .success(String(decoding: bytes, as: UTF8.self))
        }
    }

    private func readHex<T: FixedWidthInteger>(_ attribute: String) throws(SysfsError) -> T {
        let text = try read(attribute)
        let digits = text.hasPrefix("0x") ? text.dropFirst(2) : Substring(text)
        guard let value = T(digits, radix: 16) else {
            throw SysfsError(path: directory.appending(attribute), errno: nil, unexpected: text)
        }
        return value
    }

    private func readDecimal(_ attribute: String) throws(SysfsError) -> Int64 {
        let text = try read(attribute)
        guard let value = Int64(text) else {
            throw SysfsError(path: directory.appending(attribute), errno: nil, unexpected: text)
        }
        return value
    }

    /// The last component of a symlink's target ("vfio-pci" for ../../../bus/pci/drivers/vfio-pci).
    private func linkName(_ link: String) -> String? {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 4096) { buffer -> String? in
            let count = (directoryPath + "/" + link).withCString { readlink($0, buffer.baseAddress!, buffer.count - 1) }
            guard count > 0 else { return nil }
            let target = UnsafeRawBufferPointer(start: buffer.baseAddress, count: count).bindMemory(to: UInt8.self)
            var end = target.count
            while end > 0, target[end - 1] == UInt8(ascii: "/") { end -= 1 }
            var start = end
            while start > 0, target[start - 1] != UInt8(ascii: "/") { start -= 1 }
            guard start < end else { return nil }
            return String(decoding: UnsafeBufferPointer(rebasing: target[start..<end]), as: UTF8.self)
        }
    }
}

/// `power/runtime_status` values.
public enum RuntimeStatus: Equatable, Sendable, CustomStringConvertible {
    case active, suspending, suspended, resuming, error, unsupported
    case unknown(String)

    public init?(rawValue: String) {
        switch rawValue {
        case "active": self = .active
        case "suspending": self = .suspending
        case "suspended": self = .suspended
        case "resuming": self = .resuming
        case "error": self = .error
        case "unsupported": self = .unsupported
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .active: "active"
        case .suspending: "suspending"
        case .suspended: "suspended"
        case .resuming: "resuming"
        case .error: "error"
        case .unsupported: "unsupported"
        case .unknown(let text): text
        }
    }
}

/// `power_state` values.
public enum PCIPowerState: Equatable, Sendable, CustomStringConvertible {
    case d0, d1, d2, d3hot, d3cold
    case unknown(String)

    public init?(rawValue: String) {
        switch rawValue {
        case "D0": self = .d0
        case "D1": self = .d1
        case "D2": self = .d2
        case "D3hot": self = .d3hot
        case "D3cold": self = .d3cold
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .d0: "D0"
        case .d1: "D1"
        case .d2: "D2"
        case .d3hot: "D3hot"
        case .d3cold: "D3cold"
        case .unknown(let text): text
        }
    }
}

/// `power/control` values.
public enum PowerControl: Equatable, Sendable, CustomStringConvertible {
    case auto, on
    case unknown(String)

    public init?(rawValue: String) {
        switch rawValue {
        case "auto": self = .auto
        case "on": self = .on
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .auto: "auto"
        case .on: "on"
        case .unknown(let text): text
        }
    }
}

/// The power attributes of one device at one moment.
public struct PowerView: Equatable, Sendable {
    public var runtimeStatus: RuntimeStatus?
    public var powerState: PCIPowerState?
    public var runtimeSuspendedTime: Duration?
    public var runtimeActiveTime: Duration?
    public var powerControl: PowerControl?
    public var d3coldAllowed: Bool?

    public init(runtimeStatus: RuntimeStatus? = nil, powerState: PCIPowerState? = nil,
                runtimeSuspendedTime: Duration? = nil, runtimeActiveTime: Duration? = nil,
                powerControl: PowerControl? = nil, d3coldAllowed: Bool? = nil) {
        self.runtimeStatus = runtimeStatus
        self.powerState = powerState
        self.runtimeSuspendedTime = runtimeSuspendedTime
        self.runtimeActiveTime = runtimeActiveTime
        self.powerControl = powerControl
        self.d3coldAllowed = d3coldAllowed
    }
}

/// A sysfs attribute that could not be read (`errno`), or did not hold what the kernel
/// documents (`unexpected`); VFIOWords says so in words.
public struct SysfsError: Error, Equatable, Sendable {
    public let path: FilePath
    public let errno: Errno?
    public let unexpected: String?

    public init(path: FilePath, errno: Errno?, unexpected: String? = nil) {
        self.path = path
        self.errno = errno
        self.unexpected = unexpected
    }
}

extension String {
    func trimmingTrailingWhitespace() -> String {
        var text = Substring(self)
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        return String(text)
    }
}

/// A device's `power_state`, kept open and re-read with pread(2) at offset 0 (sysfs renders
/// the attribute anew on each read from the start): what sampling a guest's power state
/// costs per device and interval is one system call, no path and no allocation. Reading it
/// never wakes the device.
public final class PowerStateFile: @unchecked Sendable {
    private let fd: Int32

    public init?(address: PCIAddress, sysfsRoot: FilePath = "/sys") {
        let path = sysfsRoot.appending("bus/pci/devices").appending(address.description).appending("power_state")
        let fd = path.withPlatformString { open($0, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        self.fd = fd
    }

    deinit { close(fd) }

    /// D0, D3hot, D3cold, ...; nil when the device is gone (the read fails).
    public func read() -> PCIPowerState? {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16) { buffer -> PCIPowerState? in
            var count: Int
            repeat { count = pread(fd, buffer.baseAddress, buffer.count, 0) } while count < 0 && errno == EINTR
            guard count > 0 else { return nil }
            let bytes = UnsafeBufferPointer(rebasing: buffer[..<count])
            func matches(_ text: StaticString) -> Bool {
                count == text.utf8CodeUnitCount + 1 && memcmp(bytes.baseAddress!, text.utf8Start, text.utf8CodeUnitCount) == 0
            }
            if matches("D0") { return .d0 }
            if matches("D3hot") { return .d3hot }
            let text = String(decoding: bytes, as: UTF8.self).trimmingTrailingWhitespace()
            return PCIPowerState(rawValue: text) ?? .unknown(text)
        }
    }
}
