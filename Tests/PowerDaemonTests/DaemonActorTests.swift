import Dispatch
import PowerDaemon
import XCTest

/// The daemon's actor is its queue: code that awaits it runs there (its executor), and code
/// Dispatch runs there enters it synchronously.
final class DaemonActorTests: XCTestCase {
    private static let marker = DispatchSpecificKey<Int>()

    override class func setUp() {
        super.setUp()
        DaemonActor.queue.setSpecific(key: marker, value: 1)
    }

    @DaemonActor
    private static func isOnTheDaemonsQueue() -> Bool {
        DispatchQueue.getSpecific(key: marker) == 1
    }

    func testAnAwaitOfTheActorRunsOnTheDaemonsQueue() async {
        let onQueue = await Self.isOnTheDaemonsQueue()
        XCTAssertTrue(onQueue)
    }

    func testDispatchBlocksOnTheQueueEnterTheActorSynchronously() {
        let entered = DispatchSemaphore(value: 0)
        DaemonActor.queue.async {
            let onQueue = DaemonActor.assumeIsolated { Self.isOnTheDaemonsQueue() }
            if onQueue { entered.signal() }
        }
        XCTAssertEqual(entered.wait(timeout: .now() + 5), .success)
        XCTAssertTrue(DaemonActor.sync { Self.isOnTheDaemonsQueue() })
    }
}
