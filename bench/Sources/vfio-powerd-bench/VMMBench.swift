import Glibc
import Foundation
import Logging
import PowerDaemon
import PowerPolicy
import Synchronization
import SystemPackage
import VFIO
import VFIOSimulator

/// `--vmm 1`: N `vmm` devices, each held by its own simulated VMM and adopted by the real
/// Manager and Dispatch loop, at the shipped guest_d3_interval (1s). Measures (issue 9, §6):
/// the CPU that sampling the guests' power state costs while every guest uses its device; the
/// time from a guest's D3hot write to the arm; the time from a VMM's exit to the release.
///
/// Sampling preads the device's `power_state` from the fake sysfs tree and reads one /proc
/// link, as the kernel source does, so the system calls per sample are the real ones'; the
/// devices and VMMs are simulated.
struct VMMResults: Codable {
    var side = "daemon-vmm"
    var devices = 0
    var guestD3IntervalMilliseconds = 1000.0
    var samplingSeconds = 0.0
    /// Process CPU (user + system) during `samplingSeconds` with every guest in D0, as a share
    /// of one core, in percent.
    var samplingCPUPercentOfCore = 0.0
    var samplesTaken = 0
    var guestD3ToArmedMilliseconds: Percentiles?
    var vmmExitToReleaseMilliseconds: Percentiles?
    var maxRSSKilobytes: Int64 = 0
}

/// The simulated source, with the reads a real sample makes.
final class SysfsReadingSource: DeviceSource, @unchecked Sendable {
    let simulated: SimulatedDeviceSource
    let sysfsRoot: String
    let samples = Atomic<Int>(0)

    init(_ simulated: SimulatedDeviceSource, sysfsRoot: String) {
        self.simulated = simulated
        self.sysfsRoot = sysfsRoot
    }

    func openDevice(_ address: PCIAddress) throws(VFIOError) -> any LowPowerDevice { try simulated.openDevice(address) }
    func isAvailable(_ address: PCIAddress) -> Bool { simulated.isAvailable(address) }
    func setD3coldAllowed(_ allowed: Bool, for address: PCIAddress) throws(SysfsError) {
        try simulated.setD3coldAllowed(allowed, for: address)
    }
    func adopt(_ address: PCIAddress, candidates: [Int32]?, allowed: ExecutableAllowList) -> AdoptionOutcome {
        simulated.adopt(address, candidates: candidates, allowed: allowed)
    }
    func runningVMMs(allowed: ExecutableAllowList) -> [Int32] { simulated.runningVMMs(allowed: allowed) }
    func announcingNodes(_ address: PCIAddress) -> [FilePath] { [] }
    func takeHandedOver(_ fd: Int32, for address: PCIAddress, sender: Int32) -> Result<(any LowPowerDevice, VMMProcess), HandoffRefusal> {
        simulated.takeHandedOver(fd, for: address, sender: sender)
    }
    func residency(_ address: PCIAddress) -> ResidencyRead? { simulated.residency(address) }

    /// Each device's power_state, open as the kernel source's AdoptedDevice keeps it.
    private var files: [PCIAddress: PowerStateFile] = [:]

    /// What KernelDeviceSource.sampleGuest does per sample in D0: one pread of power_state
    /// and one readlink of the VMM's /proc fd link; the answer is the simulator's.
    func sampleGuest(_ device: any LowPowerDevice) -> GuestSample? {
        if files[device.address] == nil { files[device.address] = PowerStateFile(address: device.address, sysfsRoot: FilePath(sysfsRoot)) }
        _ = files[device.address]?.read()
        _ = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { readlink("/proc/self/fd/0", $0.baseAddress!, $0.count) }
        samples.add(1, ordering: .relaxed)
        return simulated.sampleGuest(device)
    }
}

/// When each device's event happened, written from the daemon's queue, read by the harness.
final class Stamps: @unchecked Sendable {
    private let lock = NSLock()
    private var stamps: [PCIAddress: Int64] = [:]
    func note(_ address: PCIAddress) {
        let now = nowNanoseconds()
        lock.withLock { if stamps[address] == nil { stamps[address] = now } }
    }
    func set(_ address: PCIAddress) { note(address) }
    var count: Int { lock.withLock { stamps.count } }
    subscript(_ address: PCIAddress) -> Int64? { lock.withLock { stamps[address] } }
}

func runVMMBench(_ arguments: Arguments) throws {
    let n = arguments.devices
    // Per device: the VMM's pidfd stand-in and its duplicate, the wakeup eventfd, the open
    // power_state: about 16,500 files at 4096, as the unit's LimitNOFILE= allows the daemon
    // (root raises its own limit here where it may).
    var limit = rlimit(rlim_cur: 65_536, rlim_max: 65_536)
    if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) != 0 {
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = limit.rlim_max
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    }
    var results = VMMResults()
    results.devices = n
    let tree = try FakeSysfsTree()
    defer { tree.remove() }
    let etc = tree.root.appendingPathComponent("config-root/etc/vfio-powerd")
    try FileManager.default.createDirectory(at: etc.appendingPathComponent("devices.d"), withIntermediateDirectories: true)
    // The shipped guest_d3_interval (1s); no fallback scan (the VMMs are adopted as a start
    // hook would); rearm_delay 0s so a woken device is sampled again at once; a flap guard
    // that never triggers.
    try """
        [daemon]
        max_devices = 4096
        vmm_scan_interval = "0s"

        [defaults]
        rearm_delay = "0s"
        flap_max_wakes = 1000
        flap_window = "1s"
        flap_backoff_max = "1s"
        """.write(to: etc.appendingPathComponent("vfio-powerd.conf"), atomically: true, encoding: .utf8)

    let simulated = SimulatedDeviceSource()
    var addresses: [PCIAddress] = []
    var text = ""
    for i in 0..<n {
        let address = PCIAddress(domain: 0, bus: UInt8(1 + i / 256), device: UInt8((i / 8) % 32), function: UInt8(i % 8))!
        addresses.append(address)
        try tree.add(.init(address))
        simulated.plug(address, removalRequest: false)
        text += "[[device]]\naddress = \"\(address)\"\n\n"
    }
    try text.write(to: etc.appendingPathComponent("devices.d/10-bench.conf"), atomically: true, encoding: .utf8)
    let source = SysfsReadingSource(simulated, sysfsRoot: tree.path)

    let logger = Logger(label: "vfio-powerd") { _ in DiscardingLogHandler(logLevel: arguments.logLevel) }
    let manager = Manager(options: DaemonOptions(config: .init(configRoot: .init(tree.root.path + "/config-root"),
                                                               allowInsecurePermissions: true),
                                                 sysfsRoot: .init(tree.path)),
                          source: source, logger: logger)
    let ready = DispatchSemaphore(value: 0)
    try DaemonActor.sync { try manager.start(whenReady: { ready.signal() }) }
    ready.wait()

    // One VMM per device, adopted as a start hook would ask.
    var vmms: [PCIAddress: SimulatedVMM] = [:]
    for address in addresses {
        let vmm = simulated.startVMM(holding: [address])
        vmms[address] = vmm
        _ = DaemonActor.sync { manager.adopt(address, pid: vmm.pid) }
    }
    // The looks run off the daemon's queue: wait for them.
    var inUse = 0
    let adoptDeadline = nowNanoseconds() + 60_000_000_000
    repeat {
        sleepMicroseconds(20_000)
        inUse = DaemonActor.sync { manager.devices().filter { $0.phase == .guestActive }.count }
    } while inUse < n && nowNanoseconds() < adoptDeadline
    precondition(inUse == n, "adopted \(inUse) of \(n)")

    // Sampling: every guest uses its device (D0).
    sleepMicroseconds(1_500_000)  // let the first samples spread over the interval
    let samples0 = source.samples.load(ordering: .relaxed)
    let usage0 = Usage(0)  // RUSAGE_SELF
    let t0 = nowNanoseconds()
    sleepMicroseconds(Int(arguments.idleSeconds * 1_000_000))
    let usage = Usage(0) - usage0
    let seconds = Double(nowNanoseconds() - t0) / 1e9
    results.samplingSeconds = seconds
    results.samplesTaken = source.samples.load(ordering: .relaxed) - samples0
    results.samplingCPUPercentOfCore = Double(usage.userUsec + usage.systemUsec) / 1e6 / seconds * 100

    // Guest D3hot → armed: K guests write D3hot at moments spread over two intervals, so the
    // write lands at every phase of their sample timers.
    let k = min(n, 200)
    let chosen = Array(addresses.prefix(k))
    let written = Stamps(), armedAt = Stamps()
    for address in chosen {
        simulated.device(address)!.armObserver = { armedAt.note($0) }
    }
    let spread = 2_000_000 / k
    for address in chosen {
        written.set(address)
        simulated.device(address)!.guestWrites(.d3hot)
        sleepMicroseconds(spread)
    }
    let deadline = nowNanoseconds() + 10_000_000_000
    while armedAt.count < k && nowNanoseconds() < deadline { sleepMicroseconds(10_000) }
    let d3 = chosen.compactMap { a in armedAt[a].map { Double($0 - written[a]!) / 1e6 } }
    precondition(d3.count == k, "armed \(d3.count) of \(k) after their guests' D3hot")
    results.guestD3ToArmedMilliseconds = Percentiles(microseconds: d3)

    // VMM exit → release: K VMMs exit 5 ms apart. The release observer is handed to
    // duplicates at adoption, so the chosen devices are released and adopted from new VMMs.
    let exited = Stamps(), releasedAt = Stamps()
    for address in chosen {
        _ = DaemonActor.sync { manager.release(address) }
    }
    simulated.releaseObserver = { releasedAt.note($0) }
    for address in chosen {
        let vmm = simulated.startVMM(holding: [address])
        vmms[address] = vmm
        _ = DaemonActor.sync { manager.adopt(address, pid: vmm.pid) }
    }
    let readoptDeadline = nowNanoseconds() + 30_000_000_000
    while simulated.adoptions < n + k && nowNanoseconds() < readoptDeadline { sleepMicroseconds(10_000) }
    for address in chosen {
        exited.set(address)
        vmms[address]!.exit()
        sleepMicroseconds(5_000)
    }
    let releaseDeadline = nowNanoseconds() + 10_000_000_000
    while releasedAt.count < k && nowNanoseconds() < releaseDeadline { sleepMicroseconds(10_000) }
    let releases = chosen.compactMap { a in releasedAt[a].map { Double($0 - exited[a]!) / 1e6 } }
    precondition(releases.count == k, "released \(releases.count) of \(k) after their VMMs exited")
    results.vmmExitToReleaseMilliseconds = Percentiles(microseconds: releases)

    stopAndWait(manager)
    results.maxRSSKilobytes = maxRSSKilobytes()
    try write(results, to: arguments.out)
}

/// Stops the daemon and waits until its devices' last calls have returned.
func stopAndWait(_ manager: Manager) {
    let stopped = DispatchSemaphore(value: 0)
    DaemonActor.sync { manager.stop { stopped.signal() } }
    stopped.wait()
}
