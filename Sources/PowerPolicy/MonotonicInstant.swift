/// A point on the monotonic clock (CLOCK_MONOTONIC), in nanoseconds since an arbitrary start.
///
/// The policy core never reads a clock: the daemon builds instants from `clock_gettime` and
/// hands them in with every event; tests build them from literals and a manual clock.
public struct MonotonicInstant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    /// The instant `duration` after the clock's start (handy for tests: `.init(.seconds(5))`).
    public init(_ sinceStart: Duration) { self.nanoseconds = sinceStart.nanosecondsClamped }

    public static let zero = MonotonicInstant(nanoseconds: 0)

    public static func < (a: MonotonicInstant, b: MonotonicInstant) -> Bool { a.nanoseconds < b.nanoseconds }

    /// Saturates at the clock's ends instead of trapping: a deadline far in the future is still
    /// a deadline, and the core must never crash on arithmetic.
    public static func + (a: MonotonicInstant, d: Duration) -> MonotonicInstant {
        let delta = d.nanosecondsClamped
        if d < .zero {
            let back = UInt64(clamping: -(Int128(d.components.seconds) * 1_000_000_000
                                          + Int128(d.components.attoseconds / 1_000_000_000)))
            return MonotonicInstant(nanoseconds: a.nanoseconds >= back ? a.nanoseconds - back : 0)
        }
        let (sum, overflow) = a.nanoseconds.addingReportingOverflow(delta)
        return MonotonicInstant(nanoseconds: overflow ? .max : sum)
    }

    public static func - (a: MonotonicInstant, d: Duration) -> MonotonicInstant { a + (.zero - d) }

    /// The time from `b` to `a`; negative when `a` is earlier.
    public static func - (a: MonotonicInstant, b: MonotonicInstant) -> Duration {
        a >= b ? .nanoseconds(a.nanoseconds - b.nanoseconds) : .zero - .nanoseconds(b.nanoseconds - a.nanoseconds)
    }

    public var description: String { "@" + DurationText.format(.nanoseconds(nanoseconds), precise: true) }
}

/// The one conversion of a `Duration` to whole units, for every module above VFIO (VFIO,
/// the kernel layer, depends on nothing of the core and keeps its own two). Truncated toward
/// zero and saturating: a duration too long for Int64 is Int64.max of the unit, never a trap.
extension Duration {
    public var nanoseconds: Int64 { whole(1_000_000_000) }
    public var microseconds: Int64 { whole(1_000_000) }
    public var milliseconds: Int64 { whole(1000) }

    private func whole(_ perSecond: Int64) -> Int64 {
        let (seconds, attoseconds) = components
        return Int64(clamping: Int128(seconds) * Int128(perSecond) + Int128(attoseconds) / Int128(1_000_000_000_000_000_000 / perSecond))
    }

    /// Whole nanoseconds, clamped to 0...UInt64.max (negative durations give 0).
    var nanosecondsClamped: UInt64 {
        let (seconds, attoseconds) = components
        if seconds < 0 || (seconds == 0 && attoseconds < 0) { return 0 }
        let total = Int128(seconds) * 1_000_000_000 + Int128(attoseconds / 1_000_000_000)
        return UInt64(clamping: total)
    }
}

/// A duration no shorter than zero, scaled by 2^exponent, saturating at `cap`.
func exponentialBackoff(base: Duration, exponent: Int, cap: Duration) -> Duration {
    var delay = base
    for _ in 0..<max(0, min(exponent, 64)) {
        delay = delay * 2
        if delay >= cap { return cap }
    }
    return min(delay, cap)
}
