import Dispatch
import SystemPackage
import VFIO

/// Watches every managed device's eventfds (the wakeup eventfd and the kernel's removal
/// request) for the daemon: one epoll set holds them all, and one Dispatch read source on the
/// daemon's queue watches the set.
///
/// Why one source for all and not a read source per eventfd: with a source per eventfd every
/// wake costs its own Dispatch callout (the manager thread's epoll_wait, a push onto the queue,
/// the source's re-arm with epoll_ctl), and a storm of wakes, thousands of devices woken at once,
/// drains one callout at a time. Here a storm is taken in batches of up to 256 per epoll_wait,
/// in one callout (docs/BENCHMARKS.md measures both). Dispatch still runs the loop: the set's
/// descriptor is just one more readable file to it, and timers, signals and the control socket
/// keep their own sources on the same queue.
///
/// The watcher reads each ready eventfd itself (which resets it and clears its readiness,
/// whatever the handler does) and hands the handler the counter: the number of signals since
/// the last read. Confined to the daemon's queue: `@DaemonActor`.
@DaemonActor
final class EventFDWatcher {
    /// Names one watched eventfd; `unwatch` takes it back.
    struct Token: Hashable, Sendable {
        fileprivate let value: UInt64
    }

    private struct Member {
        enum Kind {
            /// Read on every readiness; the handler gets the counter.
            case eventfd(EventFD, (UInt64) -> Void)
            /// Readable once and for good (a pidfd of an exited process): leaves the set and
            /// calls the handler once. `owner` keeps the descriptor open until then.
            case exit(FileDescriptor, owner: AnyObject, () -> Void)
        }
        let kind: Kind
        var descriptor: FileDescriptor {
            switch kind {
            case .eventfd(let eventfd, _): eventfd.descriptor
            case .exit(let descriptor, _, _): descriptor
            }
        }
    }

    private let set: EpollSet
    private var source: OwnedSource?
    private var members: [UInt64: Member] = [:]
    private var nextToken: UInt64 = 1
    /// epoll_wait's output, reused by every callout.
    private let readyBuffer = OwnedBuffer<UInt64>(capacity: 256)
    private var ready: UnsafeMutableBufferPointer<UInt64> { readyBuffer.pointer }

    /// At most this many eventfds are handled in one callout; the rest stay ready and the
    /// source fires again, so a storm cannot hold off the queue's other sources (timers, the
    /// watchdog ping, control requests) for longer than one batch.
    nonisolated static let calloutLimit = 1024

    init() throws(Errno) {
        self.set = try EpollSet()
        let source = DispatchSource.makeReadSource(fileDescriptor: set.descriptor.rawValue, queue: DaemonActor.queue)
        source.setEventHandler { [weak self] in DaemonActor.assumeIsolated { self?.drain() } }
        // The set is closed only after Dispatch has stopped watching its descriptor.
        source.setCancelHandler { [set] in _ = set }
        source.activate()
        self.source = OwnedSource(source)
    }

    /// The number of eventfds watched now.
    var count: Int { members.count }

    /// Calls `handler` on the queue with the counter each time `eventfd` is signalled.
    func watch(_ eventfd: EventFD, _ handler: @escaping (UInt64) -> Void) throws(Errno) -> Token {
        let token = nextToken
        nextToken += 1
        try set.add(eventfd.descriptor, token: token)
        members[token] = Member(kind: .eventfd(eventfd, handler))
        return Token(value: token)
    }

    /// Calls `handler` on the queue once `descriptor` becomes readable, then stops watching
    /// it: for a pidfd, which is readable from its process's exit on. `owner` owns the
    /// descriptor and is kept alive while it is watched.
    func watchExit(_ descriptor: FileDescriptor, owner: AnyObject, _ handler: @escaping () -> Void) throws(Errno) -> Token {
        let token = nextToken
        nextToken += 1
        try set.add(descriptor, token: token)
        members[token] = Member(kind: .exit(descriptor, owner: owner, handler))
        return Token(value: token)
    }

    /// Stops watching; a signal already collected in a batch is not delivered afterwards.
    func unwatch(_ token: Token) {
        guard let member = members.removeValue(forKey: token.value) else { return }
        // Fails only if the descriptor is no longer in the set, which is what we want.
        try? set.remove(member.descriptor)
    }

    /// Stops the source; every member must have been unwatched (or the daemon is exiting).
    func cancel() {
        source?.cancel()
        source = nil
    }

    private func drain() {
        var handled = 0
        while handled < Self.calloutLimit {
            guard let count = try? set.ready(into: ready), count > 0 else { return }
            for index in 0..<count {
                // A handler may have unwatched a later member of this batch (its device closed).
                guard let member = members[ready[index]] else { continue }
                guard case .eventfd(let eventfd, let handler) = member.kind else {
                    if case .exit(_, _, let handler) = member.kind {
                        unwatch(Token(value: ready[index]))
                        handler()
                    }
                    continue
                }
                let signals: UInt64?
                do {
                    signals = try eventfd.read()
                } catch {
                    // An eventfd read fails only with EAGAIN, which read() turns into nil. Were it
                    // ever to fail otherwise, leave the set rather than spin on a ready descriptor.
                    unwatch(Token(value: ready[index]))
                    continue
                }
                guard let signals, signals > 0 else { continue }
                handler(signals)
            }
            handled += count
            if count < ready.count { return }
        }
    }
}
