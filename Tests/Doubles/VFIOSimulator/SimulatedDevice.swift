import Foundation
import SystemPackage
import VFIO

/// A vfio-pci device that follows the kernel's low-power semantics, as measured on 6.1 and
/// 7.3 (../shared/docs/vfio-low-power.md), over real eventfds. Only the ioctls are simulated:
/// the daemon watches the same kind of file descriptors it watches on a real kernel.
///
/// - Arming suspends the device at once (the real kernel takes 6-15 ms).
/// - Every call the daemon makes resumes a suspended device first, as
///   vfio_device_fops_unl_ioctl does: on a one-shot entry that signals the eventfd (count 1)
///   and disengages.
/// - A second entry while a re-entrant one is engaged: EINVAL. While a one-shot entry is
///   engaged on a suspended device, the call's own resume disarms the old entry first (the
///   eventfd fires), then the new entry succeeds (measured); while it is engaged and awake: EINVAL.
/// - EXIT always succeeds; close never signals.
/// - `access()` is what a VMM's access does; `remove()` is an unbind: the removal request
///   eventfd fires, a suspended one-shot device wakes, later calls fail with ENODEV.
///
/// It is a test double: it never proves on its own that a feature works on a kernel.
/// Thread-safe: tests poke it from their own thread while the daemon calls it on its queue.
public final class SimulatedDevice: LowPowerDevice, @unchecked Sendable {
    public let address: PCIAddress
    public let lowPowerSupport: LowPowerSupport
    public let removalRequest: EventFD?

    private let lock = NSLock()
    private var engaged: Engaged = .none
    private var suspended = false
    /// `power/control` is `on`: the PM core never suspends the device.
    private var runtimePMForbidden = false
    private var gone = false
    private var closed = false
    private var injected: [Operation: Errno] = [:]
    private var _calls: [Operation: Int] = [:]
    private var _armObserver: (@Sendable (PCIAddress) -> Void)?
    private var _wakeObserver: (@Sendable (PCIAddress) -> Void)?

    /// Called (on the caller's thread, outside the device's lock) after every successful arm:
    /// the moment the daemon has issued its (re-)arm. For the benchmarks (bench/); nil by
    /// default, and it changes nothing about the device's behaviour.
    public var armObserver: (@Sendable (PCIAddress) -> Void)? {
        get { lock.withLock { _armObserver } }
        set { lock.withLock { _armObserver = newValue } }
    }

    private enum Engaged {
        case none
        case oneShot(EventFD)
        case reentrant
    }

    /// The calls the daemon can make, for counting and for injecting failures.
    public enum Operation: Hashable, Sendable {
        case arm, exit
    }

    /// `removalRequest: false`: no request channel (a VMM's device, whose channel the VMM
    /// registered; saves an eventfd per device in the benchmarks).
    public init(address: PCIAddress, support: LowPowerSupport = LowPowerSupport(refusals: [:]), removalRequest: Bool = true) {
        self.address = address
        self.lowPowerSupport = support
        self.removalRequest = removalRequest ? try? EventFD() : nil
    }

    // MARK: What the daemon calls

    /// Runs at the start of every arm, on the caller's thread, before the device's lock: a
    /// test makes a device slow (sleep) or hung (wait for a semaphore) with it. Like
    /// `power/control`, it belongs to the device and survives a reopen.
    public var armStall: (@Sendable () -> Void)? {
        get { lock.withLock { _armStall } }
        set { lock.withLock { _armStall = newValue } }
    }
    private var _armStall: (@Sendable () -> Void)?

    public func arm(_ entry: LowPowerEntry) throws(VFIOError) {
        armStall?()
        let result: Result<Void, VFIOError> = lock.withLock {
            _calls[.arm, default: 0] += 1
            if let failure = check(.arm, feature: entry.feature) { return .failure(failure) }
            resumeForCall()
            switch engaged {
            case .reentrant, .oneShot:
                return .failure(VFIOError(.alreadyEngaged, device: address, operation: .arm(entry.feature),
                                          errno: .invalidArgument))
            case .none:
                switch entry {
                case .oneShot(let wakeup): engaged = .oneShot(wakeup)
                case .reentrant: engaged = .reentrant
                }
                suspended = !runtimePMForbidden
                return .success(())
            }
        }
        try result.get()
        armObserver?(address)
    }

    public func exitLowPower() throws(VFIOError) {
        let result: Result<Void, VFIOError> = lock.withLock {
            _calls[.exit, default: 0] += 1
            if let failure = check(.exit, feature: .exit) { return .failure(failure) }
            resumeForCall()
            engaged = .none
            return .success(())
        }
        try result.get()
    }

    public func noteWoke() { wakeObserver?(address) }

    /// Called (on the caller's thread) when the daemon notes that it read a wake of this device
    /// (`noteWoke`), before it decides what to do. For the benchmarks; nil by default.
    public var wakeObserver: (@Sendable (PCIAddress) -> Void)? {
        get { lock.withLock { _wakeObserver } }
        set { lock.withLock { _wakeObserver = newValue } }
    }

    public func close() {
        lock.withLock {
            closed = true
            engaged = .none  // the kernel exits low power on close without signalling
            suspended = false
        }
    }

    // MARK: What the world does to the device

    /// An access by a VMM (or anyone holding the file): resumes the device. One-shot: the
    /// eventfd fires once and the entry ends. Re-entrant: it suspends again by itself.
    public func access() {
        lock.withLock {
            guard !gone else { return }
            resumeForCall()
            if case .reentrant = engaged { suspended = !runtimePMForbidden }
        }
    }

    /// Unbind or hot-unplug: the PCI core resumes the device, vfio-pci signals the request
    /// channel, and from then on every call fails with ENODEV.
    public func remove() {
        lock.withLock {
            resumeForCall()
            gone = true
        }
        try? removalRequest?.signal()
    }

    /// Writes sysfs `power/control`: `on` (true) forbids runtime PM, which resumes the device
    /// (a one-shot entry fires and ends) and keeps it awake; `auto` (false) lets an engaged
    /// device suspend again.
    public func forbidRuntimePM(_ forbidden: Bool) {
        lock.withLock {
            runtimePMForbidden = forbidden
            if forbidden {
                resumeForCall()
            } else if case .none = engaged {} else {
                suspended = true
            }
        }
    }

    /// `power/control` as sysfs shows it.
    public var isRuntimePMForbidden: Bool { lock.withLock { runtimePMForbidden } }

    /// Makes the next call of `operation` fail with `errno` (ENODEV, EIO, ...).
    public func failNext(_ operation: Operation, with errno: Errno) {
        lock.withLock { injected[operation] = errno }
    }

    /// What the guest last wrote to PMCSR (sysfs `power_state`), for `vmm` devices.
    private var guestPowerState: PCIPowerState = .d0

    /// The guest writes PMCSR through its VMM: a config access, so it resumes the device
    /// (a one-shot entry fires and ends), and `power_state` follows the write.
    public func guestWrites(_ state: PCIPowerState) {
        lock.withLock {
            guard !gone else { return }
            resumeForCall()
            guestPowerState = state
        }
    }

    /// sysfs as the daemon samples it.
    public var powerView: (powerState: PCIPowerState, runtimeStatus: RuntimeStatus) {
        lock.withLock { (guestPowerState, suspended ? .suspended : .active) }
    }

    // MARK: What a test can ask

    public var isSuspended: Bool { lock.withLock { suspended } }
    public var isClosed: Bool { lock.withLock { closed } }

    /// "oneshot", "reentrant" or "none".
    public var engagement: Engagement {
        lock.withLock {
            switch engaged {
            case .none: .none
            case .oneShot: .oneShot
            case .reentrant: .reentrant
            }
        }
    }

    /// How many times the daemon made each call: every one of them would have woken a real device.
    public func calls(_ operation: Operation) -> Int { lock.withLock { _calls[operation, default: 0] } }
    public var totalCalls: Int { lock.withLock { _calls.values.reduce(0, +) } }

    // MARK: Kernel semantics (called with the lock held)

    /// vfio_device_fops_unl_ioctl's runtime resume around every call.
    private func resumeForCall() {
        guard suspended else { return }
        suspended = false
        if case .oneShot(let wakeup) = engaged {
            try? wakeup.signal(1)
            engaged = .none
        }
    }

    private func check(_ operation: Operation, feature: LowPowerFeature) -> VFIOError? {
        let call: VFIOError.Operation = switch operation {
        case .arm: .arm(feature)
        case .exit: .exitLowPower
        }
        if closed {
            return VFIOError(.closed, device: address, operation: call)
        }
        if gone {
            return VFIOError(.deviceGone, device: address, operation: call, errno: .init(rawValue: 19))
        }
        if let errno = injected.removeValue(forKey: operation) {
            // What the kernel's errno means, as VFIODevice reads it.
            let reason: VFIOError.Reason = switch errno.rawValue {
            case 19: .deviceGone
            case 5: .resumeFailed
            case 25: .featureAbsent(feature)
            case 22: .alreadyEngaged
            default: .kernelRefused
            }
            return VFIOError(reason, device: address, operation: call, errno: errno)
        }
        return nil
    }
}

/// A VMM process holding simulated devices, for `vmm` devices. Its "pidfd" is an eventfd that
/// `exit()` signals: readable once it exits, as a pidfd is.
public final class SimulatedVMM: @unchecked Sendable {
    public let pid: Int32
    public let executable: String
    let exitNotifier: EventFD
    private let lock = NSLock()
    private var _devices: Set<PCIAddress>
    private var _exited = false
    /// Named device files: false plays a kernel before 6.18 with more than one device file.
    let ambiguous: Bool

    init(pid: Int32, executable: String, devices: Set<PCIAddress>, ambiguous: Bool) throws(Errno) {
        self.pid = pid
        self.executable = executable
        self._devices = devices
        self.ambiguous = ambiguous
        self.exitNotifier = try EventFD()
    }

    public var devices: Set<PCIAddress> { lock.withLock { _devices } }
    public var hasExited: Bool { lock.withLock { _exited } }

    /// The process exits: its files close (the devices stay as they are) and its pidfd reads.
    public func exit() {
        lock.withLock {
            _exited = true
            _devices = []
        }
        try? exitNotifier.signal()
    }

    /// The guest unplugs a device: the VMM closes its file but runs on.
    public func closeDevice(_ address: PCIAddress) {
        _ = lock.withLock { _devices.remove(address) }
    }
}

/// A duplicate of a simulated VMM's device file: the same open file, so the same low-power
/// state; closing it leaves the VMM's file, and the device, as they are.
final class SimulatedDuplicate: LowPowerDevice, @unchecked Sendable {
    let device: SimulatedDevice
    let vmm: SimulatedVMM
    private let lock = NSLock()
    private var closed = false

    init(device: SimulatedDevice, vmm: SimulatedVMM) {
        self.device = device
        self.vmm = vmm
    }

    var address: PCIAddress { device.address }
    var lowPowerSupport: LowPowerSupport { device.lowPowerSupport }
    var removalRequest: EventFD? { nil }
    var isClosed: Bool { lock.withLock { closed } }
    func arm(_ entry: LowPowerEntry) throws(VFIOError) { try device.arm(entry) }
    func exitLowPower() throws(VFIOError) { try device.exitLowPower() }
    func noteWoke() { device.noteWoke() }
    var releaseObserver: (@Sendable (PCIAddress) -> Void)?

    func close() {
        let first = lock.withLock { () -> Bool in
            defer { closed = true }
            return !closed
        }
        if first { releaseObserver?(device.address) }
    }
}

/// A device source over simulated devices: what the daemon's tests and the benchmarks use in
/// place of `KernelDeviceSource`.
public final class SimulatedDeviceSource: DeviceSource, @unchecked Sendable {
    private let lock = NSLock()
    private var devices: [PCIAddress: SimulatedDevice] = [:]
    private var vmms: [SimulatedVMM] = []
    private var duplicates: [SimulatedDuplicate] = []
    private var nextPID: Int32 = 4000
    private var _adoptions = 0
    private var openErrors: [PCIAddress: VFIOError] = [:]
    private var d3coldWrites: [PCIAddress: [Bool]] = [:]
    private var _opens: [PCIAddress: Int] = [:]
    private var _armObserver: (@Sendable (PCIAddress) -> Void)?
    private var _wakeObserver: (@Sendable (PCIAddress) -> Void)?

    public init() {}

    /// Given to every device this source plugs or opens from now on (see
    /// `SimulatedDevice.wakeObserver`); for the benchmarks, nil by default.
    public var wakeObserver: (@Sendable (PCIAddress) -> Void)? {
        get { lock.withLock { _wakeObserver } }
        set { lock.withLock { _wakeObserver = newValue } }
    }

    /// Given to every device this source plugs or opens from now on (see
    /// `SimulatedDevice.armObserver`); for the benchmarks, nil by default.
    public var armObserver: (@Sendable (PCIAddress) -> Void)? {
        get { lock.withLock { _armObserver } }
        set { lock.withLock { _armObserver = newValue } }
    }

    /// Plugs a device in (bound to vfio-pci); returns it so the test can act on it.
    @discardableResult
    public func plug(_ address: PCIAddress, support: LowPowerSupport = LowPowerSupport(refusals: [:]),
                     removalRequest: Bool = true) -> SimulatedDevice {
        let device = SimulatedDevice(address: address, support: support, removalRequest: removalRequest)
        device.armObserver = armObserver
        device.wakeObserver = wakeObserver
        lock.withLock {
            devices[address] = device
            openErrors[address] = nil
        }
        return device
    }

    /// Unplugs a device: it is removed (see `SimulatedDevice.remove`) and no longer available.
    public func unplug(_ address: PCIAddress) {
        let device = lock.withLock { devices.removeValue(forKey: address) }
        device?.remove()
    }

    /// Makes opening `address` fail until it is plugged again.
    public func failOpen(_ address: PCIAddress, with error: VFIOError) {
        lock.withLock { openErrors[address] = error }
    }

    public func device(_ address: PCIAddress) -> SimulatedDevice? { lock.withLock { devices[address] } }
    public func opens(_ address: PCIAddress) -> Int { lock.withLock { _opens[address, default: 0] } }
    public func d3coldWrites(_ address: PCIAddress) -> [Bool] { lock.withLock { d3coldWrites[address, default: []] } }

    public func openDevice(_ address: PCIAddress) throws(VFIOError) -> any LowPowerDevice {
        let result: Result<SimulatedDevice, VFIOError> = lock.withLock {
            _opens[address, default: 0] += 1
            if let error = openErrors[address] { return .failure(error) }
            guard let device = devices[address] else {
                return .failure(VFIOError(.deviceNotFound(searched: "/sys/bus/pci/devices"), device: address,
                                          operation: .openDevice))
            }
            // A reopened device is a new open file: nothing engaged, nothing suspended.
            let fresh = SimulatedDevice(address: address, support: device.lowPowerSupport)
            // power/control belongs to the device, not to the open file.
            if device.isRuntimePMForbidden { fresh.forbidRuntimePM(true) }
            fresh.armStall = device.armStall
            fresh.armObserver = _armObserver
            fresh.wakeObserver = _wakeObserver
            devices[address] = fresh
            return .success(fresh)
        }
        return try result.get()
    }

    public func isAvailable(_ address: PCIAddress) -> Bool { lock.withLock { devices[address] != nil } }

    public func setD3coldAllowed(_ allowed: Bool, for address: PCIAddress) throws(SysfsError) {
        lock.withLock { d3coldWrites[address, default: []].append(allowed) }
    }

    // MARK: vmm

    /// Starts a VMM that holds `devices` (already plugged). `ambiguous` plays a kernel without
    /// fdinfo names and a VMM with several device files.
    @discardableResult
    public func startVMM(holding devices: [PCIAddress], executable: String = "/usr/bin/qemu-system-x86_64",
                         ambiguous: Bool = false) -> SimulatedVMM {
        lock.withLock {
            nextPID += 1
            let vmm = try! SimulatedVMM(pid: nextPID, executable: executable, devices: Set(devices), ambiguous: ambiguous)
            vmms.append(vmm)
            return vmm
        }
    }

    /// How many duplicates the daemon holds open now for `address`.
    public func openDuplicates(_ address: PCIAddress) -> Int {
        lock.withLock { duplicates.filter { $0.address == address && !$0.isClosed }.count }
    }

    /// Successful adoptions so far.
    public var adoptions: Int { lock.withLock { _adoptions } }

    /// Called (on the daemon's queue) when the daemon closes a duplicate it adopted; for the
    /// benchmarks, nil by default.
    public var releaseObserver: (@Sendable (PCIAddress) -> Void)? {
        get { lock.withLock { _releaseObserver } }
        set { lock.withLock { _releaseObserver = newValue } }
    }
    private var _releaseObserver: (@Sendable (PCIAddress) -> Void)?

    public func adopt(_ address: PCIAddress, candidates: [Int32]?, allowed: ExecutableAllowList) -> AdoptionOutcome {
        lock.withLock {
            guard let device = devices[address] else { return .noHolder }
            guard let vmm = vmms.last(where: { vmm in
                !vmm.hasExited && vmm.devices.contains(address) && (candidates.map { $0.contains(vmm.pid) } ?? true)
            }) else { return .noHolder }
            let notifier = FileDescriptor(rawValue: dup(vmm.exitNotifier.descriptor.rawValue))
            let process = VMMProcess(pid: vmm.pid, executable: vmm.executable, exitNotifier: notifier)
            guard allowed.allows(vmm.executable) else { return .refused(process, .executableNotAllowed) }
            if vmm.ambiguous { return .refused(process, .ambiguous(deviceFiles: vmm.devices.count)) }
            let duplicate = SimulatedDuplicate(device: device, vmm: vmm)
            duplicate.releaseObserver = _releaseObserver
            duplicates.removeAll { $0.isClosed }
            duplicates.append(duplicate)
            _adoptions += 1
            return .adopted(duplicate, process, method: .fdinfo)
        }
    }

    public func runningVMMs(allowed: ExecutableAllowList) -> [Int32] {
        lock.withLock { vmms.filter { !$0.hasExited && allowed.allows($0.executable) }.map(\.pid) }
    }

    public func announcingNodes(_ address: PCIAddress) -> [FilePath] { [] }

    /// No simulated device has a file of its own to send: whatever is sent is not a VFIO
    /// device file (the lab proves a real handoff on a real kernel).
    public func takeHandedOver(_ fd: Int32, for address: PCIAddress, sender: Int32) -> Result<(any LowPowerDevice, VMMProcess), HandoffRefusal> {
        let what = (try? FileDescriptor(rawValue: fd).close()).map { "a file that is not a device's" } ?? "?"
        return .failure(.notAVFIODeviceFile(what))
    }

    public func residency(_ address: PCIAddress) -> ResidencyRead? {
        guard let device = device(address) else { return nil }
        if device.isSuspended { return ResidencyRead(runtimeStatus: .suspended) }
        return ResidencyRead(runtimeStatus: .active, powerControl: device.isRuntimePMForbidden ? .on : .auto,
                             activeChildren: 0)
    }

    public func sampleGuest(_ device: any LowPowerDevice) -> GuestSample? {
        guard let duplicate = device as? SimulatedDuplicate else { return nil }
        let view = duplicate.device.powerView
        return GuestSample(powerState: view.powerState, runtimeStatus: view.runtimeStatus,
                           vmmHoldsDevice: duplicate.vmm.devices.contains(duplicate.address))
    }
}
