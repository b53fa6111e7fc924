import Glibc

/// An error reply: the method's error name and its parameters.
public struct VarlinkError: Error, Equatable, CustomStringConvertible {
    public let name: String
    public let parameters: JSONValue

    public init(name: String, parameters: JSONValue = [:]) {
        self.name = name
        self.parameters = parameters
    }

    public var description: String {
        parameters.object?.isEmpty == false ? "\(name) \(parameters)" : name
    }
}

/// Why a client call failed before any reply: the connection, not the method.
public struct VarlinkClientError: Error, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// connect(2) failed; `errno` says why: ENOENT (no socket: the daemon is not running
        /// or uses another path), ECONNREFUSED (a stale socket), EACCES (not in the group).
        public static let connectFailed = Code("connect failed")
        /// The server closed the connection before the final reply.
        public static let disconnected = Code("disconnected")
        /// No reply within the timeout.
        public static let timedOut = Code("timed out")
        /// The server sent something that is not a varlink reply, or one over the size limit.
        public static let invalidReply = Code("invalid reply")
        /// send(2) or recv(2) failed with `errno`.
        public static let ioFailed = Code("I/O failed")
        /// A streaming call was abandoned part way (its callback threw, or it timed out), so the
        /// connection's remaining replies cannot be told apart from a new call's.
        public static let unusable = Code("connection unusable")
    }

    public let code: Code
    public let errno: Int32?
    public let detail: String?

    public init(_ code: Code, errno: Int32? = nil, detail: String? = nil) {
        self.code = code
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var text = code.description
        if let errno { text += ": " + String(cString: strerror(errno)) }
        if let detail { text += " (\(detail))" }
        return text
    }
}

/// A synchronous varlink client over one connection, for the CLI and for tests: each call
/// waits (in poll(2), with an optional timeout) for its replies. Calls are made one after
/// another; not for use from several threads at once.
public final class VarlinkClient {
    public let socketPath: String
    private var fd: Int32
    private let maxReplyBytes: Int
    private var input: [UInt8] = []
    private var inputStart = 0
    private var scratch = [UInt8](repeating: 0, count: VarlinkClient.readChunk)
    private var usable = true

    /// Connects to the server's socket. Never blocks: a server whose backlog is full (hung)
    /// fails at once with EAGAIN.
    /// - Parameter maxReplyBytes: the largest reply accepted; a bigger one is `invalidReply`.
    public init(socketPath: String, maxReplyBytes: Int = 16 << 20) throws {
        self.socketPath = socketPath
        self.maxReplyBytes = maxReplyBytes
        let fd = try Socket.makeStreamSocket(nonBlocking: true)
        let result: Int32
        do {
            result = try UnixSocketAddress.with(socketPath) { address, length in
                Socket.retryOnInterrupt { connect(fd, address, length) }
            }
        } catch let error as VarlinkSocketError {
            _ = Glibc.close(fd)
            throw VarlinkClientError(.connectFailed, errno: error.errno, detail: socketPath)
        }
        guard result == 0 else {
            let e = errno
            _ = Glibc.close(fd)
            throw VarlinkClientError(.connectFailed, errno: e, detail: socketPath)
        }
        self.fd = fd
    }

    deinit { close() }

    /// Closes the connection; later calls fail with `unusable`.
    public func close() {
        guard fd >= 0 else { return }
        _ = Glibc.close(fd)
        fd = -1
        usable = false
    }

    /// Calls `method` and returns the parameters of its reply; throws `VarlinkError` for an
    /// error reply and `VarlinkClientError` when the connection fails.
    public func call(_ method: String, _ parameters: JSONValue = [:], timeout: Duration? = nil) throws -> JSONValue {
        var result: JSONValue = [:]
        try call(method, parameters, more: false, timeout: timeout) { result = $0 }
        return result
    }

    /// Calls `method` with `more` and returns every reply's parameters, the final one last.
    public func collect(_ method: String, _ parameters: JSONValue = [:], timeout: Duration? = nil) throws -> [JSONValue] {
        var replies: [JSONValue] = []
        try call(method, parameters, more: true, timeout: timeout) { replies.append($0) }
        return replies
    }

    /// Calls `method`, with `more` if asked, and hands each reply's parameters to `onReply` as it
    /// arrives, until the final reply (for `vfio-powerctl monitor`). `timeout` bounds the whole
    /// call. If `onReply` throws, its error is rethrown and the connection is given up.
    public func call(_ method: String, _ parameters: JSONValue = [:], more: Bool, timeout: Duration? = nil,
                     onReply: (JSONValue) throws -> Void) throws {
        guard usable else { throw VarlinkClientError(.unusable) }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var message: [String: JSONValue] = ["method": .string(method), "parameters": parameters]
        if more { message["more"] = true }
        try write(.object(message), deadline: deadline)
        while true {
            let reply: JSONValue
            do {
                reply = try readMessage(deadline: deadline)
            } catch {
                usable = false
                throw error
            }
            guard case let .object(members) = reply else {
                usable = false
                throw VarlinkClientError(.invalidReply, detail: "not an object")
            }
            let parameters = members["parameters"] ?? [:]
            if let name = members["error"] {
                guard let name = name.string else {
                    usable = false
                    throw VarlinkClientError(.invalidReply, detail: "error name is not a string")
                }
                throw VarlinkError(name: name, parameters: parameters.isNull ? [:] : parameters)
            }
            let continues = members["continues"]?.bool ?? false
            do {
                try onReply(parameters.isNull ? [:] : parameters)
            } catch {
                if continues { usable = false }
                throw error
            }
            if !continues { return }
        }
    }

    /// Sends a oneway call: the server answers nothing.
    public func callOneway(_ method: String, _ parameters: JSONValue = [:]) throws {
        guard usable else { throw VarlinkClientError(.unusable) }
        try write(["method": .string(method), "parameters": parameters, "oneway": true], deadline: nil)
    }

    // MARK: Wire

    private func write(_ message: JSONValue, deadline: ContinuousClock.Instant?) throws {
        var bytes = message.jsonBytes
        bytes.append(0)
        try writeRaw(bytes, deadline: deadline)
    }

    /// Sends bytes as they are (tests use it to send broken or split messages).
    public func writeRaw(_ bytes: [UInt8], deadline: ContinuousClock.Instant? = nil) throws {
        guard fd >= 0 else { throw VarlinkClientError(.unusable) }
        var offset = 0
        while offset < bytes.count {
            try wait(for: Int16(POLLOUT), until: deadline)
            let result = bytes.withUnsafeBytes { Socket.send(fd, UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            switch result {
            case let .done(n): offset += n
            case .wouldBlock: continue
            case .disconnected: throw VarlinkClientError(.disconnected)
            case let .failed(e): throw VarlinkClientError(.ioFailed, errno: e)
            }
        }
    }

    /// Reads the next NUL-terminated message and parses it.
    public func readMessage(deadline: ContinuousClock.Instant? = nil) throws -> JSONValue {
        guard fd >= 0 else { throw VarlinkClientError(.unusable) }
        while true {
            if let nul = input[inputStart...].firstIndex(of: 0) {
                let bytes = input[inputStart..<nul]
                inputStart = nul + 1
                defer { compactInput() }
                do {
                    return try JSONValue(parsing: bytes)
                } catch {
                    throw VarlinkClientError(.invalidReply, detail: error.description)
                }
            }
            guard input.count - inputStart <= maxReplyBytes else {
                throw VarlinkClientError(.invalidReply, detail: "reply over \(maxReplyBytes) bytes")
            }
            try wait(for: Int16(POLLIN), until: deadline)
            let result = scratch.withUnsafeMutableBytes { Socket.receive(fd, into: $0) }
            switch result {
            case let .done(n): input.append(contentsOf: scratch[..<n])
            case .wouldBlock: continue
            case .disconnected: throw VarlinkClientError(.disconnected)
            case let .failed(e): throw VarlinkClientError(.ioFailed, errno: e)
            }
        }
    }

    private static let readChunk = 64 * 1024

    private func compactInput() {
        if inputStart == input.count {
            input.removeAll(keepingCapacity: true)
            inputStart = 0
        } else if inputStart >= Self.readChunk {
            input.removeFirst(inputStart)
            inputStart = 0
        }
    }

    private func wait(for events: Int16, until deadline: ContinuousClock.Instant?) throws {
        while true {
            var timeoutMS: Int32 = -1
            if let deadline {
                let left = deadline - ContinuousClock.now
                if left <= .zero { throw VarlinkClientError(.timedOut) }
                let (seconds, attoseconds) = left.components
                timeoutMS = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&entry, 1, timeoutMS)
            if n < 0 {
                if errno == EINTR { continue }
                throw VarlinkClientError(.ioFailed, errno: errno)
            }
            if n > 0 { return }  // ready, or hung up: the read or write that follows says which
        }
    }
}
