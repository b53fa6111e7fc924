import Foundation

/// A JSON value: what varlink carries as a call's and a reply's `parameters`.
///
/// Integers and fractions are kept apart so that counters and identifiers up to 2^63 survive a
/// round trip exactly (a `Double` is exact only up to 2^53); `==` compares numbers by value, so
/// `.integer(1) == .double(1)`.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.integer(a), .integer(b)): return a == b
        case let (.double(a), .double(b)): return a == b
        case let (.integer(a), .double(b)), let (.double(b), .integer(a)):
            return Double(exactly: a) == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)): return a == b
        default: return false
        }
    }
}

// MARK: Accessors

extension JSONValue {
    /// The string, or nil for any other kind of value.
    public var string: String? {
        if case let .string(s) = self { return s }
        return nil
    }

    public var bool: Bool? {
        if case let .bool(b) = self { return b }
        return nil
    }

    /// An integer, or a fraction with nothing after the point that fits in `Int64`.
    public var int64: Int64? {
        switch self {
        case let .integer(i): return i
        case let .double(d): return Int64(exactly: d)
        default: return nil
        }
    }

    /// `int64` as an `Int`.
    public var int: Int? { int64.flatMap { Int(exactly: $0) } }

    /// Any number as a `Double` (integers beyond 2^53 are rounded).
    public var double: Double? {
        switch self {
        case let .integer(i): return Double(i)
        case let .double(d): return d
        default: return nil
        }
    }

    public var array: [JSONValue]? {
        if case let .array(a) = self { return a }
        return nil
    }

    public var object: [String: JSONValue]? {
        if case let .object(o) = self { return o }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The member `key` of an object; nil when absent or when this is not an object.
    public subscript(key: String) -> JSONValue? {
        if case let .object(o) = self { return o[key] }
        return nil
    }

    /// The element at `index` of an array; nil when out of range or when this is not an array.
    public subscript(index: Int) -> JSONValue? {
        if case let .array(a) = self, a.indices.contains(index) { return a[index] }
        return nil
    }
}

// MARK: Literals

extension JSONValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
                     ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
                     ExpressibleByDictionaryLiteral {
    public init(nilLiteral: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

// MARK: Text

extension JSONValue {
    /// Parses one JSON text (RFC 8259, UTF-8) with Foundation's JSONDecoder, which keeps
    /// integers exact (all 64 bits) and refuses invalid UTF-8. Nesting deeper than `maxDepth`
    /// is refused too: a peer's `[[[[…` is bounded by the message size and the decoder's own
    /// limit, and then by ours.
    public init(parsing bytes: some Collection<UInt8>, maxDepth: Int = 64) throws(JSONParseError) {
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch {
            throw JSONParseError(reason: Self.reason(error))
        }
        guard value.depth <= maxDepth else {
            throw JSONParseError(reason: "nested deeper than \(maxDepth) levels")
        }
        self = value
    }

    /// The first key that appears twice in one object of a valid JSON text, at any depth, or
    /// nil. JSONDecoder keeps the last of the two silently, so `{"method": "a", "method": "b"}`
    /// would be a call of "b" that a reader of the message could take for "a": such a
    /// message is refused. Keys are compared decoded ("\u006dethod" is "method").
    public static func duplicateKey(in bytes: [UInt8]) -> String? {
        var objects: [Set<String>?] = []  // nil: an array
        var expectingKey = false
        var index = 0
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "{"):
                objects.append([])
                expectingKey = true
            case UInt8(ascii: "["):
                objects.append(nil)
                expectingKey = false
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = objects.popLast()
                expectingKey = false
            case UInt8(ascii: ","):
                expectingKey = objects.last.map { $0 != nil } ?? false
            case UInt8(ascii: "\""):
                var end = index + 1
                var escaped = false
                while end < bytes.count && bytes[end] != UInt8(ascii: "\"") {
                    if bytes[end] == UInt8(ascii: "\\") {
                        escaped = true
                        end += 1
                    }
                    end += 1
                }
                if expectingKey, end < bytes.count, objects.last != nil {
                    let token = bytes[index...end]
                    let key = escaped ? (try? JSONDecoder().decode(String.self, from: Data(token))) ?? ""
                        : String(decoding: token.dropFirst().dropLast(), as: UTF8.self)
                    if objects[objects.count - 1]!.insert(key).inserted == false { return key }
                }
                expectingKey = false
                index = end
            default:
                break
            }
            index += 1
        }
        return nil
    }

    public init(parsing text: String, maxDepth: Int = 64) throws(JSONParseError) {
        try self.init(parsing: Array(text.utf8), maxDepth: maxDepth)
    }

    /// Compact JSON text (object keys sorted, so the output is stable) as UTF-8 bytes, written
    /// by JSONEncoder. A raw NUL never appears: JSON escapes control characters.
    public var jsonBytes: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Only a non-finite double cannot be written; no parsed value holds one.
        return (try? Array(encoder.encode(self))) ?? Array("null".utf8)
    }

    /// Compact JSON text, object keys sorted.
    public var jsonString: String { String(decoding: jsonBytes, as: UTF8.self) }

    /// Levels of arrays and objects: 0 for a scalar.
    var depth: Int {
        switch self {
        case .array(let items): 1 + (items.lazy.map(\.depth).max() ?? 0)
        case .object(let members): 1 + (members.values.lazy.map(\.depth).max() ?? 0)
        default: 0
        }
    }

    private static func reason(_ error: any Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error {
            return context.underlyingError.map { "\(context.debugDescription) (\($0))" } ?? context.debugDescription
        }
        return "\(error)"
    }
}

extension JSONValue: CustomStringConvertible {
    public var description: String { jsonString }
}

// MARK: Codable

extension JSONValue: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let b = try? container.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? container.decode(Int64.self) {
            self = .integer(i)
        } else if let d = try? container.decode(Double.self) {
            self = .double(d)
        } else if let s = try? container.decode(String.self) {
            self = .string(s)
        } else if let a = try? container.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case let .bool(b): try container.encode(b)
        case let .integer(i): try container.encode(i)
        case let .double(d): try container.encode(d)
        case let .string(s): try container.encode(s)
        case let .array(a): try container.encode(a)
        case let .object(o): try container.encode(o)
        }
    }

    /// The JSON form of an `Encodable` value, as `JSONEncoder` writes it (dates as ISO 8601).
    public init(encoding value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let data = try encoder.encode(value)
        self = try JSONValue(parsing: Array(data))
    }

    /// Decodes a `Decodable` value from this JSON value (dates as ISO 8601).
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(T.self, from: Data(jsonBytes))
    }
}

/// Why a JSON text was refused, in the decoder's words.
public struct JSONParseError: Error, Equatable, CustomStringConvertible {
    public let reason: String

    public var description: String { "invalid JSON: \(reason)" }
}
