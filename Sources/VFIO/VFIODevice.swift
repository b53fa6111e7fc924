import Glibc
import CVFIO
import Synchronization
import SystemPackage

/// Opens VFIO devices through the group path (/dev/vfio/vfio + /dev/vfio/N), sharing one
/// open group among the devices it holds: the kernel lets only one process, and only one
/// open file, hold a group node at a time.
///
/// Not thread-safe: use one session from one queue (the daemon's serial queue).
public final class VFIOSession: @unchecked Sendable {
    public let preflight: DevicePreflight
    public let procRoot: FilePath
    /// Devices are opened on their own queues, several at once: the group table is shared.
    private let groups = Mutex<[String: WeakGroup]>([:])

    public init(sysfsRoot: FilePath = "/sys", devRoot: FilePath = "/dev", procRoot: FilePath = "/proc") {
        self.preflight = DevicePreflight(sysfsRoot: sysfsRoot, devRoot: devRoot)
        self.procRoot = procRoot
    }

    /// Checks the device (DevicePreflight), opens it, reads what the daemon needs to know
    /// while it is awake (device info, config region, low-power probe), and returns a handle
    /// with nothing engaged. Opening wakes the device; nothing here arms it.
    public func openDevice(_ address: PCIAddress) throws(VFIOError) -> VFIODevice {
        let verdict = try preflight.check(address)
        let group = try group(named: verdict.groupName, for: address)
        return try VFIODevice(address: address, driver: verdict.driver, group: group)
    }

    private func group(named name: String, for address: PCIAddress) throws(VFIOError) -> VFIOGroup {
        // Held across the open: two devices of one group must not open it twice (the
        // second open would fail with EBUSY against ourselves).
        let (devRoot, procRoot) = (preflight.devRoot, procRoot)
        return try groups.withLock { (groups: inout [String: WeakGroup]) throws(VFIOError) -> VFIOGroup in
            if let group = groups[name]?.group { return group }
            let group = try VFIOGroup(name: name, devRoot: devRoot, procRoot: procRoot, device: address)
            groups = groups.filter { $0.value.group != nil }
            groups[name] = WeakGroup(group: group)
            return group
        }
    }

    private struct WeakGroup { weak var group: VFIOGroup? }
}

/// An open VFIO group attached to its own type1v2 container. Closed when the last device
/// fetched through it goes away.
/// Sendable: its descriptors never change after init, and the kernel serialises the ioctls
/// on them; devices of one group opened on their own queues share it.
final class VFIOGroup: @unchecked Sendable {
    let name: String
    let node: FilePath
    private let container: FileDescriptor
    let descriptor: FileDescriptor

    init(name: String, devRoot: FilePath, procRoot: FilePath, device: PCIAddress) throws(VFIOError) {
        self.name = name
        let vfio = devRoot.appending("vfio")
        let node = vfio.appending(name)
        self.node = node
        let operation = VFIOError.Operation.openGroup(name)

        // A local function would capture self before every property is set; a closure over
        // locals does not.
        let fail = { (errno: Errno, step: VFIOError.GroupStep) -> VFIOError in
            switch errno {
            case .permissionDenied, .notPermitted:
                VFIOError(.groupStepRefused(step, node: node), device: device, operation: operation, errno: errno)
            default:
                VFIOError(.groupStepFailed(step), device: device, operation: operation, errno: errno)
            }
        }

        // Each fd has one owner at a time: these locals until every step has succeeded,
        // then the group (whose deinit closes them). A throw after both properties were
        // set would run deinit too (Swift deinitialises a fully initialised object whose
        // init throws), and a second close could close another device's file that reused
        // the number.
        let container: FileDescriptor
        do {
            container = try FileDescriptor.open(vfio.appending("vfio"), .readWrite, options: [.closeOnExec])
        } catch {
            throw fail(error as? Errno ?? .ioError, .openContainer(vfio.appending("vfio")))
        }
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(node, .readWrite, options: [.closeOnExec])
        } catch {
            Syscalls.close(container)
            let errno = error as? Errno ?? .ioError
            if errno == .resourceBusy {
                let holders = ProcessHolding.holders(of: node, procRoot: procRoot)
                throw VFIOError(.groupBusy(node: node, holders: holders), device: device, operation: operation, errno: errno)
            }
            throw fail(errno, .openGroup(node))
        }

        do throws(VFIOError) {
            try VFIOGroup.attach(group: descriptor, to: container, name: name, device: device, operation: operation, fail: fail)
        } catch {
            Syscalls.close(descriptor)
            Syscalls.close(container)
            throw error
        }
        self.container = container
        self.descriptor = descriptor
    }

    /// Checks the container's API and the group's viability, then joins the group to the
    /// container with the type1v2 IOMMU.
    private static func attach(group descriptor: FileDescriptor, to container: FileDescriptor, name: String,
                               device: PCIAddress, operation: VFIOError.Operation,
                               fail: (Errno, VFIOError.GroupStep) -> VFIOError) throws(VFIOError) {
        // The container must speak the API this header describes and offer type1v2.
        let version = Syscalls.ioctl(container, CVFIO_GET_API_VERSION)
        guard case .success(let api) = version, api == CVFIO_API_VERSION_VALUE else {
            throw VFIOError(.unknownAPIVersion, device: device, operation: operation)
        }
        var status = vfio_group_status()
        status.argsz = UInt32(MemoryLayout<vfio_group_status>.size)
        if case .failure(let errno) = Syscalls.ioctl(descriptor, CVFIO_GROUP_GET_STATUS, &status) {
            throw fail(errno, .getStatus)
        }
        guard status.flags & CVFIO_GROUP_FLAGS_VIABLE != 0 else {
            throw VFIOError(.groupNotViable(group: name), device: device, operation: operation)
        }
        var containerFD = container.rawValue
        if case .failure(let errno) = Syscalls.ioctl(descriptor, CVFIO_GROUP_SET_CONTAINER, &containerFD) {
            throw fail(errno, .setContainer)
        }
        if case .failure(let errno) = Syscalls.ioctl(container, CVFIO_SET_IOMMU, value: CVFIO_TYPE1v2_IOMMU) {
            throw fail(errno, .setIOMMU)
        }
    }

    deinit {
        Syscalls.close(descriptor)
        Syscalls.close(container)
    }
}

/// One open vfio-pci device, and the three low-power features on it.
///
/// Every ioctl on a device fd, and every read or write of one of its regions, resumes the
/// device; on an armed one-shot device that fires the eventfd and disarms it. So this type
/// asks the kernel everything it needs (device info, config region, low-power probe) once,
/// in `VFIOSession.openDevice`, before anything can be armed, and offers no query
/// afterwards. The only calls that reach the device later are `arm`, `exitLowPower`, and
/// the accesses whose names say they wake it.
///
/// Not thread-safe: confine a device to one queue. Closed by `close()` or when released.
public final class VFIODevice: @unchecked Sendable {
    public let address: PCIAddress
    /// The bound driver at open time: vfio-pci or a variant.
    public let driver: String
    /// What the kernel answered to PROBE for each low-power feature, at open.
    public let lowPowerSupport: LowPowerSupport
    /// VFIO_DEVICE_GET_INFO flags at open (VFIO_DEVICE_FLAGS_*).
    public let deviceFlags: UInt32
    /// What this handle has engaged and not yet been told has ended.
    public private(set) var engagement: Engagement = .none
    /// Signalled by the kernel when it wants the device back (unbind, hot-unplug): it then
    /// waits for every fd to be closed, asking again every 10 s. Nil when the driver has no
    /// request channel. Registered at open, because registering is an ioctl.
    public let removalRequest: EventFD?

    private var descriptor: FileDescriptor?
    /// Held while the device is open. Released on close: the kernel finishes removing the
    /// last device of a group only once the group is detached from its container
    /// (vfio_device_remove_group waits for it), so a closed device must not keep it open.
    private var group: VFIOGroup?
    private let configRegion: (offset: Int64, size: UInt64)?

    init(address: PCIAddress, driver: String, group: VFIOGroup) throws(VFIOError) {
        self.address = address
        self.driver = driver
        self.group = group
        let operation = VFIOError.Operation.openDevice
        var name = Array(address.description.utf8CString)
        let fd: CInt
        switch name.withUnsafeMutableBytes({ Syscalls.ioctl(group.descriptor, CVFIO_GROUP_GET_DEVICE_FD, $0.baseAddress!) }) {
        case .success(let value): fd = value
        case .failure(let errno):
            throw VFIODevice.error(errno, device: address, operation: operation)
        }
        // The fd is this init's until every step has succeeded, then the device's.
        let descriptor = FileDescriptor(rawValue: fd)

        var info = vfio_device_info()
        info.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
        if case .failure(let errno) = Syscalls.ioctl(descriptor, CVFIO_DEVICE_GET_INFO, &info) {
            Syscalls.close(descriptor)
            throw VFIODevice.error(errno, device: address, operation: .readDeviceInfo)
        }
        deviceFlags = info.flags

        var region = vfio_region_info()
        region.argsz = UInt32(MemoryLayout<vfio_region_info>.size)
        region.index = CVFIO_PCI_CONFIG_REGION_INDEX
        if case .success = Syscalls.ioctl(descriptor, CVFIO_DEVICE_GET_REGION_INFO, &region) {
            configRegion = (Int64(bitPattern: region.offset), region.size)
        } else {
            configRegion = nil
        }

        removalRequest = VFIODevice.registerRemovalRequest(descriptor)

        var refusals: [LowPowerFeature: Errno] = [:]
        for feature in LowPowerFeature.allCases {
            let flags = CVFIO_DEVICE_FEATURE_PROBE | CVFIO_DEVICE_FEATURE_SET | feature.index
            if case .failure(let errno) = Syscalls.deviceFeature(descriptor, argsz: CVFIO_DEVICE_FEATURE_HEADER_SIZE,
                                                                 flags: flags, payload: nil) {
                refusals[feature] = errno
            }
        }
        lowPowerSupport = LowPowerSupport(refusals: refusals)
        self.descriptor = descriptor
    }

    deinit { close() }

    /// VFIO_PCI_REQ_IRQ_INDEX with an eventfd, when the device offers it.
    private static func registerRemovalRequest(_ descriptor: FileDescriptor) -> EventFD? {
        var info = vfio_irq_info()
        info.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
        info.index = CVFIO_PCI_REQ_IRQ_INDEX
        guard case .success = Syscalls.ioctl(descriptor, CVFIO_DEVICE_GET_IRQ_INFO, &info),
              info.count > 0, info.flags & CVFIO_IRQ_INFO_EVENTFD != 0,
              let request = try? EventFD() else { return nil }
        let result = retryingOnInterrupt {
            cvfio_set_irq_eventfd(descriptor.rawValue, CVFIO_PCI_REQ_IRQ_INDEX, request.descriptor.rawValue)
        }
        guard case .success = result else { return nil }
        return request
    }

    /// The raw device fd, for an event loop or a test; nil once closed.
    public var fileDescriptor: FileDescriptor? { descriptor }

    public var isClosed: Bool { descriptor == nil }

    // MARK: Low power

    /// Asks the kernel for low power (arms the device).
    ///
    /// One-shot: the device suspends within milliseconds; its first resume signals `wakeup`
    /// and ends the entry. Re-entrant: it suspends again by itself after every access.
    /// EINVAL means something is already engaged on this device (by this or another holder
    /// of the same file): `alreadyEngaged`.
    public func arm(_ entry: LowPowerEntry) throws(VFIOError) {
        try VFIODevice.arm(try openDescriptor(.arm(entry.feature)), entry, device: address)
        engagement = entry.feature == .oneShotEntry ? .oneShot : .reentrant
    }

    /// The entry ioctl on any open file of a device (this type's own, or a VMM's duplicate).
    static func arm(_ fd: FileDescriptor, _ entry: LowPowerEntry, device: PCIAddress) throws(VFIOError) {
        let flags = CVFIO_DEVICE_FEATURE_SET | entry.feature.index
        let result: Result<CInt, Errno>
        switch entry {
        case .oneShot(let wakeup):
            var payload = cvfio_low_power_wakeup_payload(wakeup.descriptor.rawValue)
            result = withUnsafeBytes(of: &payload) {
                Syscalls.deviceFeature(fd, argsz: LowPowerFeature.oneShotEntry.minimumArgumentSize, flags: flags, payload: $0)
            }
        case .reentrant:
            result = Syscalls.deviceFeature(fd, argsz: LowPowerFeature.reentrantEntry.minimumArgumentSize, flags: flags, payload: nil)
        }
        if case .failure(let errno) = result {
            throw VFIODevice.error(errno, device: device, operation: .arm(entry.feature), feature: entry.feature)
        }
    }

    /// LOW_POWER_EXIT on any open file of a device.
    static func exitLowPower(_ fd: FileDescriptor, device: PCIAddress) throws(VFIOError) {
        let flags = CVFIO_DEVICE_FEATURE_SET | LowPowerFeature.exit.index
        if case .failure(let errno) = Syscalls.deviceFeature(fd, argsz: LowPowerFeature.exit.minimumArgumentSize, flags: flags, payload: nil) {
            throw VFIODevice.error(errno, device: device, operation: .exitLowPower, feature: .exit)
        }
    }

    /// Leaves low power (LOW_POWER_EXIT). Always succeeds on a present device, engaged or
    /// not. On a suspended one-shot device the kernel resumes it first, which signals the
    /// wakeup eventfd: a wake this call caused.
    public func exitLowPower() throws(VFIOError) {
        try VFIODevice.exitLowPower(try openDescriptor(.exitLowPower), device: address)
        engagement = .none
    }

    /// Records that the wakeup eventfd fired: the kernel has ended the one-shot entry.
    public func noteWoke() {
        if engagement == .oneShot { engagement = .none }
    }

    // MARK: Accesses that wake the device

    /// An access that resumes the device (VFIO_DEVICE_GET_INFO): what a VMM's next call
    /// does. On an armed one-shot device it fires the eventfd. For diagnostics and tests.
    public func wakeByAccess() throws(VFIOError) {
        let fd = try openDescriptor(.accessDevice)
        var info = vfio_device_info()
        info.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
        if case .failure(let errno) = Syscalls.ioctl(fd, CVFIO_DEVICE_GET_INFO, &info) {
            throw VFIODevice.error(errno, device: address, operation: .accessDeviceInfo)
        }
    }

    /// Reads `count` bytes of PCI config space at `offset` through the config region.
    /// Resumes the device, like any region access.
    public func readConfigSpace(offset: Int, count: Int) throws(VFIOError) -> [UInt8] {
        let operation = VFIOError.Operation.readConfigSpace
        let fd = try openDescriptor(operation)
        guard let region = configRegion else {
            throw VFIOError(.noConfigRegion, device: address, operation: operation)
        }
        var bytes = [UInt8](repeating: 0, count: count)
        do {
            let read = try bytes.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: region.offset + Int64(offset), into: $0) }
            return Array(bytes.prefix(read))
        } catch {
            throw VFIODevice.error(error as? Errno ?? .ioError, device: address, operation: operation)
        }
    }

    /// Writes PCI config space at `offset` through the config region (what a guest driver
    /// does through its VMM). Resumes the device.
    public func writeConfigSpace(offset: Int, bytes: [UInt8]) throws(VFIOError) {
        let operation = VFIOError.Operation.writeConfigSpace
        let fd = try openDescriptor(operation)
        guard let region = configRegion else {
            throw VFIOError(.noConfigRegion, device: address, operation: operation)
        }
        do {
            _ = try bytes.withUnsafeBytes { try fd.write(toAbsoluteOffset: region.offset + Int64(offset), $0) }
        } catch {
            throw VFIODevice.error(error as? Errno ?? .ioError, device: address, operation: operation)
        }
    }

    // MARK: Raw access for the real-kernel tests

    /// VFIO_DEVICE_FEATURE exactly as given: the real-kernel tests use it to check how the
    /// kernel validates argsz, flags and payloads. The daemon never calls it.
    public func rawDeviceFeature(argsz: UInt32, flags: UInt32, payload: [UInt8] = []) -> Result<Void, Errno> {
        guard let fd = descriptor else { return .failure(.badFileDescriptor) }
        return payload.withUnsafeBytes { bytes in
            Syscalls.deviceFeature(fd, argsz: argsz, flags: flags, payload: payload.isEmpty ? nil : bytes).map { _ in () }
        }
    }

    // MARK: Closing

    /// Closes the device fd. The kernel exits low power itself (without signalling the
    /// eventfd), resets the device and lets it idle in D3. The group (and its container) is
    /// closed with the last of its devices, which lets a pending unbind finish.
    public func close() {
        guard let fd = descriptor else { return }
        descriptor = nil
        engagement = .none
        Syscalls.close(fd)
        group = nil
    }

    private func openDescriptor(_ operation: VFIOError.Operation) throws(VFIOError) -> FileDescriptor {
        guard let descriptor else {
            throw VFIOError(.closed, device: address, operation: operation)
        }
        return descriptor
    }

    /// What a kernel errno means for a call on the device.
    static func error(_ errno: Errno, device: PCIAddress, operation: VFIOError.Operation,
                      feature: LowPowerFeature? = nil) -> VFIOError {
        let reason: VFIOError.Reason = switch errno {
        case .invalidArgument where feature == .oneShotEntry || feature == .reentrantEntry: .alreadyEngaged
        case .inappropriateIOCTLForDevice: .featureAbsent(feature)
        case .operationNotSupportedByDevice, .noSuchAddressOrDevice: .deviceGone
        case .ioError: .resumeFailed
        case .badFileDescriptor: .badEventFD
        case .permissionDenied, .notPermitted: .permissionRefused
        case .resourceBusy: .deviceBusy
        default: .kernelRefused
        }
        return VFIOError(reason, device: device, operation: operation, errno: errno)
    }
}
