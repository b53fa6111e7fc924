import ControlProtocol
import Foundation
import Glibc
import Dispatch
import PowerConfig
import PowerPolicy
import Systemd
import Varlink
import VFIO

/// The daemon's control interface: io.vfiopowerd.Manager over varlink on
/// /run/vfio-powerd/io.vfiopowerd.Manager, served on the daemon's own queue.
///
/// Reading is open to whoever can connect (root and socket_group, by the socket's mode 0660);
/// changing (Arm, Wake, Reload) needs uid 0 or membership in admin_group. Every method runs
/// on the daemon's queue (`@DaemonActor`, as the Manager) and answers at once: none of them
/// waits on a device.
@DaemonActor
public final class ControlService {
    /// Wake's hold is bounded: a week is longer than any maintenance window.
    nonisolated static let maximumHold: Int64 = 7 * 24 * 3600

    private let manager: Manager
    private let socketPath: String
    private var server: VarlinkServer?
    private var monitors: [ObjectIdentifier: VarlinkReply] = [:]
    private var adminGroup: gid_t?

    /// Made anywhere; used on the daemon's queue.
    public nonisolated init(manager: Manager, socketPath: String = ManagerInterface.defaultSocketPath) {
        self.manager = manager
        self.socketPath = socketPath
    }

    /// Opens the socket (mode 0660, group socket_group) and starts answering. Call on the
    /// daemon's queue after `Manager.start()`, so the settings are loaded.
    public func start() throws {
        let settings = manager.settings
        let socketGroup = resolveGroup(settings.socketGroup, key: "socket_group")
        adminGroup = resolveGroup(settings.adminGroup, key: "admin_group")
        let server = VarlinkServer(
            socketPath: socketPath, mode: 0o660, group: socketGroup, queue: DaemonActor.queue,
            info: (vendor: "vfio-powerd", product: "vfio-powerd", version: "0.1.0",
                   url: "https://github.com/vfio-powerd/vfio-powerd"),
            interfaces: [ManagerInterface.name: ManagerInterface.description],
            handler: { [weak self] call, peer, reply in
                DaemonActor.assumeIsolated { self?.handle(call, peer: peer, reply: reply) }
            })
        if let activated = manager.activatedControlSocket,
           SystemdNotifier.isListeningUnixSocket(activated, path: socketPath) {
            // vfio-powerd.socket made it, with SocketGroup=: the daemon cannot chown (no
            // capability for it), so the group is the socket unit's to set.
            server.start(listeningOn: activated)
            checkActivatedGroup(socketGroup, named: settings.socketGroup?.value)
        } else {
            try server.start()
        }
        self.server = server
    }

    /// socket_group names the group the socket should have; under socket activation it is
    /// the socket unit's SocketGroup=, and a difference is said, with the fix.
    private func checkActivatedGroup(_ gid: gid_t?, named name: String?) {
        guard let gid, let name else { return }
        var info = stat()
        guard stat(socketPath, &info) == 0, info.st_gid != gid else { return }
        manager.log(.configRejected,
                    "socket_group = \"\(name)\" is not the group of \(socketPath) (gid \(info.st_gid)), which systemd made for vfio-powerd.socket: members of \(name) cannot connect. Set the same group there: systemctl edit vfio-powerd.socket, [Socket] SocketGroup=\(name)",
                    [:])
    }

    public func stop() {
        for reply in monitors.values { reply.error(ManagerInterface.Error.stopping.rawValue) }
        monitors.removeAll()
        server?.stop()
        server = nil
        manager.onDeviceChange = nil
    }

    // MARK: Calls

    /// Each method's input parameters, from the interface file.
    nonisolated static let methodParameters: [String: Set<String>] = ManagerInterface.definition.methods.mapValues {
        Set($0.parameters.map(\.name))
    }

    func handle(_ call: VarlinkCall, peer: PeerCredentials, reply: VarlinkReply) {
        // A parameter the method does not have is a caller's mistake (a typo such as
        // "adress" would otherwise act on nothing, or on a default): refused by name.
        if let known = Self.methodParameters[call.member], let given = call.parameters.object,
           let unknown = given.keys.sorted().first(where: { !known.contains($0) }) {
            return invalid(unknown, "\(call.member) has no parameter \"\(unknown)\"; it takes \(known.isEmpty ? "none" : known.sorted().joined(separator: ", "))", reply)
        }
        switch call.member {
        case "ListDevices":
            // Written as the client reads it, a few devices per turn: max_devices (4096) fits,
            // in bounded memory, and a reader's listing never holds up wakes or other calls.
            let addresses = manager.deviceAddresses()
            reply.sendList("devices", count: addresses.count) { [self] index in
                manager.device(addresses[index]).map { encoded(record($0)) }
            }
        case "GetDevice":
            withDevice(call, reply) { reply.send(["device": encoded(record($0))]) }
        case "GetStatistics":
            reply.send(["statistics": encoded(statistics())])
        case "Monitor":
            monitor(call, reply)
        case "Arm":
            guard authorize(call, peer, reply) else { return }
            withAddress(call, reply) { address in
                manager.arm(address) { [self] device in
                    guard let device else { return noSuchDevice(address, reply) }
                    reply.send(["device": encoded(record(device))])
                }
            }
        case "Wake":
            guard authorize(call, peer, reply) else { return }
            withAddress(call, reply) { address in
                var hold: Duration?
                if let seconds = call.parameters.object?["seconds"], !seconds.isNull {
                    guard let value = seconds.int64, (1...Self.maximumHold).contains(value) else {
                        return invalid("seconds", "a whole number of seconds from 1 to \(Self.maximumHold)", reply)
                    }
                    hold = .seconds(value)
                }
                manager.wake(address, for: hold) { [self] device in
                    guard let device else { return noSuchDevice(address, reply) }
                    reply.send(["device": encoded(record(device))])
                }
            }
        case "Adopt":
            guard authorize(call, peer, reply) else { return }
            withAddress(call, reply) { address in
                var pid: Int32?
                if let value = call.parameters.object?["pid"], !value.isNull {
                    guard let number = value.int64, let valid = Int32(exactly: number), valid > 0 else {
                        return invalid("pid", "a process id, a whole number above 0", reply)
                    }
                    pid = valid
                }
                guard let device = manager.adopt(address, pid: pid) else { return noSuchDevice(address, reply) }
                reply.send(["device": encoded(record(device))])
            }
        case "Handoff":
            guard authorize(call, peer, reply) else { return }
            withAddress(call, reply) { address in
                var sender = peer.pid
                if let value = call.parameters.object?["pid"], !value.isNull {
                    guard let number = value.int64, let pid = Int32(exactly: number), pid > 0 else {
                        return invalid("pid", "a process id, a whole number above 0", reply)
                    }
                    sender = pid
                }
                guard let files = call.files, files.count == 1, let fd = files.take().first else {
                    return invalid("file descriptor", "pass exactly one VFIO device file with the call (SCM_RIGHTS)", reply)
                }
                manager.handoff(address, fd: fd, sender: sender) { [self] result in
                    switch result {
                    case .success(let device):
                        reply.send(["device": encoded(record(device))])
                    case .failure(.notVMMDevice) where manager.device(address) == nil:
                        noSuchDevice(address, reply)
                    case .failure(let refusal):
                        reply.error(ManagerInterface.Error.handoffRefused.rawValue,
                                    parameters: ["address": .string("\(address)"), "reason": .string(Self.words(refusal))])
                    }
                }
            }
        case "Release":
            guard authorize(call, peer, reply) else { return }
            withAddress(call, reply) { address in
                guard let device = manager.release(address) else { return noSuchDevice(address, reply) }
                reply.send(["device": encoded(record(device))])
            }
        case "Reload":
            guard authorize(call, peer, reply) else { return }
            manager.reload { problems in
                if problems.isEmpty {
                    reply.send()
                } else {
                    reply.error(ManagerInterface.Error.configRejected.rawValue,
                                parameters: ["problems": .array(problems.map { .string("\($0)") })])
                }
            }
        default:
            reply.error("org.varlink.service.MethodNotFound", parameters: ["method": .string(call.method)])
        }
    }

    private func monitor(_ call: VarlinkCall, _ reply: VarlinkReply) {
        guard call.more else {
            reply.error("org.varlink.service.ExpectedMore")
            return
        }
        // Changes are followed from now on; the current state of every device is written as
        // the client reads it (a device that changes meanwhile may come twice, newest last).
        let key = ObjectIdentifier(reply)
        monitors[key] = reply
        reply.onCancel = { [weak self] in DaemonActor.assumeIsolated { self?.forget(key) } }
        // Snapshots of every change are built only while someone is monitoring.
        manager.onDeviceChange = { [weak self] device in self?.publish(device) }
        let addresses = manager.deviceAddresses()
        reply.sendEach(count: addresses.count, parameters: { [self] index in
            manager.device(addresses[index]).map { ["device": encoded(record($0))] }
        }, then: {})
    }

    private func publish(_ device: DeviceSnapshot) {
        let message: JSONValue = ["device": encoded(record(device))]
        for (key, reply) in monitors where !reply.send(message, continues: true) {
            forget(key)
        }
    }

    private func forget(_ key: ObjectIdentifier) {
        monitors[key] = nil
        if monitors.isEmpty { manager.onDeviceChange = nil }
    }

    /// What a refused handoff's caller reads.
    nonisolated static func words(_ refusal: HandoffRefusal) -> String {
        switch refusal {
        case .notAVFIODeviceFile(let what): "the file passed is not a VFIO device file (it is \(what))"
        case .otherDevice(let other): "the file passed is the VFIO device file of \(other), not of this device"
        case .cannotCheck: "this kernel does not say which device a VFIO device file belongs to (Linux 6.18 and later do), so the file cannot be checked and is refused; let the daemon adopt the device from its VMM instead"
        case .senderGone: "the process whose exit was to release the device has already exited"
        case .alreadyHeld: "the daemon already holds a file of this device (see vfio-powerctl show); Release it first"
        case .notVMMDevice: "the device is not a source = \"vmm\" device of the configuration"
        }
    }

    // MARK: Parameters and permission

    private func withAddress(_ call: VarlinkCall, _ reply: VarlinkReply, _ body: (PCIAddress) -> Void) {
        guard let text = call.parameters.object?["address"]?.string else {
            return invalid("address", "a PCI address such as \"0000:01:00.0\" is required", reply)
        }
        switch PCIAddress.parse(text) {
        case .success(let address): body(address)
        case .failure(let error): invalid("address", error.description, reply)
        }
    }

    private func withDevice(_ call: VarlinkCall, _ reply: VarlinkReply, _ body: (DeviceSnapshot) -> Void) {
        withAddress(call, reply) { address in
            guard let device = manager.device(address) else { return noSuchDevice(address, reply) }
            body(device)
        }
    }

    private func noSuchDevice(_ address: PCIAddress, _ reply: VarlinkReply) {
        reply.error(ManagerInterface.Error.noSuchDevice.rawValue, parameters: ["address": .string("\(address)")])
    }

    private func invalid(_ parameter: String, _ reason: String, _ reply: VarlinkReply) {
        reply.error(ManagerInterface.Error.invalidParameter.rawValue,
                    parameters: ["parameter": .string(parameter), "reason": .string(reason)])
    }

    /// Root, or a member of admin_group (primary or supplementary), may change things.
    private func authorize(_ call: VarlinkCall, _ peer: PeerCredentials, _ reply: VarlinkReply) -> Bool {
        if peer.uid == 0 { return true }
        if let adminGroup, Self.groups(of: peer).contains(adminGroup) { return true }
        if refusals.admit(peer.uid, now: manager.now()) {
            manager.log(.controlRefused,
                        "refused \(call.member) from uid \(peer.uid) (pid \(peer.pid)): only root\(adminGroup == nil ? "" : " and members of admin_group") may change devices",
                        ["CALLER_UID": "\(peer.uid)", "CALLER_PID": "\(peer.pid)"])
        } else if refusals.startedSuppressing(peer.uid) {
            // Said once, when the window closes, however many were refused meanwhile.
            manager.after(RefusalLog.window) { [weak self] in
                self?.summariseRefusals(of: peer.uid)
            }
        }
        reply.error(ManagerInterface.Error.permissionDenied.rawValue,
                    parameters: ["method": .string(call.member), "uid": .integer(Int64(peer.uid))])
        return false
    }

    /// Refused calls are logged a few per user and window; the rest are counted and said in
    /// one entry, so that a flood of refused calls cannot push the daemon's own messages out
    /// under journald's rate limit.
    private var refusals = RefusalLog()

    private func summariseRefusals(of uid: UInt32) {
        let count = refusals.takeSuppressed(uid)
        guard count > 0 else { return }
        manager.log(.controlRefused,
                    "refused \(count) more calls from uid \(uid) in the last \(DurationText.format(RefusalLog.window)) (not logged one by one)",
                    ["CALLER_UID": "\(uid)"])
    }

    /// The peer's primary group and its user's supplementary groups (from the group
    /// database: /proc of other processes is hidden in the daemon's sandbox).
    nonisolated static func groups(of peer: PeerCredentials) -> Set<gid_t> {
        var result: Set<gid_t> = [peer.gid]
        var record = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getpwuid_r(peer.uid, &record, &buffer, buffer.count, &found) == 0, found != nil, let name = record.pw_name else {
            return result
        }
        var count: Int32 = 64
        var list = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(name, record.pw_gid, &list, &count) < 0 {
            list = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(name, record.pw_gid, &list, &count)
        }
        result.formUnion(list.prefix(Int(max(0, count))))
        return result
    }

    private func resolveGroup(_ setting: Sourced<String>?, key: String) -> gid_t? {
        guard let setting else { return nil }
        var record = group()
        var found: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        if getgrnam_r(setting.value, &record, &buffer, buffer.count, &found) == 0, found != nil {
            return record.gr_gid
        }
        manager.log(.configRejected, "\(setting.source): daemon.\(key): no group \"\(setting.value)\" on this host; the control socket stays root's. Create it (groupadd \(setting.value)) and restart vfio-powerd",
                    ["CONFIG_FILE": "\(setting.source)"], level: .warning)
        return nil
    }

    // MARK: Records

    func record(_ device: DeviceSnapshot) -> DeviceRecord {
        let now = manager.now()
        var record = DeviceRecord(
            address: "\(device.address)", name: device.name, driver: device.driver,
            source: DeviceRecord.Source(device.policy.source),
            holderPid: device.holder.map { Int64($0.pid) }, holderExecutable: device.holder?.executable,
            powerState: device.power.powerState?.description, runtimeStatus: device.power.runtimeStatus?.description,
            runtimeSuspendedMs: device.power.runtimeSuspendedTime.map { $0.microseconds / 1000 },
            mode: device.policy.isManaged ? DeviceRecord.Mode(device.policy.mode) : .off,
            state: DeviceRecord.State(device.phase),
            wakes: Int64(clamping: device.statistics.wakes), selfWakes: Int64(clamping: device.statistics.selfWakes),
            arms: Int64(clamping: device.statistics.arms), flapping: device.isFlapping,
            flapEpisodes: Int64(clamping: device.statistics.flapEpisodes),
            lowPowerUsec: device.timeInLowPower.microseconds, managedUsec: device.managedFor.microseconds,
            lastWakeRealtimeUsec: device.statistics.lastWake.map { Self.realtimeMicroseconds(of: $0, now: now) },
            lastError: device.lastError, configuredAt: device.origin)
        if let stuck = device.stuck {
            record.state = .stuck
            record.stuckCall = stuck.call
            record.stuckUsec = stuck.for.microseconds
        }
        switch device.phase {
        case .waitingToRearm(let until), .backingOff(let until), .heldAwake(let until?):
            record.nextArmRealtimeUsec = Self.realtimeMicroseconds(of: until, now: now)
        default:
            break
        }
        return record
    }

    func statistics() -> StatisticsRecord {
        // The same categories as the STATUS line, counted by the same tally.
        let totals = manager.statistics()
        return StatisticsRecord(
            devices: Int64(totals.devices), lowPower: Int64(totals.lowPower), awake: Int64(totals.awake),
            missing: Int64(totals.missing), failing: Int64(totals.failing),
            wakes: Int64(clamping: totals.wakes), selfWakes: Int64(clamping: totals.selfWakes),
            arms: Int64(clamping: totals.arms), flapping: Int64(totals.flapping),
            status: manager.summary(),
            uptimeSeconds: manager.startedAt.map { (manager.now() - $0).components.seconds } ?? 0,
            reloads: Int64(manager.reloads.count), lastReloadSucceeded: manager.reloads.lastApplied,
            lastReloadRealtimeUsec: manager.reloads.lastAt.map { Self.realtimeMicroseconds(of: $0, now: manager.now()) })
    }

    /// A record as the wire has it. The records are plain values; encoding one cannot fail.
    private func encoded(_ value: some Encodable) -> JSONValue {
        do { return try JSONValue(encoding: value) } catch { preconditionFailure("encoding \(type(of: value)): \(error)") }
    }

    /// A monotonic instant as CLOCK_REALTIME microseconds: what clients can print.
    nonisolated static func realtimeMicroseconds(of instant: MonotonicInstant, now: MonotonicInstant) -> Int64 {
        var realtime = timespec()
        clock_gettime(CLOCK_REALTIME, &realtime)
        let realtimeNow = Int64(realtime.tv_sec) * 1_000_000 + Int64(realtime.tv_nsec) / 1000
        return realtimeNow - (now - instant).microseconds
    }
}

/// How many refused calls of each user are logged one by one: `perWindow` in each `window`.
struct RefusalLog {
    static let window: Duration = .seconds(10)
    static let perWindow = 5

    private var users: [UInt32: (since: MonotonicInstant, logged: Int, suppressed: Int)] = [:]

    /// Whether this refusal is logged; if not, it is counted.
    mutating func admit(_ uid: UInt32, now: MonotonicInstant) -> Bool {
        var entry = users[uid] ?? (now, 0, 0)
        if now - entry.since >= Self.window, entry.suppressed == 0 { entry = (now, 0, 0) }
        defer { users[uid] = entry }
        if entry.logged < Self.perWindow {
            entry.logged += 1
            return true
        }
        entry.suppressed += 1
        return false
    }

    /// True for the first refusal of a window that is not logged (the summary is then due).
    func startedSuppressing(_ uid: UInt32) -> Bool { users[uid]?.suppressed == 1 }

    /// The refusals counted and not logged, and a new window.
    mutating func takeSuppressed(_ uid: UInt32) -> Int {
        let count = users[uid]?.suppressed ?? 0
        users[uid] = nil
        return count
    }
}
