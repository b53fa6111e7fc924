import Glibc
import CVFIO
import Dispatch
import Logging
import PowerConfig
import PowerPolicy
import Systemd
import SystemPackage
import VFIO

/// Where the daemon reads its configuration and the system.
public struct DaemonOptions: Sendable {
    public var config: ConfigLoadOptions
    public var sysfsRoot: FilePath
    /// How long a call on a device (open, arm, exit, a d3cold_allowed write) may take before
    /// the device is reported stuck.
    public var stuckBound: Duration
    /// How long start waits for the devices' first calls before READY=1, and stop for the
    /// last ones before the daemon exits (the unit's TimeoutStopSec= is 30 s).
    public var settleBound: Duration

    public init(config: ConfigLoadOptions = ConfigLoadOptions(), sysfsRoot: FilePath = "/sys",
                stuckBound: Duration = .seconds(10), settleBound: Duration = .seconds(20)) {
        self.config = config
        self.sysfsRoot = sysfsRoot
        self.stuckBound = stuckBound
        self.settleBound = settleBound
    }
}

/// The daemon: the configuration, one controller per device, and the loop's timers.
///
/// Everything runs on one serial Dispatch queue (`DaemonActor.queue`): device eventfds,
/// timers, signals and control requests all arrive there, so no state is ever shared between
/// threads. The manager is `@DaemonActor`: the compiler checks that every method is called
/// there (from off the queue, `DaemonActor.sync`). Only calls that touch a device run
/// elsewhere, each device's on a queue of its own (see `DeviceController`), so that a slow
/// device delays no other. Nothing polls: with every device armed and nothing missing,
/// the only source that fires on its own is the watchdog ping.
@DaemonActor
public final class Manager {
    private let options: DaemonOptions
    private let source: any DeviceSource
    private let notifier: SystemdNotifier
    private let logger: Logger
    private let clock: any DaemonClock

    private var controllers: [PCIAddress: DeviceController] = [:]
    /// Every device's eventfds, behind one Dispatch source; made by start().
    private var watcher: EventFDWatcher?
    private var daemonSettings = DaemonSettings()
    private var rescanTimer: (any DaemonTimer)?
    /// `vmm` devices: opens of their group nodes (nil if inotify was refused: then only the
    /// fallback scan and `adopt` find VMMs).
    private var openWatcher: OpenWatcher?
    /// `vmm` devices: the fallback scan for VMMs whose opens are not seen; runs only while a
    /// `vmm` device is idle.
    private var vmmScanTimer: (any DaemonTimer)?
    /// `vmm` devices in use by their guests, which the sampler looks at every
    /// guest_d3_interval; the sampler's timer runs only while there is one.
    private var inUse = Set<PCIAddress>()
    /// The control socket systemd made and passed (vfio-powerd.socket, FileDescriptorName=
    /// control), for the control service to listen on; nil without socket activation.
    public private(set) var activatedControlSocket: Int32?

    /// Every call under way on a device (each runs on the device's own queue).
    private let calls = DispatchGroup()
    /// The controllers with a call under way, looked at once a second for stuck calls while
    /// there are any.
    private var calling: [ObjectIdentifier: DeviceController] = [:]
    private var callWatch: (any DaemonTimer)?
    /// Armed devices the kernel has not been seen to suspend yet (or keeps awake): the same
    /// sampler reads their `power/runtime_status` until it says suspended.
    private var confirming = Set<PCIAddress>()
    private var sampler: (any DaemonTimer)?
    private var samplerInterval: Duration?
    /// `vmm` devices: wakeup eventfds the previous run kept in systemd's fd store, until the
    /// device is adopted again (or found idle at start).
    private var keptWakeups: [PCIAddress: EventFD] = [:]
    private var watchdogTimer: (any DaemonTimer)?
    private var lastStatus: String?
    private var tally = StatusTally()
    private var statusUpdatePending = false
    /// Called on the queue after any device's phase or counters changed (the control
    /// interface's Monitor).
    public var onDeviceChange: ((DeviceSnapshot) -> Void)?
    /// When start() finished, for GetStatistics.
    public private(set) var startedAt: MonotonicInstant?
    /// Reloads since the start, and how the last one ended (GetStatistics, the exporter).
    public private(set) var reloads = ReloadHistory()
    /// STATUS= waits for READY=1: half-started counts would not tell the truth.
    private var isStarted = false
    private(set) public var isStopping = false

    /// Made anywhere; used on the daemon's queue.
    public nonisolated init(options: DaemonOptions, source: any DeviceSource, notifier: SystemdNotifier = SystemdNotifier(),
                            logger: Logger, clock: any DaemonClock = SystemMonotonicClock()) {
        self.options = options
        self.source = source
        self.notifier = notifier
        self.logger = logger
        self.clock = clock
    }

    // MARK: Start

    public enum StartError: Error, Equatable {
        /// The configuration has errors; every problem has been logged.
        case configRejected(errors: Int)
        /// The kernel refused the epoll set that watches the devices' eventfds (logged).
        case eventLoopUnavailable(Errno)
    }

    /// Loads and validates the configuration, opens and arms every device it selects, runs
    /// `beforeReady` (the daemon starts listening on its control socket there, so that
    /// `systemctl start vfio-powerd && vfio-powerctl status` never finds it missing), then
    /// tells systemd READY=1. An invalid configuration starts nothing.
    public func start(beforeReady: @escaping () -> Void = {}, whenReady: @escaping () -> Void = {}) throws(StartError) {
        let (loaded, resolution) = loadConfiguration()
        let problems = loaded.problems + resolution.problems
        logWarnings(problems)
        if loaded.hasErrors || resolution.hasErrors {
            let errors = problems.filter(\.isError)
            logRejected(errors, when: "at start")
            notifier.status("configuration invalid: \(errors.count) error\(errors.count == 1 ? "" : "s"); see journalctl -u vfio-powerd")
            throw .configRejected(errors: errors.count)
        }
        daemonSettings = loaded.configuration.daemon
        do {
            watcher = try EventFDWatcher()
        } catch {
            logger.critical("cannot watch the devices' eventfds: epoll_create1: \(error) (\(error.symbolicName)); nothing was opened")
            throw .eventLoopUnavailable(error)
        }
        do {
            openWatcher = try OpenWatcher { [weak self] addresses in self?.vmmOpened(addresses) }
        } catch {
            logger.warning("cannot watch the devices' group nodes for VMMs opening them: inotify_init1: \(error) (\(error.symbolicName)); VMMs are found by the vmm_scan_interval scan and `vfio-powerctl adopt` only")
        }
        takeKeptWakeups()
        for device in resolution.devices {
            addController(device)
        }
        // A kept eventfd of a device that is no longer configured is dropped from the store; the
        // others wait for their device's first look (`discardKept` when it finds no VMM).
        for address in keptWakeups.keys.sorted() where controllers[address] == nil { forget(address) }
        startWatchdog()
        updateRescanTimer()
        updateVMMScanTimer()
        // READY=1 once every device's first calls have returned, so that the first STATUS=
        // tells how they went; but a stuck device must not hold up the start.
        whenSettled(within: options.settleBound) { [self] in
            // A stop that came first has said STOPPING=1: no READY=1 after it.
            guard !isStopping else { return }
            isStarted = true
            startedAt = clock.now()
            returnFreedMemory()
            beforeReady()
            notifier.ready()
            updateStatus()
            log(.started, "started: \(summary())", [:])
            whenReady()
        }
    }

    /// Runs `body` on the queue once no call on any device is under way, or after `bound`.
    private func whenSettled(within bound: Duration, _ body: @escaping () -> Void) {
        let once = Once(body)
        calls.notify(queue: DaemonActor.queue) { DaemonActor.assumeIsolated { once.run() } }
        clock.after(bound) { once.run() }
    }

    /// A body that runs the first time it is asked to (both asks come on the queue).
    @DaemonActor
    private final class Once {
        private var body: (() -> Void)?
        init(_ body: @escaping () -> Void) { self.body = body }
        func run() {
            let body = self.body
            self.body = nil
            body?()
        }
    }

    // MARK: Reload

    /// SIGHUP / `systemctl reload`: reads and validates the new configuration completely
    /// before touching anything. Any error keeps everything as it is. Otherwise only the
    /// difference is applied: devices whose policy did not change get no call at all
    /// (every ioctl would wake them).
    ///
    /// Reading, parsing and resolving run off the queue (98 ms at 4096 entries), so wakes,
    /// control calls and the watchdog go on meanwhile; only the validated result is applied
    /// on the queue. `completion` gets the errors (empty: applied), on the queue. A reload
    /// asked for while one is loading runs once that one is applied.
    public func reload(then completion: @escaping ([ConfigProblem]) -> Void = { _ in }) {
        guard isStarted, !isStopping else { return completion([]) }
        guard reloading == nil else {
            pendingReloads.append(completion)
            return
        }
        reloading = completion
        notifier.reloading(monotonicUsec: MonotonicClock.nowMicroseconds())
        let options = self.options
        Self.loader.async { [self] in
            let loaded = Self.loadConfiguration(options)
            DaemonActor.queue.async { [self] in DaemonActor.assumeIsolated { reloadLoaded(loaded) } }
        }
    }

    /// Takes up a configuration the loader read, on the queue.
    private func reloadLoaded(_ loaded: (ConfigLoadResult, Resolution)) {
        guard let answer = reloading else { preconditionFailure("a configuration was loaded for no reload") }
        reloading = nil
        let problems = isStopping ? [] : apply(loaded.0, loaded.1)
        if !isStopping { reloads.record(applied: problems.isEmpty, at: now()) }
        answer(problems)
        if !pendingReloads.isEmpty {
            let waiting = pendingReloads
            pendingReloads = []
            reload { problems in waiting.forEach { $0(problems) } }
        }
    }

    /// Where configurations are read and resolved: off the daemon's queue.
    private nonisolated static let loader = DispatchQueue(label: "vfio-powerd.loader")
    /// The answer of the reload whose configuration is loading (nil: none is).
    private var reloading: (([ConfigProblem]) -> Void)?
    private var pendingReloads: [([ConfigProblem]) -> Void] = []

    /// Applies a loaded configuration: nothing if it has errors (they are returned), else
    /// only the difference.
    private func apply(_ loaded: ConfigLoadResult, _ resolution: Resolution) -> [ConfigProblem] {
        let problems = loaded.problems + resolution.problems
        logWarnings(problems)
        if loaded.hasErrors || resolution.hasErrors {
            logRejected(problems.filter(\.isError), when: "on reload; the running configuration stays in force")
            returnFreedMemory()
            notifier.ready()
            return problems.filter(\.isError)
        }
        let scanIntervalChanged = daemonSettings.vmmScanInterval.value != loaded.configuration.daemon.vmmScanInterval.value
        daemonSettings = loaded.configuration.daemon
        if scanIntervalChanged {
            vmmScanTimer?.cancel()
            vmmScanTimer = nil
        }
        for controller in controllers.values { applyVMMSettings(controller) }
        updateSampler()
        let devices = resolution.devices
        let plan = ReloadPlan(running: controllers.keys, policy: { self.controllers[$0]?.policy },
                              wanted: devices.lazy.map { (address: $0.address, policy: $0.policy) })
        // The reload's message names the first few changed devices' keys; only those are worded.
        let namedChanges = 3
        var changes: [String] = []
        for step in plan.steps {
            switch step {
            case .retire(let address):
                // No longer configured: leave it awake and closed, whatever on_stop says.
                if let controller = controllers[address] { retire(controller, origin: "removed from the configuration") }
            case .replace(let index):
                let device = devices[index]
                if let controller = controllers[device.address] { retire(controller, origin: "source changed to \(device.policy.source)") }
                addController(device)
            case .update(let index, let changed):
                let device = devices[index]
                guard let controller = controllers[device.address] else { continue }
                if changed && changes.count < namedChanges {
                    changes.append(Self.describeChange(controller.policy, to: device.policy, of: device.address))
                }
                controller.policyChanged(device.policy, origin: origin(of: device))
                // A reload is the operator's "try again": a missing device is looked for, a
                // failed one (busy group, refused arm) is opened anew.
                switch controller.phase {
                case .gone where source.isAvailable(device.address), .failed: controller.returned()
                default: break
                }
            case .add(let index):
                addController(devices[index])
            }
        }
        updateRescanTimer()
        updateVMMScanTimer()
        // READY=1 (the reload is done) once the calls it made have returned, within a bound.
        whenSettled(within: options.settleBound) { [self] in
            returnFreedMemory()
            notifier.ready()
            updateStatus()
            let more = plan.changed - changes.count
            let changed = changes.isEmpty ? "" : " (" + changes.joined(separator: "; ") + (more > 0 ? "; and \(more) more" : "") + ")"
            log(.reloaded, "reloaded: \(plan.added) added, \(plan.removed) removed, \(plan.changed) changed\(changed), \(plan.unchanged) unchanged; \(summary())", [:])
        }
        return []
    }

    /// What a reload changed on one device, in the files' words (the policy-key table's):
    /// `0000:01:00.0 (gpu): rearm_delay 30s → 1m`.
    private static func describeChange(_ old: DevicePolicy, to new: DevicePolicy, of address: PCIAddress) -> String {
        var words = PolicyKey.changes(from: old, to: new).map(\.description)
        if old.enabled != new.enabled { words.append("enabled \(old.enabled) → \(new.enabled)") }
        if old.name != new.name { words.append("name \(old.name.map { "\"\($0)\"" } ?? "none") → \(new.name.map { "\"\($0)\"" } ?? "none")") }
        return DeviceController.Names(address: address, name: new.name).label + ": " + words.joined(separator: ", ")
    }

    /// Stops managing a device: it is left as its policy's `enabled = false` leaves it (an
    /// `own` device awake and closed, a `vmm` device's duplicate closed).
    private func retire(_ controller: DeviceController, origin: String) {
        var released = controller.policy
        released.enabled = false
        controller.policyChanged(released, origin: origin)
        openWatcher?.unwatch(controller.address)
        tally.replace(controller.tallied, with: nil)
        controllers[controller.address] = nil
        // Its turn may still be under way (a call on the device): it no longer counts here,
        // and the sampler no longer visits it.
        let sampled = inUse.remove(controller.address) != nil
        let confirmed = confirming.remove(controller.address) != nil
        if sampled || confirmed { updateSampler() }
    }

    // MARK: Operator requests (the control interface)

    /// Wakes a device now and keeps it out of low power for `duration` (nil: until `arm`).
    /// Nil when the daemon has no such device.
    /// `reply` gets the device once the calls the request made have returned (nil: no such
    /// device).
    public func wake(_ address: PCIAddress, for duration: Duration?, then reply: @escaping (DeviceSnapshot?) -> Void) {
        guard let controller = controllers[address] else { return reply(nil) }
        controller.wake(for: duration)
        afterTurn(of: controller, reply)
    }

    /// Arms a device now (an awake one at once; a failed or missing one is opened again).
    public func arm(_ address: PCIAddress, then reply: @escaping (DeviceSnapshot?) -> Void) {
        guard let controller = controllers[address] else { return reply(nil) }
        controller.arm()
        afterTurn(of: controller, reply)
    }

    /// How long an operator's request waits for the device's calls before it is answered
    /// with the device as it stands (a stuck one says so).
    nonisolated static let answerBound: Duration = .seconds(5)

    private func afterTurn(of controller: DeviceController, _ reply: @escaping (DeviceSnapshot?) -> Void) {
        let once = Once { [self] in reply(snapshot(controller, now: clock.now())) }
        controller.whenSettled { once.run() }
        clock.after(Self.answerBound) { once.run() }
    }

    /// Runs `body` on the queue once no call on any device is under way (within
    /// `settleBound`): for tests and benchmarks that change something and then look.
    public func whenDevicesSettled(_ body: @escaping () -> Void) {
        whenSettled(within: options.settleBound, body)
    }

    /// `vmm`: looks for the VMM holding the device now (only `pid`, when given): what a VMM's
    /// start hook asks for where the daemon cannot see the VMM's open (libvirt's private /dev).
    public func adopt(_ address: PCIAddress, pid: Int32?) -> DeviceSnapshot? {
        guard let controller = controllers[address] else { return nil }
        controller.vmmMayHaveOpened(candidates: pid.map { [$0] })
        return snapshot(controller, now: clock.now())
    }

    /// `vmm`: takes over a device file a launcher or VMM sent (SCM_RIGHTS), once the kernel
    /// confirms it is this device's; `sender`'s exit releases it. Closes `fd` on refusal.
    /// `completion` runs on the queue, at once or after a look for the device's VMM that is
    /// under way has finished.
    public func handoff(_ address: PCIAddress, fd: Int32, sender: Int32,
                        completion: @escaping (Result<DeviceSnapshot, HandoffRefusal>) -> Void) {
        guard let controller = controllers[address], controller.policy.source == .vmm, controller.policy.isManaged else {
            _ = close(fd)
            return completion(.failure(.notVMMDevice))
        }
        switch source.takeHandedOver(fd, for: address, sender: sender) {
        case .failure(let refusal):
            completion(.failure(refusal))
        case .success(let (device, process)):
            controller.handoff(device, from: process) { [self] taken in
                completion(taken ? .success(snapshot(controller, now: clock.now())) : .failure(.alreadyHeld))
            }
        }
    }

    /// `vmm`: closes the daemon's copy of the device's file now.
    public func release(_ address: PCIAddress) -> DeviceSnapshot? {
        guard let controller = controllers[address] else { return nil }
        controller.release()
        return snapshot(controller, now: clock.now())
    }

    public func device(_ address: PCIAddress) -> DeviceSnapshot? {
        controllers[address].map { snapshot($0, now: clock.now()) }
    }

    /// The daemon's settings as last loaded (the control socket's groups).
    public var settings: DaemonSettings { daemonSettings }

    /// The clock's now, for converting snapshot instants.
    public func now() -> MonotonicInstant { clock.now() }

    /// Runs `body` on the daemon's queue once, `delay` from now, by the daemon's clock.
    func after(_ delay: Duration, _ body: @escaping @Sendable @DaemonActor () -> Void) {
        clock.after(delay, body)
    }

    // MARK: Stop

    /// SIGTERM/SIGINT: STOPPING=1, then each device per its `on_stop` (by default out of
    /// low power, so it is left usable), every fd closed. Synchronous: when it returns the
    /// daemon can exit.
    /// Stops every device as its policy says, and runs `completion` once their last calls
    /// have returned (or after `settleBound`: a stuck device must not keep the daemon from
    /// exiting). The watchdog is pinged until then.
    public func stop(then completion: @escaping () -> Void = {}) {
        guard !isStopping else { return }
        isStopping = true
        notifier.stopping()
        log(.stopping, "stopping: \(summary())", [:])
        for controller in controllers.values.sorted(by: { $0.address < $1.address }) {
            controller.stop()
        }
        rescanTimer?.cancel()
        rescanTimer = nil
        vmmScanTimer?.cancel()
        vmmScanTimer = nil
        sampler?.cancel()
        sampler = nil
        openWatcher?.cancel()
        whenSettled(within: options.settleBound) { [self] in
            watchdogTimer?.cancel()
            watchdogTimer = nil
            watcher?.cancel()
            completion()
        }
    }

    // MARK: Status

    /// One line that tells the truth at a glance, for STATUS= and `systemctl status`.
    public func summary() -> String { tally.line }

    /// The daemon's totals, from the STATUS tally and each device's counters: no snapshot
    /// and no sysfs read, so asking costs little at thousands of devices.
    public func statistics() -> ManagerStatistics {
        var statistics = ManagerStatistics(
            devices: tally.devices, lowPower: tally.count(.lowPower), awake: tally.count(.awake),
            missing: tally.count(.missing), failing: tally.count(.failing), flapping: tally.flapping, wakes: tally.wakes)
        for controller in controllers.values {
            statistics.selfWakes += controller.machine.statistics.selfWakes
            statistics.arms += controller.machine.statistics.arms
            statistics.flapEpisodes += controller.machine.statistics.flapEpisodes
        }
        return statistics
    }

    /// A snapshot of every device, for tests and the control interface.
    /// Every managed device's address, in order.
    public func deviceAddresses() -> [PCIAddress] {
        controllers.keys.sorted()
    }

    public func devices() -> [DeviceSnapshot] {
        let now = clock.now()
        return controllers.values.sorted { $0.address < $1.address }.map { snapshot($0, now: now) }
    }

    private func snapshot(_ controller: DeviceController, now: MonotonicInstant) -> DeviceSnapshot {
        let sysfs = SysfsPCIDevice(address: controller.address, sysfsRoot: options.sysfsRoot)
        let suspendedTime = try? sysfs.runtimeSuspendedTime()
        // The kernel's count of suspended time since management began: the truth, where the
        // daemon's own arm-to-wake bookkeeping would count an arming the kernel never honoured.
        let kernelTimeInLowPower = controller.kernelSuspendedAtStart.flatMap { start in suspendedTime.map { max(.zero, $0 - start) } }
        return DeviceSnapshot(address: controller.address, name: controller.policy.name, policy: controller.policy,
                       phase: controller.phase, statistics: controller.machine.statistics,
                       timeInLowPower: kernelTimeInLowPower ?? controller.machine.statistics.timeInLowPower(asOf: now),
                       isFlapping: controller.machine.isFlapping, origin: controller.origin,
                       lastError: EventReporter.lastError(controller.lastVFIOError, controller.machine.statistics.lastError),
                       driver: sysfs.driver(),
                       managedFor: now - controller.managedSince,
                       holder: controller.machine.holder,
                       stuck: controller.stuck.map { ($0.call, now - $0.since) },
                       // The kernel's word, from files that never wake the device.
                       power: PowerView(runtimeStatus: try? sysfs.runtimeStatus(), powerState: try? sysfs.powerState(),
                                        runtimeSuspendedTime: suspendedTime))
    }

    /// Sends STATUS= now if the line changed.
    private func updateStatus() {
        guard isStarted else { return }
        let line = summary()
        guard line != lastStatus else { return }
        lastStatus = line
        notifier.status(line)
    }

    /// Sends STATUS= once the events already queued have been handled: a storm of wakes
    /// costs one datagram, not two per wake.
    private func scheduleStatusUpdate() {
        guard !statusUpdatePending else { return }
        statusUpdatePending = true
        DaemonActor.queue.async { [weak self] in
            DaemonActor.assumeIsolated {
                self?.statusUpdatePending = false
                self?.updateStatus()
            }
        }
    }

    /// Moves one device's contribution in the tally to what it is now.
    private func account(_ controller: DeviceController) {
        let now = StatusTally.Contribution(phase: controller.phase, flapping: controller.machine.isFlapping,
                                           wakes: controller.machine.statistics.wakes)
        guard now != controller.tallied else { return }
        tally.replace(controller.tallied, with: now)
        controller.tallied = now
    }

    // MARK: Devices

    private func addController(_ device: ResolvedDevice) {
        guard let watcher else { preconditionFailure("devices are added only after start() made the watcher") }
        let controller = DeviceController(address: device.address, policy: device.policy, origin: origin(of: device),
                                          source: source, watcher: watcher, clock: clock, calls: calls,
                                          stuckBound: options.stuckBound)
        controller.delegate = self
        controller.wakeupStore = self
        controller.kernelSuspendedAtStart = try? SysfsPCIDevice(address: device.address, sysfsRoot: options.sysfsRoot).runtimeSuspendedTime()
        applyVMMSettings(controller)
        controllers[device.address] = controller
        // Watch before the first look, so an open between the two is not missed.
        watchForVMM(controller)
        controller.start()
    }

    private func applyVMMSettings(_ controller: DeviceController) {
        controller.allowedExecutables = ExecutableAllowList(daemonSettings.vmmExecutables.value)
    }

    private func watchForVMM(_ controller: DeviceController) {
        guard controller.policy.source == .vmm, controller.policy.isManaged, let openWatcher,
              !openWatcher.isWatching(controller.address) else { return }
        openWatcher.watch(source.announcingNodes(controller.address), for: controller.address)
    }

    /// inotify saw these devices' nodes opened: a VMM may have taken them.
    private func vmmOpened(_ addresses: Set<PCIAddress>) {
        logger.debug("a group node was opened (inotify): \(addresses.sorted().map(\.description).joined(separator: ", "))",
                     source: Self.logSource)
        for address in addresses.sorted() {
            controllers[address]?.vmmMayHaveOpened()
        }
    }

    private func origin(of device: ResolvedDevice) -> String {
        "\(device.entry.selectorLocation.fileAndLine)"
    }

    private func loadConfiguration() -> (ConfigLoadResult, Resolution) {
        Self.loadConfiguration(options)
    }

    private nonisolated static func loadConfiguration(_ options: DaemonOptions) -> (ConfigLoadResult, Resolution) {
        let loaded = ConfigLoader.load(options.config)
        let resolution = DeviceResolver.resolve(loaded.configuration, sysfsRoot: options.sysfsRoot)
        return (loaded, resolution)
    }

    /// Loading a configuration parses every file into a tree and resolves it against sysfs:
    /// megabytes at thousands of entries, all freed when the load returns. glibc keeps freed
    /// heap for reuse; hand it back, so a daemon that reloaded once is not charged for it
    /// until it exits. Runs only at start and after a reload, never per event.
    private func returnFreedMemory() {
        _ = cvfio_malloc_trim()
    }

    // MARK: Timers

    /// WATCHDOG=1 at half of WatchdogSec=, from the loop itself: a stuck loop stops pinging
    /// and systemd restarts the daemon.
    private func startWatchdog() {
        guard let interval = SystemdWatchdog.pingInterval() else { return }
        let timer = clock.makeTimer { [notifier] in notifier.watchdogPing() }
        timer.schedule(every: interval, first: .zero, leeway: .milliseconds(100))
        watchdogTimer = timer
    }

    /// Missing devices (gone, not yet bound) are looked for on a timer that runs only while
    /// there is such a device.
    private func updateRescanTimer() {
        let needed = !isStopping && tally.count(.missing) > 0
        if !needed {
            rescanTimer?.cancel()
            rescanTimer = nil
            return
        }
        guard rescanTimer == nil else { return }
        let interval = daemonSettings.rescanInterval.value
        let timer = clock.makeTimer { [weak self] in self?.rescan() }
        timer.schedule(every: interval, first: interval, leeway: .milliseconds(500))
        rescanTimer = timer
    }

    /// The fallback for VMMs whose open of the group node is not seen (libvirt's private
    /// /dev): while a `vmm` device is idle, every `vmm_scan_interval` list the running
    /// processes whose executable is allowed (one readlink each) and, only if there is one,
    /// look at their files for the idle devices.
    private func updateVMMScanTimer() {
        let interval = daemonSettings.vmmScanInterval.value
        let needed = !isStopping && interval > .zero && tally.count(.idle) > 0
        if !needed {
            vmmScanTimer?.cancel()
            vmmScanTimer = nil
            return
        }
        guard vmmScanTimer == nil else { return }
        let timer = clock.makeTimer { [weak self] in self?.scanForVMMs() }
        timer.schedule(every: interval, first: interval, leeway: .milliseconds(250))
        vmmScanTimer = timer
    }

    /// One timer samples every device in use by its guest, each interval, instead of a timer
    /// per device: at thousands of devices a wake-up and a callout per device and interval
    /// cost most of what sampling costs (docs/BENCHMARKS.md).
    private func updateSampler() {
        let interval = daemonSettings.guestD3Interval.value
        if isStopping || (inUse.isEmpty && confirming.isEmpty) {
            sampler?.cancel()
            sampler = nil
            return
        }
        guard sampler == nil || samplerInterval != interval else { return }
        sampler?.cancel()
        let timer = clock.makeTimer { [weak self] in self?.sampleGuests() }
        timer.schedule(every: interval, first: interval, leeway: interval / 20)
        sampler = timer
        samplerInterval = interval
    }

    private func sampleGuests() {
        for address in inUse {
            controllers[address]?.sampleTick()
        }
        for address in confirming {
            controllers[address]?.residencyTick()
        }
    }

    func scanForVMMs() {
        let vmms = source.runningVMMs(allowed: ExecutableAllowList(daemonSettings.vmmExecutables.value))
        guard !vmms.isEmpty else { return }
        for controller in controllers.values.sorted(by: { $0.address < $1.address }) where controller.phase == .idle {
            controller.vmmMayHaveOpened(candidates: vmms)
        }
    }

    private func needsRescan(_ controller: DeviceController) -> Bool {
        controller.phase == .gone
    }

    /// Looks for missing devices: available again (the pre-open checks pass, from sysfs and
    /// /dev alone) → `returned`. A device that failed for another reason (a busy group, a
    /// refused arm) is not retried on a timer, which would log the same failure every
    /// interval: `systemctl reload` retries it.
    func rescan() {
        for controller in controllers.values.sorted(by: { $0.address < $1.address }) where needsRescan(controller) {
            if source.isAvailable(controller.address) { controller.returned() }
        }
        updateRescanTimer()
    }

    // MARK: Logging: the one place the daemon logs

    func log(_ event: DaemonEvent, _ message: String, _ fields: [String: String], level: Logger.Level? = nil) {
        // Sized once: a wake writes two of these, so rehashing shows in a storm.
        var metadata = Logger.Metadata(minimumCapacity: fields.count + 1)
        metadata[JournalField.messageID] = .string(event.messageID)
        for (key, value) in fields { metadata[key] = .string(value) }
        logger.log(level: level ?? event.defaultPriority, Logger.Message(stringLiteral: message), metadata: metadata, source: Self.logSource)
    }

    /// swift-log's `source`, given so it is not worked out from #fileID for every entry.
    private static let logSource = "PowerDaemon"

    private func logWarnings(_ problems: [ConfigProblem]) {
        for problem in problems where !problem.isError {
            logger.warning("\(problem)", metadata: ["CONFIG_FILE": .string(problem.file)])
        }
    }

    private func logRejected(_ errors: [ConfigProblem], when: String) {
        for problem in errors {
            log(.configRejected, "\(problem)", ["CONFIG_FILE": problem.file])
        }
        log(.configRejected, "configuration rejected \(when): \(errors.count) error\(errors.count == 1 ? "" : "s")", [:])
    }
}

extension Manager: WakeupStore {
    /// The fd store's name for a device's wakeup eventfd (FDNAME= may not contain ':').
    nonisolated static func wakeupName(_ address: PCIAddress) -> String {
        "wakeup-" + String(address.description.map { $0 == ":" ? "_" : $0 })
    }

    /// What systemd handed this run from the fd store.
    private func takeKeptWakeups() {
        for (name, descriptor) in SystemdNotifier.storedDescriptors() {
            if name == "control", SystemdNotifier.isListeningUnixSocket(descriptor) {
                activatedControlSocket = descriptor
                continue
            }
            let address = name.hasPrefix("wakeup-")
                ? PCIAddress(String(name.dropFirst("wakeup-".count).map { $0 == "_" ? ":" : $0 })) : nil
            guard let address else {
                _ = Glibc.close(descriptor)
                _ = notifier.removeStored(name: name)
                continue
            }
            keptWakeups[address] = EventFD(adopting: FileDescriptor(rawValue: descriptor))
        }
    }

    func takeKept(_ address: PCIAddress) -> EventFD? { keptWakeups.removeValue(forKey: address) }

    func discardKept(_ address: PCIAddress) {
        // The VMM that held it is gone: its arming ended when the VMM closed the device.
        guard keptWakeups.removeValue(forKey: address) != nil else { return }
        _ = notifier.removeStored(name: Self.wakeupName(address))
    }

    func keep(_ wakeup: EventFD, for address: PCIAddress) {
        _ = notifier.store(wakeup.descriptor.rawValue, name: Self.wakeupName(address))
    }

    func forget(_ address: PCIAddress) {
        // Stopping closes every device: what is stored then is what the next run needs.
        guard !isStopping else { return }
        keptWakeups[address] = nil
        _ = notifier.removeStored(name: Self.wakeupName(address))
    }
}

extension Manager: DeviceControllerDelegate {
    func device(_ controller: DeviceController, reported event: PolicyEvent, context: DeviceController.Context) {
        // Words and fields are built only for entries the logger keeps.
        guard logger.logLevel <= EventReporter.classify(event, context).level else { return }
        let entry = EventReporter.entry(for: event, context)
        logger.log(level: entry.level, Logger.Message(stringLiteral: entry.message), metadata: entry.metadata, source: Self.logSource)
    }

    func device(_ controller: DeviceController, looked outcome: @autoclosure () -> String) {
        guard logger.logLevel <= .debug else { return }
        logger.debug("\(controller.address): looked for its VMM: \(outcome())", source: Self.logSource)
    }

    func deviceCall(_ controller: DeviceController, underWay: Bool) {
        if underWay {
            calling[ObjectIdentifier(controller)] = controller
            guard callWatch == nil else { return }
            let timer = clock.makeTimer { [weak self] in
                guard let self else { return }
                let now = clock.now()
                for controller in calling.values { controller.checkCall(now: now) }
            }
            timer.schedule(every: .seconds(1), first: .seconds(1), leeway: .milliseconds(100))
            callWatch = timer
        } else {
            calling[ObjectIdentifier(controller)] = nil
            if calling.isEmpty {
                callWatch?.cancel()
                callWatch = nil
            }
        }
    }

    func deviceDidChange(_ controller: DeviceController, visibly: Bool) {
        // A controller a reload retired while its look for a VMM was under way finishes that
        // look, and its release, on its own: it no longer counts here.
        guard controllers[controller.address] === controller else { return }
        account(controller)
        if controller.phase == .guestActive {
            if inUse.insert(controller.address).inserted { updateSampler() }
        } else if inUse.remove(controller.address) != nil {
            updateSampler()
        }
        if controller.machine.wantsResidencySample {
            if confirming.insert(controller.address).inserted { updateSampler() }
        } else if confirming.remove(controller.address) != nil {
            updateSampler()
        }
        updateRescanTimer()
        updateVMMScanTimer()
        // A device bound late has a group node only now.
        if controller.phase == .idle { watchForVMM(controller) }
        guard visibly else { return }
        scheduleStatusUpdate()
        if let onDeviceChange { onDeviceChange(snapshot(controller, now: clock.now())) }
    }
}

/// The daemon's totals (GetStatistics).
/// The reloads a daemon has done: how many, and how the last one ended.
public struct ReloadHistory: Sendable, Equatable {
    /// Applied or rejected.
    public private(set) var count = 0
    public private(set) var lastApplied: Bool?
    public private(set) var lastAt: MonotonicInstant?

    mutating func record(applied: Bool, at instant: MonotonicInstant) {
        count += 1
        lastApplied = applied
        lastAt = instant
    }
}

public struct ManagerStatistics: Sendable, Equatable {
    public var devices = 0
    public var lowPower = 0
    public var awake = 0
    public var missing = 0
    public var failing = 0
    public var flapping = 0
    /// Wakes of the devices managed now (a device's counters go with it).
    public var wakes: UInt64 = 0
    public var selfWakes: UInt64 = 0
    public var arms: UInt64 = 0
    public var flapEpisodes: UInt64 = 0
}

/// What one device is doing, for status output.
public struct DeviceSnapshot: Sendable {
    public var address: PCIAddress
    public var name: String?
    public var policy: DevicePolicy
    public var phase: DevicePhase
    public var statistics: DeviceStatistics
    public var timeInLowPower: Duration
    public var isFlapping: Bool
    public var origin: String
    public var lastError: String?
    /// The bound driver, from sysfs.
    public var driver: String?
    /// How long the daemon has managed this entry.
    public var managedFor: Duration = .zero
    /// `vmm`: the process that holds the device, if one is known.
    public var holder: VMMHolder?
    /// A call on the device that has not returned within the bound, and for how long.
    public var stuck: (call: String, for: Duration)?
    /// sysfs as the kernel has it when the snapshot was taken.
    public var power = PowerView()
}
