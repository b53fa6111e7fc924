import Logging
import Synchronization
import XCTest
@testable import Systemd

import Glibc

final class StderrLogHandlerTests: XCTestCase {
    let plain = StderrLineFormat(identifier: "vfio-powerd", timestamps: false, syslogPriorityPrefix: false)

    func testWarningWithMetadataSortedAndMessageIDHidden() {
        let line = plain.line(
            level: .warning,
            message: "0000:01:00.0: arm failed: Device or resource busy",
            metadata: [
                "VFIO_DEVICE": "0000:01:00.0", "ERRNO": "16",
                "MESSAGE_ID": "8387996d5f3942dc995eec09ee2d7b54",
            ])
        XCTAssertEqual(
            line,
            "vfio-powerd: warning: 0000:01:00.0: arm failed: Device or resource busy [ERRNO=16 VFIO_DEVICE=0000:01:00.0]\n")
    }

    func testInfoHasNoLevelWordAndNoBracketsWithoutMetadata() {
        XCTAssertEqual(plain.line(level: .info, message: "ready: 2 devices", metadata: [:]), "vfio-powerd: ready: 2 devices\n")
        XCTAssertEqual(plain.line(level: .critical, message: "x", metadata: ["MESSAGE_ID": "0"]), "vfio-powerd: critical: x\n")
    }

    func testOneRecordIsOneLineAndAwkwardValuesAreQuoted() {
        let line = plain.line(
            level: .error, message: "config rejected:\nline 3: bad key",
            metadata: ["FILE": "/etc/vfio powerd/x.conf", "EMPTY": "", "Q": "say \"hi\"", "NL": "a\nb", "EQ": "a=b"])
        XCTAssertEqual(
            line,
            "vfio-powerd: error: config rejected:\\nline 3: bad key "
                + "[EMPTY=\"\" EQ=\"a=b\" FILE=\"/etc/vfio powerd/x.conf\" NL=a\\nb Q=\"say \\\"hi\\\"\"]\n")
        XCTAssertEqual(line.filter { $0 == "\n" }.count, 1)
    }

    func testSyslogPrefixForTheJournalStream() {
        let journalStream = StderrLineFormat(identifier: "vfio-powerd", timestamps: false, syslogPriorityPrefix: true)
        XCTAssertEqual(journalStream.line(level: .notice, message: "reloaded", metadata: [:]), "<5>vfio-powerd: notice: reloaded\n")
        XCTAssertEqual(journalStream.line(level: .debug, message: "d", metadata: [:]), "<7>vfio-powerd: debug: d\n")
    }

    func testTimestamp() {
        // 2026-11-22 10:04:31.512 UTC
        let time = timespec(tv_sec: 1_795_341_871, tv_nsec: 512_999_999)
        XCTAssertEqual(StderrLineFormat.timestamp(time, utc: true), "2026-11-22 10:04:31.512")
        XCTAssertEqual(StderrLineFormat.timestamp(timespec(tv_sec: 0, tv_nsec: 7_000_000), utc: true), "1970-01-01 00:00:00.007")
    }

    func testThroughALoggerWithInjectedWriterAndClock() {
        let lines = Mutex<[String]>([])
        let fixed = timespec(tv_sec: 1_795_341_871, tv_nsec: 0)
        let format = StderrLineFormat(identifier: "vfio-powerd", timestamps: true, syslogPriorityPrefix: false)
        let handler = StderrLogHandler(
            format: format, logLevel: .info,
            writer: { line in lines.withLock { $0.append(line) } },
            clock: { fixed })
        var logger = Logger(label: "test") { _ in handler }
        logger[metadataKey: "VFIO_DEVICE"] = "0000:01:00.0"
        logger.debug("not shown: below the level")
        logger.info("armed", metadata: ["VFIO_MODE": "oneshot"])
        logger.error("wake failed", error: CocoaLikeError())

        let expectedTime = StderrLineFormat.timestamp(fixed)
        XCTAssertEqual(lines.withLock { $0 }, [
            "\(expectedTime) vfio-powerd: armed [VFIO_DEVICE=0000:01:00.0 VFIO_MODE=oneshot]\n",
            "\(expectedTime) vfio-powerd: error: wake failed [VFIO_DEVICE=0000:01:00.0 "
                + "error.message=\"I/O error\" error.type=SystemdTests.StderrLogHandlerTests.CocoaLikeError]\n",
        ])
    }

    struct CocoaLikeError: Error, CustomStringConvertible { var description: String { "I/O error" } }
}
