import Dispatch
import PowerPolicy
import SystemPackage
import VFIO

/// Tells the manager what one device did; called on the daemon's queue.
@DaemonActor
protocol DeviceControllerDelegate: AnyObject {
    /// The state machine asked to tell the operator something.
    func device(_ controller: DeviceController, reported event: PolicyEvent, context: DeviceController.Context)
    /// The device's phase or counters changed (the STATUS line may need an update).
    /// `visibly`: something a status shows changed (the phase, a counter, the holder); a
    /// change only the machine sees (a confirmed arming) updates the bookkeeping alone.
    func deviceDidChange(_ controller: DeviceController, visibly: Bool)
    /// A call on the device began, or returned: the manager looks for stuck calls while any
    /// is under way (one timer for every device, not one per call).
    func deviceCall(_ controller: DeviceController, underWay: Bool)
    /// `vmm`: what one look for the device's VMM found (for `--log-level debug`).
    func device(_ controller: DeviceController, looked outcome: @autoclosure () -> String)
}

/// Where a `vmm` device's wakeup eventfd outlives the daemon: systemd's fd store, so that a
/// restarted daemon knows a device is still armed without an ioctl (which would wake it).
@DaemonActor
protocol WakeupStore: AnyObject {
    /// The eventfd the previous run kept for `address`, once.
    func takeKept(_ address: PCIAddress) -> EventFD?
    /// The device's first look found no VMM to adopt from: the kept eventfd is of no use.
    func discardKept(_ address: PCIAddress)
    func keep(_ wakeup: EventFD, for address: PCIAddress)
    func forget(_ address: PCIAddress)
}

/// One managed device: its state machine, its open file, its eventfds (wakeup and removal
/// request, watched in the manager's `EventFDWatcher`) and one Dispatch timer. It carries
/// out the machine's actions in order and feeds each outcome back as the next event (the
/// protocol in `DeviceStateMachine`).
///
/// Confined to the daemon's serial queue (`@DaemonActor`, checked by the compiler): every
/// method runs there, and so does every source handler. That is the whole of its
/// thread-safety. The one exception is the work of a call that touches the device (open, arm,
/// exit, close, a d3cold_allowed write): it runs on the device's own serial queue, is
/// `@Sendable` and sees only the Sendable values handed to it, and hands its result back to
/// the daemon's queue; the controller takes no other event meanwhile.
@DaemonActor
final class DeviceController {
    let address: PCIAddress
    private(set) var machine: DeviceStateMachine
    /// Where the device's entry came from, for status and logs.
    private(set) var origin: String

    private let source: any DeviceSource
    /// Where this device's calls run. Each can resume the device: hundreds of milliseconds
    /// on a real GPU, and no end on a broken one. A queue of its own, so that one device's
    /// slow call never delays another device, the control socket or the watchdog; serial,
    /// so that its calls keep their order (a close before the next open).
    private let deviceQueue: DispatchQueue
    /// Every call under way on any device: the manager waits for them (within a bound)
    /// before READY=1 and before it exits.
    private let calls: DispatchGroup
    private let watcher: EventFDWatcher
    private let clock: any DaemonClock
    weak var delegate: (any DeviceControllerDelegate)?
    /// `vmm`: where the wakeup eventfd is kept across restarts.
    weak var wakeupStore: (any WakeupStore)?

    private var device: (any LowPowerDevice)?
    private var wakeup: EventFD?
    private var wakeupWatch: EventFDWatcher.Token?
    private var removalWatch: EventFDWatcher.Token?
    private var timer: (any DaemonTimer)?
    /// Whether the timer is scheduled (a fired or cancelled one waits at distantFuture).
    private var timerArmed = false
    /// The most recent VFIO error, whose words are more precise than an errno.
    private var lastError: VFIOError?
    /// `vmm`: the process that holds the device (adopted from or left alone), and the watch on
    /// its pidfd.
    private var vmm: VMMProcess?
    private var vmmExitWatch: EventFDWatcher.Token?
    /// `own`: the processes that held the group when opening it failed with EBUSY, followed by
    /// their pidfds: the first exit opens the device again.
    private var busyHolderWatches: [EventFDWatcher.Token] = []
    /// `vmm`: which processes may be adopted from (the daemon's `vmm_executables`).
    var allowedExecutables = ExecutableAllowList()
    /// `vmm`: a file handed over, for the `adopt` the machine asks for next.
    private var pendingHandoff: (device: any LowPowerDevice, process: VMMProcess)?
    /// `vmm`: the processes the next look is limited to (the operator's pid, the fallback
    /// scan's VMMs); nil: every process.
    private var candidates: [Int32]?
    /// When the daemon began managing this entry (for the share of time in low power).
    let managedSince: MonotonicInstant
    /// The kernel's `power/runtime_suspended_time` when management began: time in low power
    /// is the kernel's count since then. Nil where sysfs has no counter (the simulator).
    var kernelSuspendedAtStart: Duration?
    /// What this device last added to the manager's STATUS tally (the manager's field).
    var tallied: StatusTally.Contribution?

    /// What the reporter may add to a policy event's words.
    struct Context {
        let address: PCIAddress
        let name: String?
        let mode: DevicePolicy.Mode
        let source: DevicePolicy.Source
        let error: VFIOError?
        let statistics: DeviceStatistics
        let now: MonotonicInstant
        /// "0000:01:00.0" and "0000:01:00.0 (gpu)", which every entry of the device repeats.
        let addressText: String
        let label: String

        init(address: PCIAddress, name: String?, mode: DevicePolicy.Mode, source: DevicePolicy.Source = .own,
             error: VFIOError?, statistics: DeviceStatistics, now: MonotonicInstant, names: Names? = nil) {
            self.address = address
            self.name = name
            self.mode = mode
            self.source = source
            self.error = error
            self.statistics = statistics
            self.now = now
            let names = names ?? Names(address: address, name: name)
            self.addressText = names.addressText
            self.label = names.label
        }
    }

    /// The device's words for log entries, formatted once per name rather than per entry.
    struct Names {
        let name: String?
        let addressText: String
        let label: String

        init(address: PCIAddress, name: String?) {
            self.name = name
            addressText = address.description
            label = name.map { "\(address) (\($0))" } ?? addressText
        }
    }

    private var names: Names

    init(address: PCIAddress, policy: DevicePolicy, origin: String, source: any DeviceSource,
         watcher: EventFDWatcher, clock: any DaemonClock, calls: DispatchGroup = DispatchGroup(),
         stuckBound: Duration = .seconds(10)) {
        self.address = address
        self.machine = DeviceStateMachine(policy: policy)
        self.origin = origin
        self.source = source
        // A serial queue targets an overcommitting root queue: a call that hangs holds one
        // thread, and the next device's call gets another.
        self.deviceQueue = DispatchQueue(label: "vfio-powerd.device.\(address)")
        self.calls = calls
        self.stuckBound = stuckBound
        self.watcher = watcher
        self.clock = clock
        self.managedSince = clock.now()
        self.names = Names(address: address, name: policy.name)
    }

    var phase: DevicePhase { machine.phase }
    var policy: DevicePolicy { machine.policy }
    var lastVFIOError: VFIOError? { lastError }

    // MARK: Events

    func start() { run { $0.configured(now: $1) } }
    func policyChanged(_ policy: DevicePolicy, origin: String) {
        self.origin = origin
        run { $0.policyChanged(policy, now: $1) }
    }
    func stop() { run { $0.stopRequested(now: $1) } }
    func removed() { run { $0.removed(now: $1) } }
    func returned() { run { $0.returned(now: $1) } }
    /// The operator's Wake: out of low power, held awake for `duration` (nil: until Arm).
    func wake(for duration: Duration?) { run { machine, now in machine.wakeRequested(until: duration.map { now + $0 }, now: now) } }
    /// The operator's Arm.
    func arm() { run { $0.armRequested(now: $1) } }
    /// `vmm`: a process may have opened the device (inotify, the fallback scan, the operator).
    func vmmMayHaveOpened(candidates: [Int32]? = nil) {
        self.candidates = candidates
        run { $0.vmmMayHaveOpened(now: $1) }
        self.candidates = nil
    }
    /// `vmm`: a device file handed over on the control socket; false when the machine does not
    /// take it now (it holds one already), and then the file is closed.
    /// `completion` runs on the queue once the machine has decided, which waits for a look
    /// for the VMM that is under way (the sender's own open of the group starts one).
    func handoff(_ handed: any LowPowerDevice, from process: VMMProcess, completion: @escaping (Bool) -> Void) {
        pendingHandoff = (handed, process)
        handoffCompletion = completion
        run { [self] machine, now in
            handoffDecided = true
            return machine.handoffOffered(now: now)
        }
    }

    private var handoffCompletion: ((Bool) -> Void)?
    private var handoffDecided = false

    /// Answers a handoff once its event has run: taken if the machine's `adopt` took the file.
    private func settleHandoff() {
        guard handoffDecided, let completion = handoffCompletion else { return }
        handoffDecided = false
        handoffCompletion = nil
        let taken = pendingHandoff == nil
        if let refused = pendingHandoff?.device { closeOnDeviceQueue(refused) }
        pendingHandoff = nil
        completion(taken)
    }
    /// `vmm`: let go of the device's file now.
    func release() { run { $0.releaseRequested(now: $1) } }
    /// `vmm`: one turn of the daemon's sampler, for a device in use by its guest: reads its
    /// power state (one pread, one readlink; never wakes it) and tells the machine only what
    /// can change something: D3hot, a VMM that let go, a device gone from sysfs.
    func sampleTick() {
        guard machine.phase == .guestActive, let device else { return }
        let sample: GuestPowerSample
        if let read = source.sampleGuest(device) {
            let powerState: GuestPowerSample.PowerState = switch read.powerState {
            case .d0: .d0
            case .d3hot: .d3hot
            default: .other
            }
            sample = GuestPowerSample(powerState: powerState, runtimeSuspended: read.runtimeStatus == .suspended,
                                      vmmHoldsDevice: read.vmmHoldsDevice)
            if sample.powerState == .d0, sample.vmmHoldsDevice, !machine.wantsEverySample { return }
        } else {
            // sysfs no longer has the device: the VMM's file is all that is left of it.
            sample = GuestPowerSample(powerState: .other, runtimeSuspended: false, vmmHoldsDevice: false)
        }
        run { $0.sampled(sample, now: $1) }
    }

    /// One turn of the daemon's sampler for an armed device the kernel has not been seen to
    /// suspend: reads `power/runtime_status` (and why it is awake), never waking it.
    func residencyTick() {
        guard machine.wantsResidencySample, let read = source.residency(address) else { return }
        let sample: ResidencySample
        if read.runtimeStatus == .suspended {
            sample = ResidencySample(suspended: true)
        } else if read.powerControl == .on {
            sample = ResidencySample(suspended: false, keptAwakeBy: .runtimePMForbidden)
        } else if let children = read.activeChildren, children > 0 {
            sample = ResidencySample(suspended: false, keptAwakeBy: .activeChildren(children))
        } else {
            sample = ResidencySample(suspended: false, keptAwakeBy: .unknown)
        }
        run { $0.residencySampled(sample, now: $1) }
    }

    private typealias Event = (inout DeviceStateMachine, MonotonicInstant) -> [DeviceAction]

    /// What the controller waits for before it takes its next event: a look for the device's
    /// VMM, or a call on the device. Both run off the daemon's queue, and their outcome is the
    /// machine's next event, so events that come meanwhile wait in `deferred`, in order.
    private enum Waiting {
        case look
        case call(String, since: MonotonicInstant)
    }
    private var waitingFor: Waiting?
    private var deferred: [Event] = []

    /// How long a call on the device may take before the status calls the device stuck.
    private let stuckBound: Duration
    /// A call that has not returned within `stuckBound`: which, and since when.
    private(set) var stuck: (call: String, since: MonotonicInstant)?

    /// Where looks for VMMs run: /proc of other processes can be slow to read (seen in the lab:
    /// over ten seconds while a VMM started under TCG), and the daemon's queue must keep
    /// handling other devices, the control socket and the watchdog meanwhile.
    private static let lookout = DispatchQueue(label: "vfio-powerd.lookout", attributes: .concurrent)

    /// Feeds one event to the machine and carries out what it returns.
    private func run(_ event: @escaping Event) {
        if waitingFor != nil {
            deferred.append(event)
            return
        }
        let shown = Shown(machine)
        proceed(event(&machine, clock.now())[...], outcome: nil, shown: shown)
    }

    /// Carries out `actions` in order. Each list holds at most one action with an outcome,
    /// which is the machine's next event once the list is done (or at once, when the action
    /// says to skip the rest). A look or a device call suspends the turn; it goes on from
    /// here when the result is back on the queue.
    private func proceed(_ actions: ArraySlice<DeviceAction>, outcome: Outcome?, shown: Shown) {
        var actions = actions
        var outcome = outcome
        while true {
            while let action = actions.popFirst() {
                if case .adopt = action, pendingHandoff == nil {
                    // The last action of its list; the outcome comes back in lookFinished.
                    startLook(shown: shown)
                    return
                }
                if let call = deviceCall(action) {
                    start(call, rest: actions, outcome: outcome, shown: shown)
                    return
                }
                if let result = perform(action) {
                    outcome = result
                    if result.skipRest { actions = [] }
                }
            }
            guard let next = outcome else { break }
            outcome = nil
            actions = next.event(&machine, clock.now())[...]
        }
        delegate?.deviceDidChange(self, visibly: Shown(machine) != shown)
        settleHandoff()
        let waiting = deferred
        deferred = []
        for (index, event) in waiting.enumerated() {
            run(event)
            if waitingFor != nil {
                // That event started a look or a call: the rest wait for it, still in order.
                deferred = Array(waiting[(index + 1)...]) + deferred
                break
            }
        }
        if waitingFor == nil, !settledWaiters.isEmpty {
            let waiters = settledWaiters
            settledWaiters = []
            for waiter in waiters { waiter() }
        }
    }

    /// A call that touches the device: `work` runs on the device's queue and returns what
    /// the daemon's queue does with its result.
    private struct DeviceCall {
        let name: String
        let work: @Sendable () -> @Sendable @DaemonActor () -> Outcome?
    }

    /// The rest of the turn a device call suspended, taken up when its result is back (one at
    /// a time: the controller takes no event while a call is under way).
    private var suspendedTurn: (rest: ArraySlice<DeviceAction>, outcome: Outcome?, shown: Shown)?

    private func start(_ call: DeviceCall, rest: ArraySlice<DeviceAction>, outcome: Outcome?, shown: Shown) {
        let since = clock.now()
        waitingFor = .call(call.name, since: since)
        suspendedTurn = (rest, outcome, shown)
        calls.enter()
        delegate?.deviceCall(self, underWay: true)
        let work = call.work, calls = self.calls
        deviceQueue.async { [self] in
            let finish = work()
            DaemonActor.queue.async { [self] in
                DaemonActor.assumeIsolated {
                    callFinished(finish)
                    calls.leave()
                }
            }
        }
    }

    /// Takes up the turn a device call suspended, with the call's result.
    private func callFinished(_ finish: @DaemonActor () -> Outcome?) {
        guard let (rest, outcome, shown) = suspendedTurn else { preconditionFailure("a call returned to no turn") }
        suspendedTurn = nil
        callReturned()
        var actions = rest
        var next = outcome
        if let result = finish() {
            next = result
            if result.skipRest { actions = [] }
        }
        proceed(actions, outcome: next, shown: shown)
    }

    /// The manager's look at a call under way: one that has run for `stuckBound` makes the
    /// device stuck until it returns.
    func checkCall(now: MonotonicInstant) {
        guard stuck == nil, case .call(let name, let since)? = waitingFor, now - since >= stuckBound else { return }
        stuck = (name, since)
        delegate?.device(self, reported: .stuck(call: name, for: now - since), context: context(now))
        delegate?.deviceDidChange(self, visibly: true)
    }

    private func callReturned() {
        waitingFor = nil
        delegate?.deviceCall(self, underWay: false)
        if let stuck {
            self.stuck = nil
            delegate?.device(self, reported: .unstuck(call: stuck.call, after: clock.now() - stuck.since),
                             context: context(clock.now()))
        }
    }

    /// Whether a call or a look is under way.
    var isWaiting: Bool { waitingFor != nil }

    private var settledWaiters: [() -> Void] = []

    /// Runs `body` on the queue once no look or call is under way and no event waits.
    func whenSettled(_ body: @escaping () -> Void) {
        if waitingFor == nil { body() } else { settledWaiters.append(body) }
    }

    /// What a device's status shows of its machine.
    private struct Shown: Equatable {
        var phase: DevicePhase
        var statistics: DeviceStatistics
        var isFlapping: Bool
        var holder: VMMHolder?
        init(_ machine: DeviceStateMachine) {
            phase = machine.phase
            statistics = machine.statistics
            isFlapping = machine.isFlapping
            holder = machine.holder
        }
    }

    private struct Outcome {
        var event: Event
        var skipRest = false
    }

    private func startLook(shown: Shown) {
        waitingFor = .look
        lookShown = shown
        let candidates = self.candidates
        let allowed = allowedExecutables
        let source = self.source, address = self.address
        Self.lookout.async { [self] in
            let outcome = source.adopt(address, candidates: candidates, allowed: allowed)
            DaemonActor.queue.async { [self] in DaemonActor.assumeIsolated { lookFinished(outcome) } }
        }
    }

    /// What the status showed when the turn that started the look began.
    private var lookShown: Shown?

    private func lookFinished(_ outcome: AdoptionOutcome) {
        waitingFor = nil
        let shown = lookShown ?? Shown(machine)
        lookShown = nil
        proceed([], outcome: adopted(outcome), shown: shown)
    }

    /// The work of an action that touches the device, or nil for one the queue does itself.
    private func deviceCall(_ action: DeviceAction) -> DeviceCall? {
        let source = self.source, address = self.address
        switch action {
        case .open:
            return DeviceCall(name: "open") {
                let result: Result<any LowPowerDevice, VFIOError>
                do throws(VFIOError) { result = .success(try source.openDevice(address)) } catch { result = .failure(error) }
                return { [self] in opened(result) }
            }
        case .setD3coldAllowed(let allowed):
            return DeviceCall(name: "d3cold_allowed write") {
                do throws(SysfsError) {
                    try source.setD3coldAllowed(allowed, for: address)
                    return { nil }
                } catch {
                    // The kernel's errno says what a failed write means; content no kernel
                    // writes there is a refusal with none.
                    let failure = error.errno.map { CallFailure(errno: $0) } ?? CallFailure(.refused, errno: nil)
                    return { Outcome(event: { $0.d3coldWriteFailed(failure, now: $1) }, skipRest: true) }
                }
            }
        case .arm(let mode):
            guard let device else { return nil }
            let wakeup = self.wakeup
            return DeviceCall(name: "arm") {
                do throws(VFIOError) {
                    switch mode {
                    case .oneShot:
                        guard let wakeup else { return { Outcome(event: { $0.armFailed(CallFailure(.refused, errno: nil), now: $1) }) } }
                        try device.arm(.oneShot(wakeup: wakeup))
                    case .reentrant:
                        try device.arm(.reentrant)
                    }
                    return { [self] in
                        lastError = nil
                        return Outcome(event: { $0.armed(now: $1) })
                    }
                } catch {
                    return { [self] in
                        lastError = error
                        let failure = Self.failure(error)
                        return Outcome(event: { $0.armFailed(failure, now: $1) })
                    }
                }
            }
        case .exitLowPower:
            guard let device else { return nil }
            let wakeup = self.wakeup
            return DeviceCall(name: "exit low power") {
                do throws(VFIOError) {
                    try device.exitLowPower()
                    // EXIT on a suspended one-shot device resumes it, which fires the eventfd:
                    // drain it now so the machine can count that wake as our own. (The
                    // watcher may read it first; the machine then takes it as stale.)
                    let drained = ((try? wakeup?.read()) ?? nil) ?? 0
                    return { Outcome(event: { $0.exited(drainedWakes: drained, now: $1) }) }
                } catch {
                    return { [self] in
                        lastError = error
                        let failure = Self.failure(error)
                        return Outcome(event: { $0.exitFailed(failure, now: $1) })
                    }
                }
            }
        case .startTimer, .cancelTimer, .close, .adopt, .log:
            return nil
        }
    }

    private func perform(_ action: DeviceAction) -> Outcome? {
        switch action {
        case .open, .setD3coldAllowed:
            preconditionFailure("\(action) runs on the device's queue")
        case .arm:
            // `deviceCall` takes an arm whenever a device is open.
            return Outcome(event: { $0.armFailed(CallFailure(.gone, errno: nil), now: $1) })
        case .exitLowPower:
            return Outcome(event: { $0.exitFailed(CallFailure(.gone, errno: nil), now: $1) })
        case .startTimer(let delay):
            startTimer(delay)
            return nil
        case .cancelTimer:
            cancelTimer()
            return nil
        case .close:
            close()
            return nil
        case .adopt:
            // Only a handed-over file is taken here, at once; a look runs off the queue.
            guard let handed = pendingHandoff else { preconditionFailure("run() starts looks for VMMs") }
            pendingHandoff = nil
            return adopted(.adopted(handed.device, handed.process, method: .handoff))
        case .log(let event):
            delegate?.device(self, reported: event, context: context(clock.now()))
            return nil
        }
    }

    func context(_ now: MonotonicInstant) -> Context {
        if names.name != policy.name { names = Names(address: address, name: policy.name) }
        return Context(address: address, name: policy.name, mode: policy.mode, source: policy.source, error: lastError,
                       statistics: machine.statistics, now: now, names: names)
    }

    // MARK: Adopting from a VMM

    /// Takes up what a look for the VMM found (or a handed-over file), on the queue.
    private func adopted(_ outcome: AdoptionOutcome) -> Outcome {
        delegate?.device(self, looked: Self.describe(outcome))
        if case .adopted = outcome {} else { wakeupStore?.discardKept(address) }
        switch outcome {
        case .noHolder:
            return Outcome(event: { $0.noVMM(now: $1) })
        case .failed(let error):
            lastError = error
            return Outcome(event: { $0.noVMM(now: $1) })
        case .refused(let process, let problem):
            follow(process)
            let holder = VMMHolder(pid: process.pid, executable: process.executable)
            let refusal: AdoptionRefusal = switch problem {
            case .executableNotAllowed: .executableNotAllowed
            case .ambiguous(let files): .ambiguous(deviceFiles: files)
            case .noDeviceFile: .noDeviceFile
            case .notPermitted(let errno): .notPermitted(errno)
            }
            return Outcome(event: { $0.adoptionRefused(holder, refusal, now: $1) })
        case .adopted(let adopted, let process, let basis):
            let wakeup: EventFD
            var kept: KeptWakeup?
            do {
                if let previous = wakeupStore?.takeKept(address) {
                    // The previous run's: its counter holds the wakes that happened meanwhile.
                    kept = KeptWakeup(wakesWhileAway: ((try? previous.read()) ?? nil) ?? 0)
                    wakeup = previous
                } else {
                    wakeup = try EventFD()
                }
                wakeupWatch = try watcher.watch(wakeup) { [weak self] in self?.wakeupFired($0) }
            } catch {
                closeOnDeviceQueue(adopted)
                follow(process)
                let holder = VMMHolder(pid: process.pid, executable: process.executable)
                return Outcome(event: { $0.adoptionRefused(holder, .notPermitted(error), now: $1) })
            }
            follow(process)
            device = adopted
            self.wakeup = wakeup
            wakeupStore?.keep(wakeup, for: address)
            lastError = nil
            let holder = VMMHolder(pid: process.pid, executable: process.executable)
            let method: AdoptionMethod = switch basis {
            case .fdinfo: .fdinfo
            case .unambiguous: .unambiguous
            case .handoff: .handoff
            }
            return Outcome(event: { $0.adopted(holder, method: method, kept: kept, now: $1) })
        }
    }

    private static func describe(_ outcome: AdoptionOutcome) -> String {
        switch outcome {
        case .noHolder: "no process holds its group"
        case .failed(let error): "cannot look: \(error)"
        case .refused(let process, let problem): "held by pid \(process.pid) (\(process.executable)), not adopted: \(problem)"
        case .adopted(_, let process, let basis): "adopted from pid \(process.pid) (\(basis))"
        }
    }

    /// Watches the holder's pidfd: its exit releases the device.
    private func follow(_ process: VMMProcess) {
        if vmm === process { return }
        stopFollowing()
        vmm = process
        vmmExitWatch = try? watcher.watchExit(process.exitNotifier, owner: process) { [weak self] in
            self?.vmmExitWatch = nil
            self?.run { $0.vmmExited(now: $1) }
        }
    }

    private func stopFollowing() {
        vmmExitWatch.map(watcher.unwatch)
        vmmExitWatch = nil
        vmm = nil
    }

    // MARK: Opening and closing

    /// Takes up what opening the device (on its queue) gave.
    private func opened(_ result: Result<any LowPowerDevice, VFIOError>) -> Outcome {
        stopFollowingBusyHolders()
        let opened: any LowPowerDevice
        switch result {
        case .success(let device):
            opened = device
        case .failure(let error):
            lastError = error
            let failure = Self.failure(error)
            if error.code == .groupBusy { followBusyHolders(error.holders) }
            return Outcome(event: { $0.openFailed(failure, now: $1) })
        }
        // The machine arms in the policy's mode: that entry and EXIT must both be there.
        let needed: LowPowerFeature = policy.mode == .reentrant ? .reentrantEntry : .oneShotEntry
        for feature in [needed, .exit] where !opened.lowPowerSupport.supports(feature) {
            closeOnDeviceQueue(opened)
            lastError = VFIOError(.featureAbsent(feature), device: address, operation: .manageLowPower,
                                  errno: opened.lowPowerSupport.refusals[feature])
            let failure = CallFailure(.unsupported, errno: opened.lowPowerSupport.refusals[feature])
            return Outcome(event: { $0.openFailed(failure, now: $1) })
        }
        let wakeup: EventFD
        do {
            wakeup = try EventFD()
        } catch {
            closeOnDeviceQueue(opened)
            return Outcome(event: { $0.openFailed(CallFailure(errno: error), now: $1) })
        }
        do {
            wakeupWatch = try watcher.watch(wakeup) { [weak self] in self?.wakeupFired($0) }
            if let request = opened.removalRequest {
                removalWatch = try watcher.watch(request) { [weak self] _ in self?.removalRequested() }
            }
        } catch {
            // epoll refused (max_user_watches, memory): without a watch a wake would go unseen.
            wakeupWatch.map(watcher.unwatch)
            wakeupWatch = nil
            closeOnDeviceQueue(opened)
            return Outcome(event: { $0.openFailed(CallFailure(errno: error), now: $1) })
        }
        device = opened
        self.wakeup = wakeup
        lastError = nil
        return Outcome(event: { $0.opened(now: $1) })
    }

    /// Follows the processes that hold the group: the first to exit opens the device again.
    /// One that exited already (ESRCH) has let go: the device is opened again at once, after
    /// this open's failure has been reported.
    private func followBusyHolders(_ holders: [ProcessHolding]) {
        var exited = false
        for holder in holders {
            switch VMMProcess.follow(pid: holder.pid, executable: holder.command) {
            case .success(let process):
                if let token = try? watcher.watchExit(process.exitNotifier, owner: process, { [weak self] in
                    self?.busyHolderExited()
                }) {
                    busyHolderWatches.append(token)
                }
            case .failure(.noSuchProcess):
                exited = true
            case .failure:
                break  // cannot follow it: `systemctl reload` retries
            }
        }
        if exited { DaemonActor.queue.async { [weak self] in DaemonActor.assumeIsolated { self?.busyHolderExited() } } }
    }

    private func busyHolderExited() {
        stopFollowingBusyHolders()
        run { $0.busyHolderExited(now: $1) }
    }

    private func stopFollowingBusyHolders() {
        for token in busyHolderWatches { watcher.unwatch(token) }
        busyHolderWatches.removeAll()
    }

    /// Closing a device file can wait for the device (vfio resets it on the last close): it
    /// runs on the device's queue, after the calls before it, and the turn goes on without it.
    private func closeOnDeviceQueue(_ device: any LowPowerDevice) {
        calls.enter()
        deviceQueue.async { [calls] in
            device.close()
            calls.leave()
        }
    }

    /// Stops watching its eventfds, then closes the device; the kernel exits low power on
    /// close (without signalling) and can finish an unbind that was waiting for us.
    private func close() {
        timer?.cancel()
        timer = nil
        timerArmed = false
        wakeupWatch.map(watcher.unwatch)
        wakeupWatch = nil
        removalWatch.map(watcher.unwatch)
        removalWatch = nil
        if let device { closeOnDeviceQueue(device) }
        device = nil
        if wakeup != nil, policy.source == .vmm { wakeupStore?.forget(address) }
        wakeup = nil
        stopFollowing()
    }

    // MARK: Eventfd handlers (the watcher has read and reset the counter)

    private func wakeupFired(_ count: UInt64) {
        device?.noteWoke()
        run { $0.woke(count: count, now: $1) }
    }

    /// The kernel asks for the device back (it asks again every 10 s until it is closed).
    private func removalRequested() {
        run { $0.removed(now: $1) }
    }

    // MARK: The one timer

    /// Schedules the device's one timer, replacing a running one. The source is created
    /// once and rescheduled: a wake should not cost a new kernel timer registration.
    private func startTimer(_ delay: Duration) {
        let timer = self.timer ?? makeTimer()
        // Leeway lets the kernel batch wake-ups (a re-arm a few ms late costs nothing), but
        // never more than a tenth of the delay: a 0 s re-arm delay means at once.
        timer.schedule(after: delay, leeway: min(.milliseconds(10), delay / 10))
        timerArmed = true
    }

    /// Stops the timer without destroying it: it waits, unscheduled, for the next start.
    private func cancelTimer() {
        guard timerArmed else { return }
        timerArmed = false
        timer?.cancel()
    }

    private func makeTimer() -> any DaemonTimer {
        let timer = clock.makeTimer { [weak self] in
            guard let self, self.timerArmed else { return }
            self.timerArmed = false
            self.run { $0.timerFired(now: $1) }
        }
        self.timer = timer
        return timer
    }

    // MARK: Errors

    /// What a VFIO failure means for management, with the errno the kernel gave (none where
    /// no call answered: a device found missing or unbound in sysfs).
    nonisolated static func failure(_ error: VFIOError) -> CallFailure {
        switch error.code {
        case .deviceNotFound, .notBoundToVFIO, .noIOMMUGroup, .groupNotViable, .vfioUnavailable, .deviceGone, .resumeFailed:
            CallFailure(.gone, errno: error.errno)
        case .cdevOnly, .featureAbsent:
            CallFailure(.unsupported, errno: error.errno)
        case .groupBusy:
            CallFailure(.busy, errno: error.errno)
        case .alreadyEngaged:
            CallFailure(.alreadyEngaged, errno: error.errno)
        case .notPermitted, .badEventFD, .closed:
            CallFailure(.refused, errno: error.errno)
        case .unexpected:
            error.errno.map { CallFailure(errno: $0) } ?? CallFailure(.refused, errno: nil)
        }
    }
}
