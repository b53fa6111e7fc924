import Dispatch
@testable import PowerDaemon
import SystemPackage
import VFIO
import XCTest

/// The one Dispatch source over every device's eventfds: batches, counts, unwatching.
final class EventFDWatcherTests: XCTestCase {
    /// Collects (member, counter) pairs on the queue.
    private final class Deliveries: @unchecked Sendable {
        var seen: [(Int, UInt64)] = []
        var callouts: [Int] = []
    }

    private func eventually(_ condition: @DaemonActor () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if DaemonActor.sync(condition) { return true }
            usleep(2_000)
        }
        return false
    }

    /// Waits until the watcher has gone round once more: a fresh eventfd is signalled and
    /// waited for. Whatever was still ready before (a member delivered twice, one not yet
    /// unwatched) is ready at that epoll_wait too, so it has been handled when this returns:
    /// "nothing more came" is then a fact, not a guess after a fixed sleep.
    private func settle(_ watcher: EventFDWatcher) throws {
        let sentinel = try EventFD()
        let arrived = Deliveries()
        let token = try DaemonActor.sync { try watcher.watch(sentinel) { arrived.seen.append((-1, $0)) } }
        try sentinel.signal()
        XCTAssertTrue(eventually { !arrived.seen.isEmpty }, "the watcher went round once more")
        DaemonActor.sync { watcher.unwatch(token) }
    }

    func testEveryEventfdOfAStormIsDeliveredOnceWithItsCounter() throws {
        // More members than one callout takes (calloutLimit), so the source must fire again.
        let count = EventFDWatcher.calloutLimit + 300
        let eventfds = try (0..<count).map { _ in try EventFD() }
        let deliveries = Deliveries()
        let watcher = try DaemonActor.sync {
            let watcher = try EventFDWatcher()
            for (index, eventfd) in eventfds.enumerated() {
                _ = try watcher.watch(eventfd) { deliveries.seen.append((index, $0)) }
            }
            return watcher
        }
        // Signal all of them while the queue is busy, so they are ready together.
        DaemonActor.sync {
            for (index, eventfd) in eventfds.enumerated() { try? eventfd.signal(index % 3 == 0 ? 2 : 1) }
        }
        XCTAssertTrue(eventually { deliveries.seen.count >= count }, "delivered \(deliveries.seen.count) of \(count)")
        try settle(watcher)
        DaemonActor.sync {
            XCTAssertEqual(deliveries.seen.count, count, "each signalled eventfd once")
            XCTAssertEqual(Set(deliveries.seen.map(\.0)).count, count)
            for (index, signals) in deliveries.seen {
                XCTAssertEqual(signals, index % 3 == 0 ? 2 : 1, "the counter of member \(index)")
            }
            XCTAssertEqual(watcher.count, count)
        }
        // The watcher read and reset every counter.
        for eventfd in eventfds { XCTAssertNil(try eventfd.read()) }
        DaemonActor.sync { watcher.cancel() }
    }

    func testAnUnwatchedEventfdIsNotDeliveredEvenFromTheSameBatch() throws {
        let (first, second) = (try EventFD(), try EventFD())
        let deliveries = Deliveries()
        let watcher = try DaemonActor.sync { try EventFDWatcher() }
        DaemonActor.sync {
            var secondToken: EventFDWatcher.Token?
            // Whichever of the two comes first in the batch unwatches the other.
            let firstToken = try? watcher.watch(first) { _ in
                deliveries.seen.append((1, 0))
                secondToken.map(watcher.unwatch)
            }
            secondToken = try? watcher.watch(second) { _ in
                deliveries.seen.append((2, 0))
                firstToken.map(watcher.unwatch)
            }
            try? first.signal()
            try? second.signal()
        }
        XCTAssertTrue(eventually { !deliveries.seen.isEmpty })
        try settle(watcher)
        let survivor = try DaemonActor.sync {
            XCTAssertEqual(deliveries.seen.count, 1, "the other member left the set before its turn")
            XCTAssertEqual(watcher.count, 1)
            return try XCTUnwrap(deliveries.seen.first?.0)
        }
        // Out of the set: signalling both again delivers only the member still watched.
        try first.signal()
        try second.signal()
        XCTAssertTrue(eventually { deliveries.seen.count == 2 })
        try settle(watcher)
        DaemonActor.sync { XCTAssertEqual(deliveries.seen.map(\.0), [survivor, survivor]) }
    }

    func testTheDescriptorClosesWhenUnwatchedAndReleased() throws {
        let watcher = try DaemonActor.sync { try EventFDWatcher() }
        var eventfd: EventFD? = try EventFD()
        let fd = eventfd!.descriptor.rawValue
        let token = try DaemonActor.sync { try watcher.watch(eventfd!) { _ in } }
        eventfd = nil
        XCTAssertNotEqual(fcntl(fd, F_GETFD), -1, "the watcher keeps a watched eventfd open")
        DaemonActor.sync { watcher.unwatch(token) }
        XCTAssertEqual(fcntl(fd, F_GETFD), -1, "closed once unwatched and released")
        XCTAssertEqual(errno, EBADF)
    }
}
