import Glibc

/// `CLOCK_MONOTONIC`, the clock systemd's `MONOTONIC_USEC=` is defined against.
///
/// Swift's `ContinuousClock` and `SuspendingClock` have opaque instants (and on Linux one of
/// them is `CLOCK_BOOTTIME`), so they cannot stand in for it.
public enum MonotonicClock {
    /// Microseconds on `CLOCK_MONOTONIC`.
    ///
    /// The corresponding C function is `clock_gettime`.
    public static func nowMicroseconds() -> UInt64 {
        var now = timespec()
        // CLOCK_MONOTONIC cannot fail with a valid timespec pointer.
        let result = clock_gettime(CLOCK_MONOTONIC, &now)
        precondition(result == 0, "clock_gettime(CLOCK_MONOTONIC) failed")
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
    }
}
