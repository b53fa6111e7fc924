import SystemdTesting
import XCTest
@testable import Systemd

import Glibc

final class JournalDetectionTests: XCTestCase {
    func testJournalIsAvailableOnlyWhenThePathIsASocket() throws {
        let listener = try NotifySocketListener()  // any bound AF_UNIX socket will do
        XCTAssertTrue(JournalDetection.isJournalAvailable(socketPath: listener.path))
        XCTAssertFalse(JournalDetection.isJournalAvailable(socketPath: listener.path + ".missing"))

        let regular = listener.path + ".file"
        let fd = open(regular, O_CREAT | O_WRONLY, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        close(fd)
        defer { unlink(regular) }
        XCTAssertFalse(JournalDetection.isJournalAvailable(socketPath: regular))
    }

    func testParsesJournalStream() {
        XCTAssertEqual(JournalDetection.parseJournalStream("8:12345"), FileIdentity(device: 8, inode: 12345))
        XCTAssertEqual(
            JournalDetection.parseJournalStream("0:18446744073709551615"),
            FileIdentity(device: 0, inode: UInt64.max))
        for bad in ["", "8", "8:", ":1", "8:1:2", "x:1", "8:-1", " 8:1", "8:1 ", "8:18446744073709551616", "٨:1"] {
            XCTAssertNil(JournalDetection.parseJournalStream(bad), "\"\(bad)\"")
        }
    }

    func testStderrIsJournalWhenTheIdentityMatches() throws {
        let stream = FileIdentity(device: 26, inode: 4_242)
        XCTAssertTrue(JournalDetection.stderrIsJournal(journalStream: "26:4242", stderr: stream))
        XCTAssertFalse(JournalDetection.stderrIsJournal(journalStream: "26:4243", stderr: stream))
        XCTAssertFalse(JournalDetection.stderrIsJournal(journalStream: "27:4242", stderr: stream))
        XCTAssertFalse(JournalDetection.stderrIsJournal(journalStream: nil, stderr: stream))
        XCTAssertFalse(JournalDetection.stderrIsJournal(journalStream: "garbage", stderr: stream))
        XCTAssertFalse(JournalDetection.stderrIsJournal(journalStream: "26:4242", stderr: nil))
    }

    func testFileIdentityComesFromFstat() throws {
        let listener = try NotifySocketListener()
        let path = listener.path + ".id"
        let fd = open(path, O_CREAT | O_RDWR, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd); unlink(path) }
        var info = stat()
        XCTAssertEqual(stat(path, &info), 0)
        let identity = try XCTUnwrap(FileIdentity.of(fileDescriptor: fd))
        XCTAssertEqual(identity, FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino)))
        // What systemd would put in JOURNAL_STREAM for this file.
        XCTAssertTrue(JournalDetection.stderrIsJournal(
            journalStream: "\(info.st_dev):\(info.st_ino)", stderr: identity))
        XCTAssertNil(FileIdentity.of(fileDescriptor: -1))
    }

    func testDestinationDecisions() {
        XCTAssertEqual(
            SystemdLogging.destination(target: .auto, journalAvailable: true, stderrIsJournal: true), .journal)
        XCTAssertEqual(
            SystemdLogging.destination(target: .auto, journalAvailable: true, stderrIsJournal: false), .journal)
        XCTAssertEqual(
            SystemdLogging.destination(target: .auto, journalAvailable: false, stderrIsJournal: false),
            .stderr(timestamps: true, syslogPriorityPrefix: false))
        XCTAssertEqual(
            SystemdLogging.destination(target: .auto, journalAvailable: false, stderrIsJournal: true),
            .stderr(timestamps: false, syslogPriorityPrefix: true))
        XCTAssertEqual(
            SystemdLogging.destination(target: .stderr, journalAvailable: true, stderrIsJournal: true),
            .stderr(timestamps: false, syslogPriorityPrefix: true))
        XCTAssertEqual(
            SystemdLogging.destination(target: .stderr, journalAvailable: true, stderrIsJournal: false),
            .stderr(timestamps: true, syslogPriorityPrefix: false))
        XCTAssertEqual(
            SystemdLogging.destination(target: .journal, journalAvailable: false, stderrIsJournal: false),
            .journal)
    }

    func testDestinationWithAnInjectedSocketPath() throws {
        let listener = try NotifySocketListener()
        XCTAssertEqual(SystemdLogging.destination(target: .auto, socketPath: listener.path), .journal)
        guard case .stderr = SystemdLogging.destination(target: .auto, socketPath: listener.path + ".missing")
        else { return XCTFail("expected stderr without a journal socket") }
    }

    func testMakeHandlerPicksTheType() {
        XCTAssertTrue(SystemdLogging.makeHandler(destination: .journal) is JournalLogHandler)
        let stderr = SystemdLogging.makeHandler(
            destination: .stderr(timestamps: false, syslogPriorityPrefix: true), identifier: "x", logLevel: .debug)
        let handler = try? XCTUnwrap(stderr as? StderrLogHandler)
        XCTAssertEqual(handler?.format.identifier, "x")
        XCTAssertEqual(handler?.format.timestamps, false)
        XCTAssertEqual(handler?.format.syslogPriorityPrefix, true)
        XCTAssertEqual(handler?.logLevel, .debug)
    }
}
