// vfio-powerd-bench: the daemon's real Manager and Dispatch loop with N simulated devices
// over real eventfds, in this process, measured the same way as bench/baseline.c measures a
// plain epoll loop (see bench/README.md and docs/BENCHMARKS.md).
//
//   vfio-powerd-bench --devices N --out FILE.json [--samples K] [--idle-seconds S] ...
//
// Thread layout, as in the baseline: this program's main thread is the injector (it "accesses"
// a simulated device, which writes the device's wakeup eventfd as the kernel would), the
// daemon's serial queue is the loop. Every timestamp is CLOCK_MONOTONIC. A sample ends when the
// simulated device sees the daemon's re-arm ioctl (SimulatedDevice.armObserver).
import Glibc
import Dispatch
import Foundation
import Logging
import PowerConfig
import PowerDaemon
import Synchronization
import SystemPackage
import VFIO
import VFIOSimulator
import Varlink

// MARK: Arguments

struct Arguments {
    var devices = 64
    var samples = 10_000
    var warmup = 500
    var gapMicroseconds = 200
    var rounds = 0            // 0: chosen from N
    var roundGapMicroseconds = 2_000
    var idleSeconds = 30.0
    var watchdogUsec = 30_000_000  // WatchdogSec=30s, as systemd/vfio-powerd.service sets it
    var out = "-"
    /// The daemon logger's level: info (the shipped default) builds every wake's two entries.
    var logLevel = Logger.Level.info
    /// `--vmm 1`: the vmm-device measures (VMMBench.swift) instead of the own-device ones.
    var vmm = false

    init() {
        var args = CommandLine.arguments.dropFirst().makeIterator()
        while let flag = args.next() {
            guard let value = args.next() else { fatalError("\(flag) needs a value") }
            switch flag {
            case "--devices": devices = Int(value)!
            case "--samples": samples = Int(value)!
            case "--warmup": warmup = Int(value)!
            case "--gap-us": gapMicroseconds = Int(value)!
            case "--rounds": rounds = Int(value)!
            case "--round-gap-us": roundGapMicroseconds = Int(value)!
            case "--idle-seconds": idleSeconds = Double(value)!
            case "--watchdog-usec": watchdogUsec = Int(value)!
            case "--out": out = value
            case "--log-level": logLevel = Logger.Level(rawValue: value)!
            case "--vmm": vmm = value == "1"
            default: fatalError("unknown option \(flag)")
            }
        }
        if rounds == 0 { rounds = max(10, min(2_000, 40_000 / devices)) }
    }
}

// MARK: Clock and rusage

@inline(__always) func nowNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

func sleepMicroseconds(_ us: Int) {
    var ts = timespec(tv_sec: us / 1_000_000, tv_nsec: (us % 1_000_000) * 1_000)
    var left = timespec()
    while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
}

struct Usage: Codable {
    var userUsec: Int64 = 0, systemUsec: Int64 = 0, voluntary: Int64 = 0, involuntary: Int64 = 0
    init() {}
    init(_ who: Int32) {
        var r = rusage()
        getrusage(who, &r)
        userUsec = Int64(r.ru_utime.tv_sec) * 1_000_000 + Int64(r.ru_utime.tv_usec)
        systemUsec = Int64(r.ru_stime.tv_sec) * 1_000_000 + Int64(r.ru_stime.tv_usec)
        voluntary = Int64(r.ru_nvcsw)
        involuntary = Int64(r.ru_nivcsw)
    }
    static func - (a: Usage, b: Usage) -> Usage {
        var d = Usage()
        d.userUsec = a.userUsec - b.userUsec; d.systemUsec = a.systemUsec - b.systemUsec
        d.voluntary = a.voluntary - b.voluntary; d.involuntary = a.involuntary - b.involuntary
        return d
    }
}

/// VmRSS now (getrusage only has the peak), from /proc/self/status.
func currentRSSKilobytes() -> Int64 {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
    return Int64(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
}

func maxRSSKilobytes() -> Int64 {
    var r = rusage()
    getrusage(0, &r)  // RUSAGE_SELF
    return Int64(r.ru_maxrss)
}

// MARK: What the loop reports back

/// Written by the arm observer on the daemon's queue, read by the injector.
final class ArmProbe: Sendable {
    let count = Atomic<Int>(0)
    let lastArm = Atomic<Int64>(0)
    /// When the daemon last read a wake (SimulatedDevice.wakeObserver, from noteWoke).
    let lastWake = Atomic<Int64>(0)
}

/// A log handler that lets the daemon build every message and its metadata, then drops it:
/// the daemon's cost without the journal's (the baseline writes no log either).
struct DiscardingLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        _ = event.message.description.utf8.count
    }
}

// MARK: Playing systemd: NOTIFY_SOCKET

/// A datagram socket at NOTIFY_SOCKET, read on its own thread so sd_notify never blocks. That
/// thread keeps its own rusage so the idle figures can leave it out (it is systemd's side).
final class NotifyReceiver: @unchecked Sendable {
    let path: String
    let fd: Int32
    private let lock = NSLock()
    private var _messages: [String: Int] = [:]
    private var _threadUsage = Usage()
    private var _total = 0

    init(directory: String) {
        path = directory + "/notify.sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        precondition(fd >= 0)
        // The path is the harness's own, under a temporary directory: it fits.
        let bound = try! UnixSocketAddress.with(path) { bind(fd, $0, $1) }
        precondition(bound == 0, "bind \(path): errno \(errno)")
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    func start() {
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n < 0 { if errno == EINTR { continue } else { return } }
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                let usage = Usage(1)  // RUSAGE_THREAD
                lock.withLock {
                    _total += 1
                    for line in text.split(separator: "\n") {
                        let key = String(line.split(separator: "=", maxSplits: 1).first ?? "")
                        _messages[key, default: 0] += 1
                    }
                    _threadUsage = usage
                }
            }
        }
        thread.start()
    }

    var messages: [String: Int] { lock.withLock { _messages } }
    var total: Int { lock.withLock { _total } }
    var threadUsage: Usage { lock.withLock { _threadUsage } }
}

// MARK: Results

struct Percentiles: Codable {
    var count: Int, min: Double, p50: Double, p90: Double, p99: Double, p999: Double, max: Double, mean: Double
    init(microseconds values: [Double]) {
        let s = values.sorted()
        func at(_ q: Double) -> Double { s[Swift.min(s.count - 1, Int((q * Double(s.count)).rounded(.up)) - 1)] }
        count = s.count; min = s.first!; max = s.last!
        p50 = at(0.5); p90 = at(0.9); p99 = at(0.99); p999 = at(0.999)
        mean = s.reduce(0, +) / Double(s.count)
    }
}

struct Results: Codable {
    var side = "daemon"
    var devices = 0
    var startupMilliseconds = 0.0
    var ready = false
    var latencyMicroseconds: Percentiles?
    /// The same over the other N-1 devices while one device's re-arm hangs.
    var latencyWithOneDeviceStalledMicroseconds: Percentiles?
    /// The same samples split: eventfd write → the daemon has read the wake (its read source
    /// ran), and wake read → re-arm issued (the decision, the timer, the bookkeeping).
    var wakeReadMicroseconds: Percentiles?
    var readToRearmMicroseconds: Percentiles?
    var rssAfterReloadKilobytes: Int64 = 0
    var latencyGapMicroseconds = 0
    var storm = Storm()
    var idle = Idle()
    var reload = Reload()
    var maxRSSKilobytes: Int64 = 0
    var rssAfterStartKilobytes: Int64 = 0
    /// The harness's own share: VmRSS and peak just before the daemon's Manager is created
    /// (the simulated devices, the fake sysfs tree's bookkeeping, the configuration text).
    var harnessRSSKilobytes: Int64 = 0
    var harnessMaxRSSKilobytes: Int64 = 0
    /// VmRSS (not the peak) after start, after the reloads, and at the end.
    var currentRSSAfterStartKilobytes: Int64 = 0
    var currentRSSAfterReloadKilobytes: Int64 = 0
    var currentRSSAtEndKilobytes: Int64 = 0
    var currentRSSAfterLatencyKilobytes: Int64 = 0
    var flapEpisodes: UInt64 = 0
    var notifyMessages: [String: Int] = [:]
    var config: [String: String] = [:]

    struct Storm: Codable {
        var rounds = 0, injected = 0, handledByDaemon: UInt64 = 0, rearms = 0, lost = 0
        var drainMilliseconds: Percentiles?
        var wakesPerSecond = 0.0
        var roundGapMicroseconds = 0
    }
    struct Idle: Codable {
        var seconds = 0.0
        var watchdogUsec = 0
        var process = Usage()
        /// The process minus the harness's own threads (the idle main thread and the thread
        /// that plays systemd's notify socket): the daemon's threads alone.
        var daemonThreads = Usage()
        var cpuPercentOfCore = 0.0
        var watchdogPings = 0
    }
    struct Reload: Codable {
        var unchangedMilliseconds = 0.0
        var oneChangedMilliseconds = 0.0
        var changedBackMilliseconds = 0.0
        var callsOnChangedDevice = 0
        var callsOnOtherDevices = 0
        var otherDevicesChecked = 0
    }
}

// MARK: The run

func runBench() throws {
    
    let arguments = Arguments()
    let n = arguments.devices
    var results = Results()
    results.devices = n
    
    let tree = try FakeSysfsTree()
    defer { tree.remove() }
    let configRoot = tree.root.appendingPathComponent("config-root")
    let etc = configRoot.appendingPathComponent("etc/vfio-powerd")
    try FileManager.default.createDirectory(at: etc.appendingPathComponent("devices.d"), withIntermediateDirectories: true)
    
    // rearm_delay = 0s: re-arm at once. The flap guard is set so it never triggers: at most 1000
    // wakes per device per second; the injector keeps every device far below that (the gaps).
    let mainConfig = [
        "[daemon]", "max_devices = 4096", "",
        "[defaults]", "source = \"own\"", "rearm_delay = \"0s\"", "flap_max_wakes = 1000", "flap_window = \"1s\"", "flap_backoff_max = \"1s\"", "",
    ].joined(separator: "\n")
    try mainConfig.write(to: etc.appendingPathComponent("vfio-powerd.conf"), atomically: true, encoding: .utf8)
    results.config = ["rearm_delay": "0s", "flap_max_wakes": "1000", "flap_window": "1s", "flap_backoff_max": "1s",
                      "log": "messages built, then discarded (no journal write)", "log_level": arguments.logLevel.rawValue]
    
    let source = SimulatedDeviceSource()
    var addresses: [PCIAddress] = []
    for i in 0..<n {
        let address = PCIAddress(domain: 0, bus: UInt8(1 + i / 256), device: UInt8((i / 8) % 32), function: UInt8(i % 8))!
        addresses.append(address)
        try tree.add(.init(address))
        source.plug(address)
    }
    func devicesFile(changedFirst: Bool) -> String {
        var text = ""
        for (i, address) in addresses.enumerated() {
            text += "[[device]]\nname = \"bench\(i)\"\naddress = \"\(address)\"\n"
            if i == 0 && changedFirst { text += "d3cold = \"forbid\"\n" }
            text += "\n"
        }
        return text
    }
    let devicesURL = etc.appendingPathComponent("devices.d/10-bench.conf")
    try devicesFile(changedFirst: false).write(to: devicesURL, atomically: true, encoding: .utf8)
    
    let probe = ArmProbe()
    source.armObserver = { [probe] _ in
        probe.lastArm.store(nowNanoseconds(), ordering: .releasing)
        probe.count.add(1, ordering: .releasing)
    }
    source.wakeObserver = { [probe] _ in probe.lastWake.store(nowNanoseconds(), ordering: .releasing) }
    
    // systemd's environment for a Type=notify unit with WatchdogSec=.
    let runDirectory = tree.path + "/run"
    mkdir(runDirectory, 0o700)
    let notify = NotifyReceiver(directory: runDirectory)
    setenv("NOTIFY_SOCKET", notify.path, 1)
    if arguments.watchdogUsec > 0 {
        setenv("WATCHDOG_USEC", "\(arguments.watchdogUsec)", 1)
        setenv("WATCHDOG_PID", "\(getpid())", 1)
    }
    notify.start()
    
    results.harnessRSSKilobytes = currentRSSKilobytes()
    results.harnessMaxRSSKilobytes = maxRSSKilobytes()
    let logger = Logger(label: "vfio-powerd") { _ in DiscardingLogHandler(logLevel: arguments.logLevel) }
    let manager = Manager(options: DaemonOptions(config: .init(configRoot: .init(configRoot.path), allowInsecurePermissions: true),
                                                 sysfsRoot: .init(tree.path)),
                          source: source, logger: logger)
    
    // Startup: configuration load and validation, resolution against sysfs, open and arm of every
    // device, READY=1 (all inside Manager.start).
    // The devices' calls run on their own queues; READY=1 comes once they have returned.
    let startedAt = nowNanoseconds()
    let ready = DispatchSemaphore(value: 0)
    let startOK: Bool = DaemonActor.sync {
        do { try manager.start(whenReady: { ready.signal() }); return true } catch { return false }
    }
    if startOK { ready.wait() }
    results.startupMilliseconds = Double(nowNanoseconds() - startedAt) / 1e6
    results.ready = startOK
    guard startOK, probe.count.load(ordering: .acquiring) == n else {
        FileHandle.standardError.write("start failed: armed \(probe.count.load(ordering: .acquiring)) of \(n)\n".data(using: .utf8)!)
        exit(1)
    }
    results.rssAfterStartKilobytes = maxRSSKilobytes()
    results.currentRSSAfterStartKilobytes = currentRSSKilobytes()
    
    // The devices the daemon holds (the source hands out a new one per open).
    var held = addresses.map { source.device($0)! }
    
    // The daemon's own totals (GetStatistics), not a snapshot of every device: the harness's
    // checks should not charge the daemon's memory with a 4096-device status listing.
    func lowPowerCount() -> Int {
        DaemonActor.sync { manager.statistics().lowPower }
    }
    func totalWakes() -> UInt64 {
        DaemonActor.sync { manager.statistics().wakes }
    }
    
    // MARK: Idle: N devices armed, no events, WATCHDOG_USEC set
    
    sleepMicroseconds(500_000)  // let Dispatch's worker threads settle
    do {
        let process0 = Usage(0), main0 = Usage(1), notify0 = notify.threadUsage, pings0 = notify.messages["WATCHDOG"] ?? 0
        sleepMicroseconds(Int(arguments.idleSeconds * 1e6))
        let process1 = Usage(0), main1 = Usage(1), notify1 = notify.threadUsage, pings1 = notify.messages["WATCHDOG"] ?? 0
        results.idle.seconds = arguments.idleSeconds
        results.idle.watchdogUsec = arguments.watchdogUsec
        results.idle.process = process1 - process0
        results.idle.daemonThreads = (process1 - process0) - (main1 - main0) - (notify1 - notify0)
        let cpu = results.idle.daemonThreads.userUsec + results.idle.daemonThreads.systemUsec
        results.idle.cpuPercentOfCore = arguments.idleSeconds > 0 ? Double(cpu) / (arguments.idleSeconds * 1e6) * 100 : 0
        results.idle.watchdogPings = pings1 - pings0
    }
    
    // MARK: Reload with N entries: unchanged, one entry changed, changed back
    
    /// Until the reload is applied and the calls it made on devices have returned.
    func timedReload() -> Double {
        let settled = DispatchSemaphore(value: 0)
        let t0 = nowNanoseconds()
        DaemonActor.sync {
            manager.reload { _ in manager.whenDevicesSettled { settled.signal() } }
        }
        settled.wait()
        return Double(nowNanoseconds() - t0) / 1e6
    }
    do {
        results.reload.unchangedMilliseconds = timedReload()
        let before = held.map(\.totalCalls)
        try devicesFile(changedFirst: true).write(to: devicesURL, atomically: true, encoding: .utf8)
        results.reload.oneChangedMilliseconds = timedReload()
        let nowHeld = addresses.map { source.device($0)! }
        var others = 0
        for i in 1..<max(1, n) where i < n {
            precondition(nowHeld[i] === held[i], "a reload reopened an untouched device")
            others += nowHeld[i].totalCalls - before[i]
        }
        results.reload.callsOnChangedDevice = nowHeld[0] === held[0] ? nowHeld[0].totalCalls - before[0] : nowHeld[0].totalCalls
        results.reload.callsOnOtherDevices = others
        results.reload.otherDevicesChecked = n - 1
        try devicesFile(changedFirst: false).write(to: devicesURL, atomically: true, encoding: .utf8)
        results.reload.changedBackMilliseconds = timedReload()
        held = addresses.map { source.device($0)! }
        results.rssAfterReloadKilobytes = maxRSSKilobytes()
        results.currentRSSAfterReloadKilobytes = currentRSSKilobytes()
        precondition(lowPowerCount() == n, "after the reloads not every device is in low power")
    }
    
    // MARK: Latency, one wake at a time, round-robin over the N devices
    
    // Precise sleeps for the injector (the main thread), as the baseline's prctl(PR_SET_TIMERSLACK, 1).
    try? "1".write(toFile: "/proc/self/timerslack_ns", atomically: false, encoding: .utf8)
    
    func waitForArms(_ target: Int, timeoutNanoseconds: Int64 = 10_000_000_000) -> Bool {
        let deadline = nowNanoseconds() + timeoutNanoseconds
        while probe.count.load(ordering: .acquiring) < target {
            if nowNanoseconds() > deadline { return false }
            sleepMicroseconds(5)
        }
        return true
    }
    
    // One device woken at a time: with N = 1 every wake hits the same device, so the gap keeps it
    // below the flap guard's 1000 wakes per second (1200 us gap) for every N alike.
    let gap = n == 1 ? max(arguments.gapMicroseconds, 1_200) : arguments.gapMicroseconds
    results.latencyGapMicroseconds = gap
    /// Wakes `devices` one at a time, round-robin, and times each wake to its re-arm.
    func latency(over devices: [SimulatedDevice]) -> (total: [Double], reads: [Double], rest: [Double]) {
        var samples: [Double] = [], reads: [Double] = [], rest: [Double] = []
        samples.reserveCapacity(arguments.samples)
        for i in 0..<(arguments.warmup + arguments.samples) {
            let device = devices[i % devices.count]
            let target = probe.count.load(ordering: .acquiring) + 1
            let t0 = nowNanoseconds()
            device.access()
            guard waitForArms(target) else { fatalError("no re-arm after a wake (sample \(i))") }
            let t1 = probe.lastArm.load(ordering: .acquiring)
            let tw = probe.lastWake.load(ordering: .acquiring)
            if i >= arguments.warmup {
                samples.append(Double(t1 - t0) / 1e3)
                reads.append(Double(tw - t0) / 1e3)
                rest.append(Double(t1 - tw) / 1e3)
            }
            sleepMicroseconds(gap)
        }
        return (samples, reads, rest)
    }
    do {
        let (samples, reads, rest) = latency(over: held)
        results.latencyMicroseconds = Percentiles(microseconds: samples)
        results.wakeReadMicroseconds = Percentiles(microseconds: reads)
        results.readToRearmMicroseconds = Percentiles(microseconds: rest)
    }
    // The same, over the other devices, while one device's re-arm never returns (a hung
    // device): its calls run on its own queue, so the others should not notice.
    if n >= 2 {
        let gate = DispatchSemaphore(value: 0)
        let stalled = held[0]
        let armsBefore = probe.count.load(ordering: .acquiring)
        stalled.armStall = { gate.wait() }
        stalled.access()
        sleepMicroseconds(20_000)
        let (samples, _, _) = latency(over: Array(held[1...]))
        results.latencyWithOneDeviceStalledMicroseconds = Percentiles(microseconds: samples)
        stalled.armStall = nil
        gate.signal()
        let armed = waitForArms(armsBefore + arguments.warmup + arguments.samples + 1)
        precondition(armed, "the stalled device was not re-armed once let go")
    }
    results.currentRSSAfterLatencyKilobytes = currentRSSKilobytes()
    
    // MARK: Storm: all N woken at once, repeatedly
    
    do {
        let wakes0 = totalWakes()
        var drains: [Double] = []
        var injected = 0, lost = 0
        var totalDrain: Int64 = 0
        let rearms0 = probe.count.load(ordering: .acquiring)
        for _ in 0..<arguments.rounds {
            let target = probe.count.load(ordering: .acquiring) + n
            let t0 = nowNanoseconds()
            for device in held { device.access() }
            injected += n
            if !waitForArms(target, timeoutNanoseconds: 60_000_000_000) {
                lost += target - probe.count.load(ordering: .acquiring)
                break
            }
            let t1 = probe.lastArm.load(ordering: .acquiring)
            drains.append(Double(t1 - t0) / 1e6)
            totalDrain += t1 - t0
            sleepMicroseconds(arguments.roundGapMicroseconds)
        }
        results.storm.rounds = drains.count
        results.storm.injected = injected
        results.storm.rearms = probe.count.load(ordering: .acquiring) - rearms0
        results.storm.handledByDaemon = totalWakes() - wakes0
        results.storm.lost = lost + (injected - Int(results.storm.handledByDaemon))
        results.storm.drainMilliseconds = Percentiles(microseconds: drains)
        results.storm.wakesPerSecond = Double(injected) / (Double(totalDrain) / 1e9)
        results.storm.roundGapMicroseconds = arguments.roundGapMicroseconds
    }
    
    results.flapEpisodes = DaemonActor.sync { manager.statistics().flapEpisodes }
    precondition(lowPowerCount() == n, "after the storm not every device is in low power")
    stopAndWait(manager)
    results.maxRSSKilobytes = maxRSSKilobytes()
    results.currentRSSAtEndKilobytes = currentRSSKilobytes()
    results.notifyMessages = notify.messages
    
    try write(results, to: arguments.out)
}

/// The results as JSON, to a file or (`-`) standard output.
func write<T: Encodable>(_ results: T, to out: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try encoder.encode(results)
    if out == "-" {
        FileHandle.standardOutput.write(data)
    } else {
        try data.write(to: URL(fileURLWithPath: out))
    }
}

if Arguments().vmm {
    try runVMMBench(Arguments())
} else {
    try runBench()
}
