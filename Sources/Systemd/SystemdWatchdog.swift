import CSystemd

/// The service watchdog systemd configured for this process (`WatchdogSec=`).
///
/// systemd passes the interval in `WATCHDOG_USEC` (and the process it is meant for in
/// `WATCHDOG_PID`). The daemon must send `WATCHDOG=1` (``SystemdNotifier/watchdogPing()``)
/// more often than that; pinging at ``pingInterval()`` (half of it) from the event loop itself
/// means a stuck loop is caught.
public enum SystemdWatchdog {
    /// What `sd_watchdog_enabled(3)` reported.
    public enum State: Equatable, Sendable {
        /// The watchdog is on; ping at least this often.
        case enabled(Duration)
        /// No watchdog for this process (`WATCHDOG_USEC` unset, or `WATCHDOG_PID` names
        /// another process).
        case disabled
        /// The environment is malformed; the payload is the positive errno (e.g. `EINVAL`).
        case invalid(errno: Int32)
    }

    /// Reads the watchdog configuration from the environment (not unsetting it).
    ///
    /// The corresponding C function is `sd_watchdog_enabled`.
    public static func state() -> State {
        var usec: UInt64 = 0
        let result = sd_watchdog_enabled(0, &usec)
        if result > 0 {
            return .enabled(.microseconds(Int64(clamping: usec)))
        } else if result == 0 {
            return .disabled
        } else {
            return .invalid(errno: -result)
        }
    }

    /// The watchdog interval, or nil when there is no (valid) watchdog.
    public static func interval() -> Duration? {
        if case .enabled(let interval) = state() { return interval }
        return nil
    }

    /// How often to ping: half the interval, as sd_watchdog_enabled(3) recommends.
    public static func pingInterval() -> Duration? {
        interval().map { $0 / 2 }
    }
}
