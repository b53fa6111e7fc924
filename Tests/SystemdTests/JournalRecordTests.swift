import Logging
import XCTest
@testable import Systemd

final class JournalRecordTests: XCTestCase {
    func testPriorityMapping() {
        let expected: [(Logger.Level, Int)] = [
            (.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
        ]
        for (level, priority) in expected {
            XCTAssertEqual(JournalRecord.priority(for: level), priority, "\(level)")
        }
    }

    func testFieldsOfOneRecordInOrder() {
        let fields = JournalRecord.fields(
            level: .warning,
            message: "0000:01:00.0: arm failed: Device or resource busy",
            metadata: [
                "VFIO_DEVICE": "0000:01:00.0",
                "ERRNO": "16",
                "MESSAGE_ID": "8387996d5f3942dc995eec09ee2d7b54",
            ],
            identifier: "vfio-powerd",
            file: "PowerDaemon/DeviceController.swift",
            line: 212,
            function: "arm()")
        XCTAssertEqual(fields.map(\.0), [
            "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
            "ERRNO", "MESSAGE_ID", "VFIO_DEVICE",
        ])
        XCTAssertEqual(fields.map(\.1), [
            "0000:01:00.0: arm failed: Device or resource busy", "4", "vfio-powerd",
            "PowerDaemon/DeviceController.swift", "212", "arm()",
            "16", "8387996d5f3942dc995eec09ee2d7b54", "0000:01:00.0",
        ])
    }

    func testValidNamesAreKept() {
        for name in ["VFIO_DEVICE", "ERRNO", "MESSAGE_ID", "A", "X1_2", "VFIO_LOW_POWER_USEC"] {
            XCTAssertEqual(JournalRecord.fieldName(forMetadataKey: name), name)
        }
    }

    func testOtherKeysAreSanitizedNotDropped() {
        let cases: [(String, String)] = [
            ("error.message", "ERROR_MESSAGE"),
            ("vfio-device", "VFIO_DEVICE"),
            ("rearmDelay", "REARMDELAY"),
            ("_pid", "X__PID"),
            ("1st", "X_1ST"),
            ("", "X_"),
            ("gerät", "GER_T"),
            ("message", "X_MESSAGE"),
            ("PRIORITY", "X_PRIORITY"),
            ("code_file", "X_CODE_FILE"),
            ("syslog.identifier", "X_SYSLOG_IDENTIFIER"),
        ]
        for (key, expected) in cases {
            XCTAssertEqual(JournalRecord.fieldName(forMetadataKey: key), expected, "key \"\(key)\"")
        }
    }

    func testLongNamesAreCutTo64() {
        let name = JournalRecord.fieldName(forMetadataKey: String(repeating: "a", count: 100))
        XCTAssertEqual(name, String(repeating: "A", count: 64))
    }

    func testMetadataValuesAsText() {
        let fields = JournalRecord.fields(
            level: .info, message: "m",
            metadata: [
                "count": .stringConvertible(57),
                "list": .array(["a", "b"]),
                "map": .dictionary(["z": "1", "a": .array(["x"])]),
                "multi": "line one\nline two",
            ],
            identifier: "id", file: "f", line: 1, function: "g")
        let extra = Dictionary(uniqueKeysWithValues: fields.dropFirst(6).map { ($0.0, $0.1) })
        XCTAssertEqual(extra, [
            "COUNT": "57", "LIST": "[a, b]", "MAP": "[a: [x], z: 1]", "MULTI": "line one\nline two",
        ])
    }

    func testKeysThatSanitizeToOneNameKeepBothValues() {
        let fields = JournalRecord.fields(
            level: .info, message: "m", metadata: ["a.b": "2", "a-b": "1"],
            identifier: "id", file: "f", line: 1, function: "g")
        XCTAssertEqual(fields.dropFirst(6).map { "\($0.0)=\($0.1)" }, ["A_B=1", "A_B=2"])
    }

    struct Busy: Error, CustomStringConvertible { var description: String { "device busy" } }

    func testMergeOrderHandlerThenProviderThenMessageThenError() {
        let provider = Logger.MetadataProvider { ["VFIO_DEVICE": "from-provider", "REQUEST": "7"] }
        let merged = JournalRecord.mergedMetadata(
            handler: ["VFIO_DEVICE": "from-handler", "HOST": "lab"],
            provider: provider,
            event: ["REQUEST": "8"],
            error: Busy())
        XCTAssertEqual(merged["VFIO_DEVICE"], "from-provider")
        XCTAssertEqual(merged["HOST"], "lab")
        XCTAssertEqual(merged["REQUEST"], "8")
        XCTAssertEqual(merged["error.message"], "device busy")
        XCTAssertEqual(merged["error.type"], "SystemdTests.JournalRecordTests.Busy")
    }

    func testHandlerIsAValueType() {
        var first = JournalLogHandler(identifier: "one", logLevel: .debug)
        first[metadataKey: "K"] = "1"
        var second = first
        second.logLevel = .error
        second[metadataKey: "K"] = "2"
        XCTAssertEqual(first.logLevel, .debug)
        XCTAssertEqual(first[metadataKey: "K"], "1")
        XCTAssertEqual(second[metadataKey: "K"], "2")
    }
}
