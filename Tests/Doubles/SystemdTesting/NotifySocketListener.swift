import Glibc
import Varlink

/// Plays systemd's side of sd_notify(3) in a test: an AF_UNIX datagram socket bound in a
/// fresh temporary directory, whose path goes into `NOTIFY_SOCKET`.
///
///     let listener = try NotifySocketListener()
///     try listener.withNotifySocket {
///         SystemdNotifier().ready()
///     }
///     XCTAssertEqual(try listener.receive(), "READY=1")
///
/// `NOTIFY_SOCKET` is process-global (libsystemd reads it on every `sd_notify`), so tests
/// that use a listener must not run concurrently with each other or with anything else that
/// reads or writes the environment: keep them in XCTest (serial by default) or in one
/// serialized Swift Testing suite.
///
/// Only libc: usable from any test target that plays systemd.
public final class NotifySocketListener {
    public struct SystemCallError: Error, CustomStringConvertible {
        public var call: String
        public var errno: Int32
        public var description: String { "\(call): \(String(cString: strerror(errno))) (errno \(errno))" }
    }

    /// The socket's path: the value for `NOTIFY_SOCKET`.
    public let path: String
    /// The temporary directory this listener made (and removes), if any.
    private let directory: String?
    private var fd: Int32

    /// Creates a fresh temporary directory and binds the socket in it.
    public convenience init() throws {
        var template = Array("/tmp/notify-listener.XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemCallError(call: "mkdtemp", errno: errno)
        }
        let directory = String(cString: made)
        try self.init(path: directory + "/notify.sock", ownedDirectory: directory)
    }

    /// Binds the socket at `path` (whose directory must exist); the socket file is removed
    /// when the listener goes away. For playing another datagram service, e.g. journald.
    public convenience init(bindingAt path: String) throws {
        try self.init(path: path, ownedDirectory: nil)
    }

    private init(path: String, ownedDirectory directory: String?) throws {
        self.path = path
        self.directory = directory

        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            let error = SystemCallError(call: "socket", errno: errno)
            if let directory { rmdir(directory) }
            throw error
        }

        let bound: Int32
        do {
            bound = try UnixSocketAddress.with(path) { bind(fd, $0, $1) }
        } catch {
            close(fd)
            if let directory { rmdir(directory) }
            throw SystemCallError(call: "bind (path too long)", errno: ENAMETOOLONG)
        }
        guard bound == 0 else {
            let error = SystemCallError(call: "bind", errno: errno)
            close(fd)
            if let directory { rmdir(directory) }
            throw error
        }
    }

    deinit {
        close(fd)
        unlink(path)
        if let directory { rmdir(directory) }
    }

    /// The next datagram as text, or nil when none arrives within `timeoutMilliseconds`.
    public func receive(timeoutMilliseconds: Int32 = 2_000) throws -> String? {
        try receiveBytes(timeoutMilliseconds: timeoutMilliseconds).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The next datagram's bytes, or nil when none arrives within `timeoutMilliseconds`.
    public func receiveBytes(timeoutMilliseconds: Int32 = 2_000) throws -> [UInt8]? {
        var pollDescriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&pollDescriptor, 1, timeoutMilliseconds)
            if ready < 0 && errno == EINTR { continue }
            guard ready >= 0 else { throw SystemCallError(call: "poll", errno: errno) }
            if ready == 0 { return nil }
            break
        }
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes {
                recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT))
            }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw SystemCallError(call: "recv", errno: errno) }
            return Array(buffer[..<count])
        }
    }

    /// Every datagram already queued, without waiting.
    public func receiveQueued() throws -> [String] {
        var messages: [String] = []
        while let message = try receive(timeoutMilliseconds: 0) {
            messages.append(message)
        }
        return messages
    }

    /// Runs `body` with `NOTIFY_SOCKET` set to this listener, restoring the previous value
    /// (or its absence) afterwards.
    public func withNotifySocket<Result>(_ body: () throws -> Result) rethrows -> Result {
        let previous = getenv("NOTIFY_SOCKET").map { String(cString: $0) }
        setenv("NOTIFY_SOCKET", path, 1)
        defer {
            if let previous {
                setenv("NOTIFY_SOCKET", previous, 1)
            } else {
                unsetenv("NOTIFY_SOCKET")
            }
        }
        return try body()
    }
}
