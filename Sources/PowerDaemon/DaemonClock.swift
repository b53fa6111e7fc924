import Dispatch
import PowerPolicy
import Systemd

/// The daemon's time: what time it is, and timers that run on the daemon's queue (as
/// `DaemonActor`). It is the one seam between the daemon's decisions and the clock: the
/// daemon reads CLOCK_MONOTONIC and Dispatch's timers (`SystemMonotonicClock`), tests turn a
/// manual clock instead of sleeping (in the spirit of swift-nio's EmbeddedEventLoop).
public protocol DaemonClock: Sendable {
    /// CLOCK_MONOTONIC, so instants match systemd's MONOTONIC_USEC.
    func now() -> MonotonicInstant
    /// A timer whose handler runs on the daemon's queue; it waits, unscheduled, until scheduled.
    @DaemonActor
    func makeTimer(_ handler: @escaping @Sendable @DaemonActor () -> Void) -> any DaemonTimer
    /// Runs `body` on the daemon's queue once, `delay` from now; nothing to cancel.
    @DaemonActor
    func after(_ delay: Duration, _ body: @escaping @Sendable @DaemonActor () -> Void)
}

/// One timer. Scheduling again replaces the deadline; a timer that is released is cancelled.
/// Used on the daemon's queue only (it is held and scheduled by `@DaemonActor` code).
public protocol DaemonTimer: AnyObject {
    /// Fires once, `delay` from now (`leeway` lets the system batch wake-ups).
    func schedule(after delay: Duration, leeway: Duration)
    /// Fires `first` from now, then every `interval`.
    func schedule(every interval: Duration, first: Duration, leeway: Duration)
    /// Unscheduled: it fires no more until scheduled again.
    func cancel()
}

extension DaemonClock {
    /// By default a timer of the clock's own, held until it has fired.
    @DaemonActor
    public func after(_ delay: Duration, _ body: @escaping @Sendable @DaemonActor () -> Void) {
        let holder = TimerHolder()
        let timer = makeTimer {
            holder.timer = nil  // the timer's own handler lets go of it
            body()
        }
        holder.timer = timer
        timer.schedule(after: delay, leeway: .milliseconds(10))
    }
}

/// Keeps a fire-and-forget timer alive until it has fired.
@DaemonActor
private final class TimerHolder {
    var timer: (any DaemonTimer)?
}

/// CLOCK_MONOTONIC, as systemd reads it, and Dispatch's timers.
public struct SystemMonotonicClock: DaemonClock {
    public init() {}

    public func now() -> MonotonicInstant {
        MonotonicInstant(nanoseconds: MonotonicClock.nowMicroseconds() * 1000)
    }

    @DaemonActor
    public func makeTimer(_ handler: @escaping @Sendable @DaemonActor () -> Void) -> any DaemonTimer {
        DispatchDaemonTimer(handler)
    }

    /// Dispatch's own one-shot: no timer source for what needs no cancelling.
    @DaemonActor
    public func after(_ delay: Duration, _ body: @escaping @Sendable @DaemonActor () -> Void) {
        DaemonActor.queue.asyncAfter(deadline: .now() + .nanoseconds(Int(clamping: delay.nanoseconds))) {
            DaemonActor.assumeIsolated(body)
        }
    }
}

/// A Dispatch timer source, made once and rescheduled: a device's re-arm should not cost a
/// new kernel timer registration.
final class DispatchDaemonTimer: DaemonTimer {
    private let source: any DispatchSourceTimer

    init(_ handler: @escaping @Sendable @DaemonActor () -> Void) {
        source = DispatchSource.makeTimerSource(queue: DaemonActor.queue)
        source.setEventHandler { DaemonActor.assumeIsolated(handler) }
        source.activate()
    }

    deinit { source.cancel() }

    func schedule(after delay: Duration, leeway: Duration) {
        source.schedule(deadline: .now() + .nanoseconds(Int(clamping: delay.nanoseconds)),
                        leeway: .nanoseconds(Int(clamping: leeway.nanoseconds)))
    }

    func schedule(every interval: Duration, first: Duration, leeway: Duration) {
        source.schedule(deadline: .now() + .nanoseconds(Int(clamping: first.nanoseconds)),
                        repeating: .nanoseconds(Int(clamping: interval.nanoseconds)),
                        leeway: .nanoseconds(Int(clamping: leeway.nanoseconds)))
    }

    func cancel() { source.schedule(deadline: .distantFuture) }
}
