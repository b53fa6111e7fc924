import Glibc
import ControlProtocol
import Foundation
import Logging
import PowerDaemon
import SystemdTesting
import VFIO
import VFIOSimulator
import Varlink
import XCTest

/// One daemon under test: the real Manager and Dispatch loop, simulated devices over real
/// eventfds, a configuration root in a temporary folder, a fake systemd notify socket, and
/// every log entry captured.
///
/// Unchecked Sendable: waitUntil's conditions run on the daemon's queue and read the harness
/// there. Its settings are set before `start()` and its manager and control by it, on the test's
/// thread, before any condition runs; what the daemon changes meanwhile (the simulated source,
/// the log capture) locks itself.
final class DaemonHarness: @unchecked Sendable {
    let configRoot: URL
    let tree: FakeSysfsTree
    let source = SimulatedDeviceSource()
    let listener: NotifySocketListener
    let logs = LogCapture()
    private(set) var manager: Manager!
    /// The logger's level (`vfio-powerd --log-level`); every entry by default.
    var logLevel: Logger.Level = .trace
    /// DaemonOptions' bounds; tests of a stuck device shorten them.
    var stuckBound: Duration = .seconds(10)
    var settleBound: Duration = .seconds(20)
    /// The daemon's clock: the system's, or a `ManualClock` the test turns.
    var clock: any DaemonClock = SystemMonotonicClock()

    init(mainConfig: String = "", devices: [String: String] = [:]) throws {
        tree = try FakeSysfsTree()
        configRoot = tree.root.appendingPathComponent("config-root")
        listener = try NotifySocketListener()
        try write(mainConfig, to: "etc/vfio-powerd/vfio-powerd.conf")
        try FileManager.default.createDirectory(at: configRoot.appendingPathComponent("etc/vfio-powerd/devices.d"),
                                                withIntermediateDirectories: true)
        for (name, text) in devices { try write(text, to: "etc/vfio-powerd/devices.d/\(name)") }
        setenv("NOTIFY_SOCKET", listener.path, 1)
        // Read every datagram as it comes, as systemd does: a unix datagram socket queues only
        // net.unix.max_dgram_qlen (10) unread ones, and then sd_notify blocks the daemon.
        drain = NotifyDrain(listener)
    }

    private var drain: NotifyDrain!

    deinit {
        drain.stop()
        if let control, manager != nil { DaemonActor.sync { control.stop() } }
        unsetenv("NOTIFY_SOCKET")
        tree.remove()
    }

    /// Plugs a simulated device in, with a matching sysfs entry.
    @discardableResult
    func plug(_ text: String) throws -> PCIAddress {
        let address = PCIAddress(text)!
        if !FileManager.default.fileExists(atPath: tree.path + "/bus/pci/devices/\(address)") {
            try tree.add(.init(address))
        }
        source.plug(address)
        return address
    }

    func write(_ text: String, to path: String) throws {
        let url = configRoot.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url)
    }

    func remove(_ path: String) throws {
        try FileManager.default.removeItem(at: configRoot.appendingPathComponent(path))
    }

    /// The daemon most control tests talk to: the lab's two devices (nic by name), held by
    /// the daemon itself, started, with its control socket listening.
    static func withControl(main: String = "[defaults]\nsource = \"own\"\nrearm_delay = \"1s\"\n",
                            nic: String, nvme: String) throws -> DaemonHarness {
        let daemon = try DaemonHarness(mainConfig: main, devices: ["10-lab.conf": """
            [[device]]
            address = "\(nic)"
            name = "nic"

            [[device]]
            address = "\(nvme)"
            """])
        try daemon.plug(nic)
        try daemon.plug(nvme)
        try daemon.start()
        try daemon.startControl()
        return daemon
    }

    /// Creates the manager and runs `start()` on its queue.
    func start() throws {
        manager = Manager(
            options: DaemonOptions(config: .init(configRoot: .init(configRoot.path), allowInsecurePermissions: true),
                                   sysfsRoot: .init(tree.path), stuckBound: stuckBound, settleBound: settleBound),
            source: source, logger: Logger(label: "test") { _ in self.logs.handler(level: self.logLevel) }, clock: clock)
        // READY=1 waits for the devices' first calls, which run on their own queues.
        let ready = DispatchSemaphore(value: 0)
        let manager = self.manager!
        try DaemonActor.sync { try manager.start(whenReady: { ready.signal() }) }
        ready.wait()
    }

    func onQueue<T: Sendable>(_ body: @DaemonActor (Manager) throws -> T) rethrows -> T {
        let manager = self.manager!
        return try DaemonActor.sync { try body(manager) }
    }

    /// The control socket, once `startControl()` ran.
    private(set) var control: ControlService?
    var socketPath: String { tree.root.appendingPathComponent("control.sock").path }

    /// Serves io.vfiopowerd.Manager on `socketPath`, as the daemon does after start.
    func startControl() throws {
        let control = ControlService(manager: manager, socketPath: socketPath)
        try onQueue { _ in try control.start() }
        self.control = control
    }

    func stopControl() { onQueue { _ in control?.stop() } }

    /// Reloads and waits until the calls the reload made on devices have returned.
    func reload() {
        let applied = DispatchSemaphore(value: 0)
        onQueue { $0.reload { _ in applied.signal() } }
        applied.wait()
        settle()
    }

    /// Waits until no call on any device is under way (they run on the devices' own queues).
    func settle() {
        let settled = DispatchSemaphore(value: 0)
        onQueue { $0.whenDevicesSettled { settled.signal() } }
        settled.wait()
    }
    /// Stops the daemon and waits until its devices' last calls have returned.
    func stop() {
        let stopped = DispatchSemaphore(value: 0)
        onQueue { $0.stop { stopped.signal() } }
        stopped.wait()
    }

    /// The device the daemon holds open now (the source hands out a new one per open).
    func device(_ address: PCIAddress) -> SimulatedDevice { source.device(address)! }

    /// Polls the daemon (on its queue) until `condition` holds; false after `timeout`.
    func waitUntil(timeout: TimeInterval = 5, _ condition: @DaemonActor () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if DaemonActor.sync(condition) { return true }
            usleep(5_000)
        }
        return false
    }

    /// Every sd_notify datagram received so far.
    /// The datagrams the daemon sent since the last call (the drain has read them already).
    func notifications() throws -> [String] {
        try drain.takeAll(sentTo: listener.path)
    }

    /// The device's state as the control interface names it.
    func phase(_ address: PCIAddress) -> DeviceRecord.State? {
        onQueue { $0.devices().first { $0.address == address }.map { DeviceRecord.State($0.phase) } }
    }
}

/// A swift-log handler that keeps every entry, for assertions on words and journal fields.
final class LogCapture: @unchecked Sendable {
    struct Entry {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
        var messageID: String? { metadata["MESSAGE_ID"] }
    }

    private let lock = NSLock()
    private var _entries: [Entry] = []

    var entries: [Entry] { lock.withLock { _entries } }

    func entries(_ event: DaemonEvent, device: PCIAddress? = nil) -> [Entry] {
        entries.filter { $0.messageID == event.messageID && (device == nil || $0.metadata["VFIO_DEVICE"] == device!.description) }
    }

    func handler(level: Logger.Level = .trace) -> some LogHandler { Handler(capture: self, logLevel: level) }

    fileprivate func append(_ entry: Entry) { lock.withLock { _entries.append(entry) } }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var logLevel: Logger.Level
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            var flat: [String: String] = [:]
            for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { flat[key] = "\(value)" }
            capture.append(Entry(level: event.level, message: "\(event.message)", metadata: flat))
        }
    }
}

/// Reads the notify socket on its own thread, as systemd reads it.
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

final class NotifyDrain: @unchecked Sendable {
    private let listener: NotifySocketListener
    private let lock = NSLock()
    private var messages: [String] = []
    private var stopped = false

    init(_ listener: NotifySocketListener) {
        self.listener = listener
        Thread { [self] in
            while !lock.withLock({ stopped }) {
                if let message = try? self.listener.receive(timeoutMilliseconds: 50) {
                    lock.withLock { messages.append(message) }
                }
            }
        }.start()
    }

    /// Every datagram sent to `path` before this call. A marker datagram goes to the same
    /// socket and the drain reads up to it: a datagram socket's queue keeps the order of
    /// sending, so whatever the daemon sent before is read before the marker (no waiting for
    /// a fixed time that a slow machine may not honour).
    func takeAll(sentTo path: String) throws -> [String] {
        marks += 1
        let marker = "X_HARNESS_MARK=\(marks)"
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        let sent = try UnixSocketAddress.with(path) { address, length in
            marker.withCString { sendto(fd, $0, strlen($0), 0, address, length) }
        }
        guard sent >= 0 else { throw HarnessError("sendto \(path): errno \(errno)") }
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            let taken: [String]? = lock.withLock {
                guard let end = messages.firstIndex(of: marker) else { return nil }
                defer { messages.removeFirst(end + 1) }
                return Array(messages[..<end])
            }
            if let taken { return taken }
            usleep(1_000)
        }
        throw HarnessError("the drain did not read its marker within 5 s")
    }

    private var marks = 0

    func stop() { lock.withLock { stopped = true } }
}
