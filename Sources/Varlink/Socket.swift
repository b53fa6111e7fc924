import Glibc

/// Who is on the other end of a connection: the kernel's SO_PEERCRED, taken when the
/// connection was accepted (the process that called connect(2), not whoever sends later).
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "pid \(pid), uid \(uid), gid \(gid)" }
}

/// A failed system call: which one, the path it was about (if any), and errno.
public struct VarlinkSocketError: Error, Equatable, CustomStringConvertible {
    public let operation: String
    public let path: String?
    public let errno: Int32
    /// What the error means, when the errno alone would not say it.
    public let detail: String?

    public init(_ operation: String, path: String? = nil, errno: Int32, detail: String? = nil) {
        self.operation = operation
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        let message = detail ?? String(cString: strerror(errno))
        if let path { return "\(operation) \"\(path)\": \(message)" }
        return "\(operation): \(message)"
    }
}

/// Thin wrappers over the socket calls the server and the client need. EINTR is retried
/// everywhere except `close`, as swift-system does.
enum Socket {
    /// `struct ucred` from <sys/socket.h>, which Swift's Glibc module does not import
    /// (it hides behind _GNU_SOURCE). Three 32-bit fields, no padding.
    private struct UCred {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
    }

    static func retryOnInterrupt<T: BinaryInteger>(_ body: () -> T) -> T {
        while true {
            let result = body()
            if result == -1 && errno == EINTR { continue }
            return result
        }
    }

    static func makeStreamSocket(nonBlocking: Bool) throws -> Int32 {
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        let fd = socket(AF_UNIX, type, 0)
        guard fd >= 0 else { throw VarlinkSocketError("socket", errno: errno) }
        return fd
    }

    /// accept(2), then non-blocking and close-on-exec. (accept4 hides behind _GNU_SOURCE in
    /// Swift's Glibc module; the daemon does not exec, so the gap before FD_CLOEXEC is harmless.)
    static func accept(_ listenFD: Int32) -> Int32 {
        let fd = retryOnInterrupt { Glibc.accept(listenFD, nil, nil) }
        guard fd >= 0 else { return fd }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    static func peerCredentials(_ fd: Int32) -> PeerCredentials? {
        var cred = UCred()
        var length = socklen_t(MemoryLayout<UCred>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0,
              length == socklen_t(MemoryLayout<UCred>.size) else { return nil }
        return PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
    }

    enum IOResult {
        case done(Int)
        case wouldBlock
        /// The peer is gone (EOF on read; EPIPE or ECONNRESET on write).
        case disconnected
        case failed(Int32)
    }

    static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        let n = retryOnInterrupt { recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT)) }
        if n > 0 { return .done(n) }
        if n == 0 { return .disconnected }
        switch errno {
        case EAGAIN, EWOULDBLOCK: return .wouldBlock
        case ECONNRESET, EPIPE: return .disconnected
        case let e: return .failed(e)
        }
    }

    /// send(2) with MSG_NOSIGNAL: a peer that went away is an EPIPE here, never a SIGPIPE.
    static func send(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) -> IOResult {
        let n = retryOnInterrupt {
            Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        }
        if n >= 0 { return .done(n) }
        switch errno {
        case EAGAIN, EWOULDBLOCK: return .wouldBlock
        case ECONNRESET, EPIPE: return .disconnected
        case let e: return .failed(e)
        }
    }

    /// Whether the peer has closed its end entirely (POLLHUP), as opposed to only shutting down
    /// its writing half (then it may still read our replies). Never blocks.
    static func peerHungUp(_ fd: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let n = retryOnInterrupt { poll(&entry, 1, 0) }
        return n > 0 && (Int32(entry.revents) & (Int32(POLLHUP) | Int32(POLLERR))) != 0
    }
}

/// The one builder of a `sockaddr_un` in the project (the daemon's socket, its clients, the
/// test doubles and the benchmark): a path that does not fit `sun_path` with its NUL is
/// refused, never cut short into another path.
public enum UnixSocketAddress {
    /// Fills a `sockaddr_un` for `path` and calls `body` with it and its length; throws
    /// ENAMETOOLONG (as `VarlinkSocketError`) when the path is empty, holds a NUL or is too long.
    public static func with<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) throws -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let utf8 = Array(path.utf8)
        guard !utf8.isEmpty, utf8.count < capacity, !utf8.contains(0) else {
            throw VarlinkSocketError("socket address", path: path, errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: utf8)
            raw[utf8.count] = 0
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + utf8.count + 1)
        return try withUnsafePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }
}
