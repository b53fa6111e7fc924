import Dispatch
import Foundation
import PowerDaemon
import PowerPolicy

/// A clock the test turns: time stands still until `advance(by:)`, which fires every timer
/// that falls due on the way, in deadline order, each on the daemon's queue. A test of "not
/// before the deadline" then needs no sleep: before the advance, nothing can have fired.
final class ManualClock: DaemonClock, @unchecked Sendable {
    private let lock = NSLock()
    private var current: MonotonicInstant
    private var timers: [Weak] = []

    private struct Weak { weak var timer: ManualTimer? }

    init(start: MonotonicInstant = MonotonicInstant(.seconds(10_000))) {
        current = start
    }

    func now() -> MonotonicInstant { lock.withLock { current } }

    func makeTimer(_ handler: @escaping @Sendable @DaemonActor () -> Void) -> any DaemonTimer {
        let timer = ManualTimer(clock: self, handler: handler)
        lock.withLock {
            timers.removeAll { $0.timer == nil }
            timers.append(Weak(timer: timer))
        }
        return timer
    }

    /// Moves time forward, firing what falls due. Call it from the test, never from the
    /// daemon's queue.
    func advance(by duration: Duration) {
        let target = now() + duration
        while let (timer, deadline) = nextDue(by: target) {
            lock.withLock { current = max(current, deadline) }
            timer.fire(at: deadline)
        }
        lock.withLock { current = max(current, target) }
    }

    /// The timers scheduled now, and when each fires.
    var scheduled: [MonotonicInstant] {
        lock.withLock { timers.compactMap { $0.timer?.deadlineLocked }.sorted() }
    }

    private func nextDue(by target: MonotonicInstant) -> (ManualTimer, MonotonicInstant)? {
        lock.withLock {
            timers.compactMap { entry in entry.timer.flatMap { timer in timer.deadlineLocked.map { (timer, $0) } } }
                .filter { $0.1 <= target }
                .min { $0.1 < $1.1 }
        }
    }

    fileprivate func withLock<T>(_ body: () -> T) -> T { lock.withLock(body) }
}

final class ManualTimer: DaemonTimer, @unchecked Sendable {
    private unowned let clock: ManualClock
    private let handler: @Sendable @DaemonActor () -> Void
    /// Guarded by the clock's lock.
    private var _deadline: MonotonicInstant?
    private var interval: Duration?

    init(clock: ManualClock, handler: @escaping @Sendable @DaemonActor () -> Void) {
        self.clock = clock
        self.handler = handler
    }

    var deadline: MonotonicInstant? { clock.withLock { _deadline } }
    /// The deadline, for the clock while it holds its lock.
    fileprivate var deadlineLocked: MonotonicInstant? { _deadline }

    func schedule(after delay: Duration, leeway: Duration) {
        let now = clock.now()
        clock.withLock {
            _deadline = now + delay
            interval = nil
        }
    }

    func schedule(every interval: Duration, first: Duration, leeway: Duration) {
        precondition(interval > .zero, "a repeating timer needs an interval")
        let now = clock.now()
        clock.withLock {
            _deadline = now + first
            self.interval = interval
        }
    }

    func cancel() { clock.withLock { _deadline = nil } }

    /// Runs the handler on the daemon's queue, unless it was rescheduled or cancelled meanwhile.
    fileprivate func fire(at deadline: MonotonicInstant) {
        DaemonActor.sync {
            let due: Bool = clock.withLock {
                guard _deadline == deadline else { return false }
                _deadline = interval.map { deadline + $0 }
                return true
            }
            if due { handler() }
        }
    }
}
