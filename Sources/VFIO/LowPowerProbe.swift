import Glibc
import SystemPackage

/// The diagnostic behind `vfio-powerctl probe`: can this kernel and this device do low power,
/// and (with a cycle) what happens when it is armed one-shot, left alone, and touched.
///
/// It opens the device, so it needs the group to itself, and it leaves the device as it
/// found it: the handle is closed at the end, which makes the kernel exit low power.
public struct LowPowerProbe: Sendable {
    public let session: VFIOSession
    public let sysfsRoot: FilePath
    /// How long to wait for the device to suspend, and for the eventfd after an access.
    public var suspendTimeout: Duration = .seconds(2)
    public var wakeTimeout: Duration = .seconds(2)
    /// How long the device must stay awake after a one-shot wake to count as "not re-entered".
    public var stayAwakeCheck: Duration = .milliseconds(500)

    public init(session: VFIOSession, sysfsRoot: FilePath = "/sys") {
        self.session = session
        self.sysfsRoot = sysfsRoot
    }

    public struct Report: Sendable {
        public let address: PCIAddress
        public let driver: String
        public let support: LowPowerSupport
        /// The power view before the device was opened (an unopened vfio-pci device idles in D3).
        public let before: PowerView
        /// The power view right after opening (opening wakes the device).
        public let opened: PowerView
        public let cycle: Cycle?
    }

    /// One arm, suspend, access, wake round, with how long each step took.
    public struct Cycle: Sendable {
        /// How long the one-shot entry ioctl took.
        public let armCall: Duration
        /// From the entry returning to runtime_status "suspended"; nil if it never suspended
        /// within the timeout (e.g. power/control is "on").
        public let timeToSuspend: Duration?
        /// The view once suspended (or at the timeout).
        public let armed: PowerView
        /// From the access to the eventfd being readable; nil if it never fired.
        public let wakeLatency: Duration?
        /// The eventfd counter read after the wake (the kernel signals 1 per wake).
        public let wakeCount: UInt64?
        /// The view `stayAwakeCheck` after the wake: a one-shot entry must not re-enter.
        public let afterWake: PowerView
        /// The eventfd counter after the stay-awake wait: nil when nothing more fired.
        public let extraSignals: UInt64?
    }

    /// Runs the probe; `cycle` adds the arm/wake round. Throws the open's error, explained.
    public func run(_ address: PCIAddress, cycle: Bool) throws(VFIOError) -> Report {
        let sysfs = SysfsPCIDevice(address: address, sysfsRoot: sysfsRoot)
        let before = sysfs.powerView()
        let device = try session.openDevice(address)
        defer { device.close() }
        let opened = sysfs.powerView()
        var cycleReport: Cycle?
        if cycle {
            guard device.lowPowerSupport.supports(.oneShotEntry) else {
                throw VFIODevice.error(device.lowPowerSupport.refusals[.oneShotEntry] ?? .inappropriateIOCTLForDevice,
                                       device: address, operation: .arm(.oneShotEntry), feature: .oneShotEntry)
            }
            cycleReport = try runCycle(device, sysfs)
        }
        return Report(address: address, driver: device.driver, support: device.lowPowerSupport,
                      before: before, opened: opened, cycle: cycleReport)
    }

    private func runCycle(_ device: VFIODevice, _ sysfs: SysfsPCIDevice) throws(VFIOError) -> Cycle {
        let clock = ContinuousClock()
        let wakeup: EventFD
        do { wakeup = try EventFD() } catch {
            throw VFIOError(.systemCallFailed(.eventfd), device: device.address, operation: .createEventFD, errno: error)
        }
        let armStart = clock.now
        try device.arm(.oneShot(wakeup: wakeup))
        let armed = clock.now
        let armCall = armed - armStart

        // Diagnostics may poll sysfs: there is no event for "suspended". The daemon never does.
        var timeToSuspend: Duration?
        while clock.now - armed < suspendTimeout {
            if (try? sysfs.runtimeStatus()) == .suspended { timeToSuspend = clock.now - armed; break }
            usleep(1000)
        }
        let armedView = sysfs.powerView()

        let accessStart = clock.now
        try device.wakeByAccess()
        let fired = (try? wakeup.waitUntilSignalled(timeout: wakeTimeout)) ?? false
        let wakeLatency = fired ? clock.now - accessStart : nil
        let wakeCount = (try? wakeup.read()) ?? nil
        if fired { device.noteWoke() }

        usleep(UInt32(stayAwakeCheck.components.seconds * 1_000_000 + stayAwakeCheck.components.attoseconds / 1_000_000_000_000))
        let afterWake = sysfs.powerView()
        let extraSignals = (try? wakeup.read()) ?? nil
        return Cycle(armCall: armCall, timeToSuspend: timeToSuspend, armed: armedView, wakeLatency: wakeLatency,
                     wakeCount: wakeCount, afterWake: afterWake, extraSignals: extraSignals)
    }
}
