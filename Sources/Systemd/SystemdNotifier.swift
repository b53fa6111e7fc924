import Glibc
import CSystemd

/// What became of one notification.
///
/// `sd_notify(3)` has three outcomes and a service treats them differently: a message that
/// was sent, a process that is simply not supervised by systemd (a foreground run in a
/// terminal, a test), and a real failure (the socket named by `NOTIFY_SOCKET` is gone, the
/// message is too large). None of them is fatal for a daemon, so the notifier returns the
/// outcome instead of throwing; a caller that cares (the watchdog path, a test) looks at it.
public enum NotifyResult: Equatable, Sendable {
    /// systemd got the datagram (`sd_notify` returned a positive value).
    case sent
    /// `NOTIFY_SOCKET` is not set: the process is not running under systemd with
    /// `Type=notify` (or `NotifyAccess=` excludes it). `sd_notify` returned 0.
    case notUnderSystemd
    /// Sending failed; the payload is the positive errno (`sd_notify` returned `-errno`).
    case failed(errno: Int32)

    /// Maps `sd_notify`'s return value.
    init(returnValue: Int32) {
        if returnValue > 0 {
            self = .sent
        } else if returnValue == 0 {
            self = .notUnderSystemd
        } else {
            self = .failed(errno: -returnValue)
        }
    }
}

/// Tells the service manager about the daemon's state, over `sd_notify(3)`.
///
/// A thin wrapper: every method sends one datagram with `sd_notify(0, ...)` and returns what
/// libsystemd said. It holds no state; libsystemd reads `NOTIFY_SOCKET` on every call, so the
/// environment is never unset and a copy of the notifier is as good as the original. Safe to
/// call from any thread.
///
/// The reload protocol, for both `Type=notify` with `ExecReload=` (systemd 252) and
/// `Type=notify-reload` (systemd >= 253): call ``reloading(monotonicUsec:)`` when the reload
/// starts, then ``ready()`` when it is done (whether the new configuration was applied or
/// rejected). systemd 252 ignores `RELOADING=1` from a `Type=notify` service that did not ask
/// for it, so the same sequence works on both.
public struct SystemdNotifier: Sendable {
    public init() {}

    /// `READY=1`: start-up (or a reload) is complete.
    @discardableResult
    public func ready() -> NotifyResult {
        send([("READY", "1")])
    }

    /// `STATUS=<line>`: the one line `systemctl status` shows. Newlines (which would end the
    /// assignment early) are replaced by spaces.
    @discardableResult
    public func status(_ line: String) -> NotifyResult {
        send([("STATUS", line)])
    }

    /// `WATCHDOG=1`: the keep-alive ping; see ``SystemdWatchdog`` for the interval.
    @discardableResult
    public func watchdogPing() -> NotifyResult {
        send([("WATCHDOG", "1")])
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`: a reload has started.
    ///
    /// - Parameter monotonicUsec: `CLOCK_MONOTONIC` in microseconds, read when the reload
    ///   starts (``MonotonicClock/nowMicroseconds()``). `Type=notify-reload` requires it to
    ///   tell this reload's `READY=1` from an earlier one.
    @discardableResult
    public func reloading(monotonicUsec: UInt64) -> NotifyResult {
        send([("RELOADING", "1"), ("MONOTONIC_USEC", String(monotonicUsec))])
    }

    /// `STOPPING=1`: shutdown has begun.
    @discardableResult
    public func stopping() -> NotifyResult {
        send([("STOPPING", "1")])
    }

    /// `EXTEND_TIMEOUT_USEC=<usec>`: the start, reload or stop in progress needs this much
    /// more time (from now) than `TimeoutStartSec=`/`TimeoutStopSec=` allow; send it again
    /// before it runs out to keep extending.
    @discardableResult
    public func extendTimeout(microseconds: UInt64) -> NotifyResult {
        send([("EXTEND_TIMEOUT_USEC", String(microseconds))])
    }

    /// `ERRNO=<value>`: the error the service is failing with (shown by `systemctl status`).
    @discardableResult
    public func errno(_ value: Int32) -> NotifyResult {
        send([("ERRNO", String(value))])
    }

    /// Sends the assignments as one datagram, one `KEY=value` per line, in order.
    ///
    /// Keys are the protocol's variable names, chosen by the program (`READY`, `STATUS`, ...):
    /// a key that is empty or contains `=` or a newline is a programming error and traps.
    /// Newlines in values are replaced by spaces.
    ///
    /// Keeps `descriptor` in the service's file descriptor store under `name` (FDSTORE=1,
    /// FDNAME=), so the next run of the daemon gets it back (`storedDescriptors()`). Needs
    /// FileDescriptorStoreMax= in the unit. The corresponding C function is
    /// `sd_pid_notify_with_fds`.
    public func store(_ descriptor: Int32, name: String) -> NotifyResult {
        var fd = descriptor
        let message = "FDSTORE=1\nFDNAME=\(name)"
        return NotifyResult(returnValue: sd_pid_notify_with_fds(0, 0, message, &fd, 1))
    }

    /// Takes the descriptors stored under `name` out of the store (FDSTOREREMOVE=1).
    public func removeStored(name: String) -> NotifyResult {
        send([("FDSTOREREMOVE", "1"), ("FDNAME", name)])
    }

    /// The descriptors systemd handed this run (the fd store's, after a restart), by name; the
    /// caller owns them. Reads LISTEN_FDS and LISTEN_FDNAMES once and unsets them. The
    /// corresponding C function is `sd_listen_fds_with_names`.
    public static func storedDescriptors() -> [(name: String, descriptor: Int32)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else { return [] }
        defer {
            if let names {
                for index in 0..<Int(count) { free(names[index]) }
                free(names)
            }
        }
        return (0..<Int(count)).map { index in
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            return (name, SD_LISTEN_FDS_START + Int32(index))
        }
    }

    /// Whether `descriptor` is a listening unix stream socket (one systemd made for a socket
    /// unit), bound to `path` when one is given. The C function is `sd_is_socket_unix`.
    public static func isListeningUnixSocket(_ descriptor: Int32, path: String? = nil) -> Bool {
        sd_is_socket_unix(descriptor, Int32(SOCK_STREAM.rawValue), 1, path, 0) > 0
    }

    /// Whether `descriptor` is a listening stream socket of any family (a socket unit's
    /// ListenStream=, an address or a port). The C function is `sd_is_socket`.
    public static func isListeningStreamSocket(_ descriptor: Int32) -> Bool {
        sd_is_socket(descriptor, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1) > 0
    }

    /// The corresponding C function is `sd_notify`.
    @discardableResult
    public func send(_ assignments: [(String, String)]) -> NotifyResult {
        let message = Self.message(assignments)
        return NotifyResult(returnValue: sd_notify(0, message))
    }

    /// The datagram ``send(_:)`` sends for `assignments` (exposed for tests).
    public static func message(_ assignments: [(String, String)]) -> String {
        var lines: [String] = []
        lines.reserveCapacity(assignments.count)
        for (key, value) in assignments {
            precondition(
                !key.isEmpty && !key.contains("=") && !key.contains(where: \.isNewline),
                "invalid sd_notify variable name \"\(key)\"")
            let oneLine = value.contains(where: \.isNewline)
                ? String(value.map { $0.isNewline ? " " : $0 })
                : value
            lines.append("\(key)=\(oneLine)")
        }
        return lines.joined(separator: "\n")
    }
}
