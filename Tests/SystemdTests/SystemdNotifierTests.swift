import SystemdTesting
import XCTest
@testable import Systemd

import Glibc

/// sd_notify through a real datagram socket. XCTest runs these serially, which matters:
/// they set NOTIFY_SOCKET, which is process-global.
final class SystemdNotifierTests: XCTestCase {
    let notifier = SystemdNotifier()

    func testEachNotificationArrivesAsExactlyOneDatagram() throws {
        let listener = try NotifySocketListener()
        let results = listener.withNotifySocket {
            [
                notifier.ready(),
                notifier.status("3 devices: 2 in low power, 1 awake; 57 wakes"),
                notifier.watchdogPing(),
                notifier.reloading(monotonicUsec: 123_456_789),
                notifier.ready(),
                notifier.stopping(),
                notifier.extendTimeout(microseconds: 10_000_000),
                notifier.errno(16),
            ]
        }
        XCTAssertEqual(results, Array(repeating: .sent, count: 8))
        XCTAssertEqual(try listener.receiveQueued(), [
            "READY=1",
            "STATUS=3 devices: 2 in low power, 1 awake; 57 wakes",
            "WATCHDOG=1",
            "RELOADING=1\nMONOTONIC_USEC=123456789",
            "READY=1",
            "STOPPING=1",
            "EXTEND_TIMEOUT_USEC=10000000",
            "ERRNO=16",
        ])
    }

    func testGenericSendKeepsOrderAndFlattensNewlinesInValues() throws {
        let listener = try NotifySocketListener()
        let result = listener.withNotifySocket {
            notifier.send([("STATUS", "line one\nline two"), ("EXTEND_TIMEOUT_USEC", "5000000")])
        }
        XCTAssertEqual(result, .sent)
        XCTAssertEqual(try listener.receive(), "STATUS=line one line two\nEXTEND_TIMEOUT_USEC=5000000")
        XCTAssertNil(try listener.receive(timeoutMilliseconds: 50))
    }

    func testReloadingWithTheRealMonotonicClock() throws {
        let listener = try NotifySocketListener()
        let before = MonotonicClock.nowMicroseconds()
        let result = listener.withNotifySocket {
            notifier.reloading(monotonicUsec: MonotonicClock.nowMicroseconds())
        }
        let after = MonotonicClock.nowMicroseconds()
        XCTAssertEqual(result, .sent)
        let message = try XCTUnwrap(listener.receive())
        let lines = message.split(separator: "\n")
        XCTAssertEqual(lines.first, "RELOADING=1")
        XCTAssertEqual(lines.count, 2)
        XCTAssertTrue(lines[1].hasPrefix("MONOTONIC_USEC="))
        let usec = try XCTUnwrap(UInt64(lines[1].dropFirst("MONOTONIC_USEC=".count)))
        XCTAssertGreaterThanOrEqual(usec, before)
        XCTAssertLessThanOrEqual(usec, after)
    }

    func testWithoutNotifySocketTheResultSaysNotUnderSystemd() {
        let previous = getenv("NOTIFY_SOCKET").map { String(cString: $0) }
        unsetenv("NOTIFY_SOCKET")
        defer { if let previous { setenv("NOTIFY_SOCKET", previous, 1) } }
        XCTAssertEqual(notifier.ready(), .notUnderSystemd)
        XCTAssertEqual(notifier.status("idle"), .notUnderSystemd)
    }

    func testAMissingSocketIsAFailureWithItsErrno() throws {
        let listener = try NotifySocketListener()
        let missing = listener.path + ".missing"
        let previous = getenv("NOTIFY_SOCKET").map { String(cString: $0) }
        setenv("NOTIFY_SOCKET", missing, 1)
        defer {
            if let previous { setenv("NOTIFY_SOCKET", previous, 1) } else { unsetenv("NOTIFY_SOCKET") }
        }
        XCTAssertEqual(notifier.ready(), .failed(errno: ENOENT))
    }

    func testResultMapping() {
        XCTAssertEqual(NotifyResult(returnValue: 1), .sent)
        XCTAssertEqual(NotifyResult(returnValue: 0), .notUnderSystemd)
        XCTAssertEqual(NotifyResult(returnValue: -ECONNREFUSED), .failed(errno: ECONNREFUSED))
    }

    func testMessageText() {
        XCTAssertEqual(SystemdNotifier.message([("READY", "1")]), "READY=1")
        XCTAssertEqual(SystemdNotifier.message([("A", "x\r\ny"), ("B", "")]), "A=x y\nB=")
    }
}

/// sd_watchdog_enabled reads WATCHDOG_USEC and WATCHDOG_PID; these tests set them.
final class SystemdWatchdogTests: XCTestCase {
    private func withWatchdogEnvironment<T>(usec: String?, pid: String?, _ body: () -> T) -> T {
        let saved: [(String, String?)] = ["WATCHDOG_USEC", "WATCHDOG_PID"].map { name in
            (name, getenv(name).map { String(cString: $0) })
        }
        func apply(_ name: String, _ value: String?) {
            if let value { setenv(name, value, 1) } else { unsetenv(name) }
        }
        apply("WATCHDOG_USEC", usec)
        apply("WATCHDOG_PID", pid)
        defer { for (name, value) in saved { apply(name, value) } }
        return body()
    }

    func testEnabledForThisProcess() {
        let (state, ping) = withWatchdogEnvironment(usec: "30000000", pid: String(getpid())) {
            (SystemdWatchdog.state(), SystemdWatchdog.pingInterval())
        }
        XCTAssertEqual(state, .enabled(.seconds(30)))
        XCTAssertEqual(ping, .seconds(15))
    }

    func testEnabledWithoutPid() {
        let interval = withWatchdogEnvironment(usec: "2500000", pid: nil) { SystemdWatchdog.interval() }
        XCTAssertEqual(interval, .milliseconds(2500))
    }

    func testDisabledWhenUnsetOrMeantForAnotherProcess() {
        XCTAssertEqual(withWatchdogEnvironment(usec: nil, pid: nil) { SystemdWatchdog.state() }, .disabled)
        XCTAssertEqual(
            withWatchdogEnvironment(usec: "30000000", pid: String(getpid() + 1)) { SystemdWatchdog.state() },
            .disabled)
        XCTAssertNil(withWatchdogEnvironment(usec: nil, pid: nil) { SystemdWatchdog.pingInterval() })
    }

    func testMalformedValueIsInvalid() {
        let state = withWatchdogEnvironment(usec: "thirty", pid: nil) { SystemdWatchdog.state() }
        XCTAssertEqual(state, .invalid(errno: EINVAL))
        XCTAssertNil(withWatchdogEnvironment(usec: "thirty", pid: nil) { SystemdWatchdog.interval() })
    }
}

final class MonotonicClockTests: XCTestCase {
    func testMatchesClockMonotonicAndNeverGoesBack() {
        var reference = timespec()
        clock_gettime(CLOCK_MONOTONIC, &reference)
        let referenceUsec = UInt64(reference.tv_sec) * 1_000_000 + UInt64(reference.tv_nsec) / 1_000
        let first = MonotonicClock.nowMicroseconds()
        let second = MonotonicClock.nowMicroseconds()
        XCTAssertGreaterThanOrEqual(first, referenceUsec)
        XCTAssertLessThan(first - referenceUsec, 1_000_000, "same clock, read a moment later")
        XCTAssertGreaterThanOrEqual(second, first)
    }
}
