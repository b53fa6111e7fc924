import Foundation
import Varlink
import XCTest

final class JSONValueTests: XCTestCase {
    func testParsesEveryKindOfValue() throws {
        let value = try JSONValue(parsing: #" {"a": [1, -2.5, 1e3, true, false, null, "x\u00e9\n\ud83d\ude00"], "b": {}} "#)
        XCTAssertEqual(value, ["a": [1, -2.5, 1000, true, false, nil, "xé\n😀"], "b": [:]])
        XCTAssertEqual(value["a"]?[0], .integer(1))
        XCTAssertEqual(value["a"]?[1]?.double, -2.5)
        XCTAssertEqual(value["a"]?[2]?.int, 1000)
        XCTAssertEqual(value["a"]?[6]?.string, "xé\n😀")
        XCTAssertNil(value["missing"])
        XCTAssertNil(value["a"]?[99])
    }

    func testIntegersKeepSixtyFourBits() throws {
        let big = try JSONValue(parsing: "9223372036854775807")
        XCTAssertEqual(big, .integer(Int64.max))
        XCTAssertEqual(big.jsonString, "9223372036854775807")
        XCTAssertEqual(try JSONValue(parsing: "-0"), .integer(0))
    }

    func testRefusesWhatIsNotJSON() {
        let bad = ["", "{", "{\"a\" 1}", "01", "1.", "nul", "\"\u{1}\"", "\"\\x\"", "\"\\ud800\"",
                   "1 2", "NaN", "1e999"]
        for text in bad {
            XCTAssertThrowsError(try JSONValue(parsing: text), text)
        }
        XCTAssertThrowsError(try JSONValue(parsing: [0x22, 0xC3, 0x28, 0x22] as [UInt8]))  // invalid UTF-8
    }

    /// Foundation's decoder is lenient in two ways RFC 8259 leaves open; neither lets a peer
    /// make the daemon act on something ambiguous, so they are pinned here, not fought.
    func testFoundationsLeniencyIsKnown() throws {
        XCTAssertEqual(try JSONValue(parsing: "[1,]"), [1], "a trailing comma is accepted")
        XCTAssertEqual(try JSONValue(parsing: #"{"a":1,"a":2}"#), ["a": 1], "the first of duplicate names wins")
    }

    func testADuplicateKeyIsFoundAtAnyDepthAndOnlyWithinOneObject() {
        func duplicate(_ text: String) -> String? { JSONValue.duplicateKey(in: Array(text.utf8)) }
        XCTAssertEqual(duplicate(#"{"method": "a", "method": "b"}"#), "method")
        XCTAssertEqual(duplicate(#"{"method": "a", "\u006dethod": "b"}"#), "method")
        XCTAssertEqual(duplicate(#"{"p": {"x": 1, "y": [{"z": 1, "z": 2}]}}"#), "z")
        XCTAssertNil(duplicate(#"{"a": {"x": 1}, "b": {"x": 1}, "c": ["a", "a"], "d": "a\"a"}"#))
        XCTAssertNil(duplicate(#"{"a\"": 1, "a": 2}"#))
    }

    func testDepthIsBounded() throws {
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        XCTAssertThrowsError(try JSONValue(parsing: deep)) {
            XCTAssertTrue(($0 as? JSONParseError)?.reason.contains("nested") == true)
        }
        let fine = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        XCTAssertNoThrow(try JSONValue(parsing: fine))
    }

    func testWritesCompactSortedEscapedText() {
        let value: JSONValue = ["b": [1, 2.5, nil], "a": "q\"\\\n\u{0}", "c": true]
        XCTAssertEqual(value.jsonString, #"{"a":"q\"\\\n\u0000","b":[1,2.5,null],"c":true}"#)
        // No raw NUL can appear in a message: it would end the frame.
        XCTAssertFalse(value.jsonBytes.contains(0))
    }

    func testRoundTripsThroughText() throws {
        let value: JSONValue = ["list": [1, 2, 3], "nested": ["deep": ["x": "y"]], "f": 0.1, "n": -42]
        XCTAssertEqual(try JSONValue(parsing: value.jsonBytes), value)
    }

    func testCodableConversion() throws {
        struct Device: Codable, Equatable {
            var address: String
            var wakes: UInt64
            var armed: Bool
            var lastError: String?
        }
        let device = Device(address: "0000:01:00.0", wakes: 1 << 60, armed: true, lastError: nil)
        let value = try JSONValue(encoding: device)
        XCTAssertEqual(value["address"], "0000:01:00.0")
        XCTAssertEqual(value["wakes"]?.int64, 1 << 60)
        XCTAssertEqual(try value.decode(Device.self), device)
        // JSONValue nests inside Codable types.
        struct Envelope: Codable, Equatable { var payload: JSONValue }
        let envelope = Envelope(payload: ["k": [1, "two", nil]])
        let data = try JSONEncoder().encode(envelope)
        XCTAssertEqual(try JSONDecoder().decode(Envelope.self, from: data), envelope)
    }

    func testNumbersCompareByValue() {
        XCTAssertEqual(JSONValue.integer(3), .double(3))
        XCTAssertNotEqual(JSONValue.integer(3), .double(3.5))
        XCTAssertEqual(JSONValue.double(3).int, 3)
        XCTAssertNil(JSONValue.double(3.5).int)
    }
}
