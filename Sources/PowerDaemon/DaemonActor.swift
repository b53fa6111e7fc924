import Dispatch

/// The daemon's one serial Dispatch queue, as a global actor: `Manager`, its
/// `DeviceController`s, the `EventFDWatcher`, the `OpenWatcher`, the `ControlService` and the
/// clock's timers are `@DaemonActor`, so the compiler checks that their state is touched on
/// that queue only (what `dispatchPrecondition` calls used to check at run time).
///
/// Everything still arrives through Dispatch, as before: eventfds, inotify, timers, signals
/// and the control socket are Dispatch sources on `queue`, and the devices' queues hand their
/// results back with `queue.async`. Each such handler enters the actor with the synchronous
/// `assumeIsolated`: no task and no hop, so a wake is handled in the same callout that read it
/// (the benchmarks measure wake → re-arm). Tests, benchmarks and `main` reach it off the queue
/// with `sync`.
///
/// One queue for the process: every `Manager` made in one process shares it (the tests make
/// one after another; none blocks it).
@globalActor
public actor DaemonActor {
    public static let shared = DaemonActor()

    /// The daemon's queue. Dispatch sources whose handlers enter the actor are made on it.
    public static let queue = DispatchQueue(label: "vfio-powerd")

    private static let executor = DaemonQueueExecutor(queue: queue)

    public static var sharedUnownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    public nonisolated var unownedExecutor: UnownedSerialExecutor { Self.sharedUnownedExecutor }

    /// Runs `operation` as the actor, synchronously, from code that Dispatch runs on `queue`
    /// (a source's handler, a `queue.async` block); stops the daemon if called anywhere else.
    ///
    /// Written as the standard library writes `MainActor.assumeIsolated`: once the queue is
    /// checked, the closure is called as if it were not isolated. Its isolation is a
    /// compile-time attribute only (a synchronous `@DaemonActor` function has the same calling
    /// convention as a plain one), so the cast changes nothing at run time; it is what lets
    /// nonisolated code call it. `withoutActuallyEscaping` lets the non-escaping closure be
    /// cast. No runtime executor check is needed: the queue check is the whole of it.
    public static func assumeIsolated<T: Sendable>(_ operation: @DaemonActor () throws -> T) rethrows -> T {
        dispatchPrecondition(condition: .onQueue(queue))
        typealias Unisolated = () throws -> T
        return try withoutActuallyEscaping(operation) { operation in
            try unsafeBitCast(operation, to: Unisolated.self)()
        }
    }

    /// Runs `operation` as the actor on `queue` and waits for it: for tests, benchmarks and
    /// callers that are not on the queue (on the queue it would deadlock, and stops instead).
    public static func sync<T: Sendable>(_ operation: @DaemonActor () throws -> T) rethrows -> T {
        dispatchPrecondition(condition: .notOnQueue(queue))
        return try queue.sync { try assumeIsolated(operation) }
    }
}

/// The executor of `DaemonActor`: its jobs run on the daemon's queue. (Linux's Dispatch has
/// no `DispatchSerialQueue` to serve as one.) Jobs come only from code that awaits the actor;
/// the daemon itself enters through `assumeIsolated`.
final class DaemonQueueExecutor: SerialExecutor {
    let queue: DispatchQueue

    init(queue: DispatchQueue) { self.queue = queue }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedSerialExecutor()) }
    }

    func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// The runtime's check that code runs as the actor, where no task says so: code that
    /// Dispatch runs on the queue is the actor's.
    func checkIsolated() {
        dispatchPrecondition(condition: .onQueue(queue))
    }
}
