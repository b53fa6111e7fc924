import Glibc
import Dispatch

/// A varlink server on a unix stream socket, run entirely on one serial Dispatch queue.
///
/// It answers org.varlink.service (GetInfo, GetInterfaceDescription) itself, answers
/// InterfaceNotFound and MethodNotFound for what its interface descriptions do not declare,
/// and hands every other call to `handler` on `queue`. The handler must not block; it may
/// answer at once or keep the `VarlinkReply` and answer later (on the queue).
///
/// Sockets are non-blocking and watched by Dispatch sources on `queue`; no thread is made per
/// client. Every resource a client controls is bounded (`Limits`).
///
/// Call `start()` and `stop()` on `queue`. Stop the server before dropping it: its sources
/// keep it and its connections alive until then.
///
/// `@unchecked Sendable`, as the module's other queue-confined classes (`VarlinkConnection`,
/// `VarlinkReply`, `ReadBuffer`, `ReceivedFiles`), with `dispatchPrecondition` checking the
/// queue at run time: the compiler checks confinement only to an actor, and this module runs on
/// whatever queue it is given (the daemon's, a test's own) and knows no actor of its users.
public final class VarlinkServer: @unchecked Sendable {
    public struct Limits: Sendable, Equatable {
        /// Largest message accepted, NUL excluded. A longer one is answered with io.systemd.System
        /// (errno EMSGSIZE) when no call of that client is open, and the client is closed.
        public var maxMessageBytes = 65536
        /// Clients at once. Further ones are accepted and closed at once (they read EOF).
        public var maxConnections = 64
        /// Clients at once from one user id; same treatment past it.
        public var maxConnectionsPerUser = 32
        /// Replies a client has not read yet, in bytes, beyond what the kernel's socket buffer
        /// holds. Past it the client is dropped (its open call cancelled).
        public var maxPendingOutputBytes = 1 << 20
        /// Nesting of arrays and objects in a message.
        public var maxJSONDepth = 64
        /// Connections kept for root (uid 0) alone: other users together get at most
        /// `maxConnections` minus these, so they cannot lock root's vfio-powerctl out.
        public var reservedForRoot = 8
        /// A client with no call open and nothing sent or unread for this long is closed.
        public var idleTimeout: Duration = .seconds(60)
        /// A client that stops halfway through a message, or stops reading its replies, for
        /// this long is closed.
        public var stallTimeout: Duration = .seconds(10)

        public init() {}
    }

    /// Why a client's connection ended.
    public enum DisconnectReason: Sendable, Equatable {
        /// The client closed, or shut down its side and got every answer.
        case peerClosed
        case finished
        /// A message over `maxMessageBytes`.
        case messageTooLarge
        /// Not JSON, not an object, no "method", or a field of the wrong type.
        case protocolViolation
        /// Unread replies past `maxPendingOutputBytes`, or none read for `stallTimeout`.
        case slowReader
        /// No call and no input for `idleTimeout`.
        case idle
        /// Half a message, and nothing more for `stallTimeout`.
        case stalled
        /// More file descriptors passed (SCM_RIGHTS) than a call may carry.
        case tooManyFiles
        case socketError(Int32)
        case serverStopped
    }

    /// What happened to a client, for the daemon's log and statistics.
    public enum Event: Sendable, Equatable {
        case accepted(PeerCredentials)
        /// Refused at accept: `maxConnections` or `maxConnectionsPerUser` reached.
        case refused(PeerCredentials)
        case disconnected(PeerCredentials, DisconnectReason)
        /// accept(2) failed for want of descriptors or memory; accepting pauses for a moment.
        case acceptFailed(errno: Int32)
    }

    public typealias Handler = @Sendable (VarlinkCall, PeerCredentials, VarlinkReply) -> Void

    public let socketPath: String
    public let queue: DispatchQueue
    public let limits: Limits
    private let mode: mode_t
    private let group: gid_t?
    private let info: JSONValue
    private let descriptions: [String: String]
    private let methods: [String: Set<String>]
    private let handler: Handler

    /// Called on the queue for each client event. Set it before `start()`.
    public var onEvent: (@Sendable (Event) -> Void)?

    private enum State { case idle, running, stopped }
    private var state = State.idle
    private var listener: (any DispatchSourceRead)?
    private var listenerSuspended = false
    /// The socket file we bound, to unlink only our own at stop.
    private var boundFile: (device: UInt64, inode: UInt64)?
    private var connections: [ObjectIdentifier: VarlinkConnection] = [:]
    private var connectionsPerUser: [UInt32: Int] = [:]
    private let scratch = ReadBuffer(size: VarlinkConnection.readChunk)

    /// Clients now connected.
    public var connectionCount: Int {
        dispatchPrecondition(condition: .onQueue(queue))
        return connections.count
    }

    /// - Parameters:
    ///   - mode: permissions of the socket file (connecting needs write permission).
    ///   - group: group of the socket file; nil leaves the daemon's.
    ///   - info: what org.varlink.service.GetInfo answers.
    ///   - interfaces: interface name → its description in the varlink IDL, served by
    ///     GetInterfaceDescription; the `method` lines decide which calls reach `handler`.
    public init(socketPath: String, mode: mode_t = 0o660, group: gid_t? = nil, queue: DispatchQueue,
                limits: Limits = Limits(),
                info: (vendor: String, product: String, version: String, url: String),
                interfaces: [String: String],
                handler: @escaping Handler) {
        // A description the server cannot read, or one of another interface, is the
        // program's own mistake: found at start, in every test that starts a server.
        var methods: [String: Set<String>] = [:]
        for (name, text) in interfaces.merging([VarlinkService.name: VarlinkService.description], uniquingKeysWith: { a, _ in a }) {
            let interface: VarlinkInterface
            do { interface = try VarlinkInterface(parsing: text) } catch { preconditionFailure("the description of \(name): \(error)") }
            precondition(interface.name == name, "the description of \(name) declares interface \(interface.name)")
            methods[name] = Set(interface.methods.keys)
        }
        self.socketPath = socketPath
        self.mode = mode
        self.group = group
        self.queue = queue
        self.limits = limits
        self.handler = handler
        var descriptions = interfaces
        descriptions[VarlinkService.name] = VarlinkService.description
        self.descriptions = descriptions
        self.methods = methods
        self.info = [
            "vendor": .string(info.vendor), "product": .string(info.product),
            "version": .string(info.version), "url": .string(info.url),
            "interfaces": .array(descriptions.keys.sorted().map { .string($0) }),
        ]
    }

    /// A server dropped without `stop()` still stops listening (a listening source left
    /// behind would fire for every new client with nobody to accept it) and closes its clients.
    deinit {
        if let listener {
            if listenerSuspended { listener.resume() }
            listener.cancel()
        }
        if let boundFile {
            Self.unlinkIfSame(socketPath, boundFile)
        }
        for connection in connections.values {
            queue.async { @Sendable in connection.close(.serverStopped) }
        }
    }

    /// Refuses a socket directory that users other than root can write: one of them could
    /// put a file or a symlink where the socket goes, or take it away.
    static func checkDirectory(of path: String) throws {
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        var st = stat()
        guard stat(directory.isEmpty ? "/" : directory, &st) == 0 else { return }  // bind reports it
        let othersWrite = st.st_mode & 0o002 != 0
        let groupWrites = st.st_mode & 0o020 != 0 && st.st_gid != 0
        if othersWrite || groupWrites || (st.st_uid != 0 && st.st_uid != getuid()) {
            throw VarlinkSocketError("use the directory of", path: path, errno: EPERM,
                                     detail: "\(directory) can be written by users other than its owner (mode \(String(st.st_mode & 0o7777, radix: 8)), uid \(st.st_uid)); put the socket in a directory only root can write, such as /run/vfio-powerd")
        }
    }

    private static func unlinkIfSame(_ path: String, _ file: (device: UInt64, inode: UInt64)) {
        var st = stat()
        if stat(path, &st) == 0, UInt64(st.st_dev) == file.device, UInt64(st.st_ino) == file.inode {
            unlink(path)
        }
    }

    // MARK: Start and stop

    /// Binds and listens: removes a stale socket file left by a dead instance (refusing with
    /// EADDRINUSE if one still answers, EEXIST if the path is not a socket), binds, sets mode
    /// and group before listen(2) so no client connects through looser permissions, and
    /// watches the socket on the queue.
    public func start() throws {
        dispatchPrecondition(condition: .onQueue(queue))
        precondition(state == .idle, "a VarlinkServer starts once")
        try Self.checkDirectory(of: socketPath)
        try removeStaleSocket()
        let fd = try Socket.makeStreamSocket(nonBlocking: true)
        do {
            // The node gets its mode as bind(2) creates it (the umask, for this one call), and
            // its group by lchown(2), which does not follow a symlink: nothing acts on a path
            // that could have been swapped after the bind (chmod and chown on the path once
            // turned a root-owned 0600 file that a user linked there into root:nogroup 0660).
            let previous = umask(0o777 & ~mode)
            let bound = try UnixSocketAddress.with(socketPath) { bind(fd, $0, $1) }
            let bindErrno = errno
            umask(previous)
            guard bound == 0 else { throw VarlinkSocketError("bind", path: socketPath, errno: bindErrno) }
            do {
                if let group, lchown(socketPath, uid_t.max, group) != 0 {
                    throw VarlinkSocketError("chown", path: socketPath, errno: errno)
                }
                var st = stat()
                guard lstat(socketPath, &st) == 0 else { throw VarlinkSocketError("stat", path: socketPath, errno: errno) }
                guard st.st_mode & S_IFMT == S_IFSOCK else { throw VarlinkSocketError("bind", path: socketPath, errno: EEXIST) }
                guard listen(fd, SOMAXCONN) == 0 else { throw VarlinkSocketError("listen", path: socketPath, errno: errno) }
                boundFile = (UInt64(st.st_dev), UInt64(st.st_ino))
            } catch {
                unlink(socketPath)
                throw error
            }
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
        serve(on: fd)
    }

    /// Serves on a socket that systemd made and listens on (socket activation): the file's
    /// mode and group are the socket unit's (SocketMode=, SocketGroup=), made by a process
    /// that may chown; stop leaves the file to systemd.
    public func start(listeningOn fd: Int32) {
        dispatchPrecondition(condition: .onQueue(queue))
        precondition(state == .idle, "a VarlinkServer starts once")
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        serve(on: fd)
    }

    private func serve(on fd: Int32) {
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler { @Sendable [weak self] in self?.acceptClients(fd) }
        source.setCancelHandler { @Sendable in _ = Glibc.close(fd) }
        listener = source
        state = .running
        source.resume()
    }

    /// Stops listening, closes every client (their open calls are cancelled: `onCancel` runs),
    /// and removes the socket file if it is still ours. Idempotent.
    public func stop() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state == .running else {
            state = .stopped
            return
        }
        state = .stopped
        if let listener {
            if listenerSuspended { listener.resume() }
            listenerSuspended = false
            listener.cancel()
        }
        listener = nil
        if let boundFile {
            Self.unlinkIfSame(socketPath, boundFile)
        }
        boundFile = nil
        for connection in Array(connections.values) {
            connection.close(.serverStopped)
        }
    }

    private func removeStaleSocket() throws {
        var st = stat()
        guard lstat(socketPath, &st) == 0 else {
            if errno == ENOENT { return }
            throw VarlinkSocketError("stat", path: socketPath, errno: errno)
        }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw VarlinkSocketError("bind", path: socketPath, errno: EEXIST)
        }
        // A socket that still accepts belongs to a live server: leave it alone.
        let probe = try Socket.makeStreamSocket(nonBlocking: true)
        defer { _ = Glibc.close(probe) }
        let connected = try UnixSocketAddress.with(socketPath) { connect(probe, $0, $1) }
        if connected == 0 || errno == EAGAIN {
            throw VarlinkSocketError("bind", path: socketPath, errno: EADDRINUSE)
        }
        guard unlink(socketPath) == 0 || errno == ENOENT else {
            throw VarlinkSocketError("unlink", path: socketPath, errno: errno)
        }
    }

    // MARK: Accepting

    /// Accepts what is waiting, a bounded number per turn so the queue stays responsive.
    private func acceptClients(_ listenFD: Int32) {
        guard state == .running else { return }
        for _ in 0..<16 {
            let fd = Socket.accept(listenFD)
            if fd < 0 {
                switch errno {
                case EAGAIN, EWOULDBLOCK:
                    return
                case ECONNABORTED, EPROTO, EPERM:
                    continue
                case let e:
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the listening socket stays readable, so
                    // a level-triggered source would spin. Pause and try again shortly.
                    onEvent?(.acceptFailed(errno: e))
                    pauseAccepting()
                    return
                }
            }
            guard let credentials = Socket.peerCredentials(fd) else {
                _ = Glibc.close(fd)
                continue
            }
            // Accept-and-close rather than leaving clients in the backlog: they learn at once
            // (EOF) instead of hanging in connect, and the listening source does not spin.
            let room = credentials.uid == 0 ? limits.maxConnections : limits.maxConnections - limits.reservedForRoot
            if connections.count >= room
                || connectionsPerUser[credentials.uid, default: 0] >= limits.maxConnectionsPerUser {
                _ = Glibc.close(fd)
                onEvent?(.refused(credentials))
                continue
            }
            let connection = VarlinkConnection(fd: fd, credentials: credentials, server: self, queue: queue,
                                               limits: limits, scratch: scratch)
            connections[ObjectIdentifier(connection)] = connection
            connectionsPerUser[credentials.uid, default: 0] += 1
            onEvent?(.accepted(credentials))
            connection.start()
            startSweeping()
        }
    }

    // MARK: Timeouts

    private var sweeper: (any DispatchSourceTimer)?

    /// Once a second while any client is connected: reaps those that left while their reading
    /// was paused, and closes idle and stalled ones.
    private func startSweeping() {
        guard sweeper == nil else { return }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .seconds(1), repeating: .seconds(1), leeway: .milliseconds(250))
        timer.setEventHandler { @Sendable [weak self] in self?.sweep() }
        timer.resume()
        sweeper = timer
    }

    private func sweep() {
        let now = DispatchTime.now()
        for connection in Array(connections.values) { connection.sweep(now: now) }
        if connections.isEmpty {
            sweeper?.cancel()
            sweeper = nil
        }
    }

    private func pauseAccepting() {
        guard let listener, !listenerSuspended else { return }
        listener.suspend()
        listenerSuspended = true
        queue.asyncAfter(deadline: .now() + .milliseconds(100)) { @Sendable [weak self] in
            guard let self, self.state == .running, self.listenerSuspended else { return }
            self.listenerSuspended = false
            self.listener?.resume()
        }
    }

    func connectionClosed(_ connection: VarlinkConnection, reason: DisconnectReason) {
        guard connections.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        let uid = connection.credentials.uid
        connectionsPerUser[uid, default: 1] -= 1
        if connectionsPerUser[uid] == 0 { connectionsPerUser[uid] = nil }
        onEvent?(.disconnected(connection.credentials, reason))
    }

    // MARK: Routing

    func route(_ call: VarlinkCall, from credentials: PeerCredentials, reply: VarlinkReply) {
        let interface = call.interface
        guard let declared = methods[interface] else {
            reply.error(VarlinkErrorName.interfaceNotFound, parameters: ["interface": .string(interface)])
            return
        }
        guard declared.contains(call.member) else {
            reply.error(VarlinkErrorName.methodNotFound, parameters: ["method": .string(call.method)])
            return
        }
        guard interface == VarlinkService.name else {
            handler(call, credentials, reply)
            return
        }
        switch call.member {
        case "GetInfo":
            if let unexpected = call.parameters.object?.keys.sorted().first {
                reply.error(VarlinkErrorName.invalidParameter, parameters: ["parameter": .string(unexpected)])
            } else {
                reply.send(info)
            }
        case "GetInterfaceDescription":
            guard let name = call.parameters["interface"]?.string else {
                reply.error(VarlinkErrorName.invalidParameter, parameters: ["parameter": "interface"])
                return
            }
            if let text = descriptions[name] {
                reply.send(["description": .string(text)])
            } else {
                reply.error(VarlinkErrorName.interfaceNotFound, parameters: ["interface": .string(name)])
            }
        default:
            reply.error(VarlinkErrorName.methodNotImplemented, parameters: ["method": .string(call.method)])
        }
    }
}
