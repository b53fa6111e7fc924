import Logging

/// Builds the fields of one journal entry from a swift-log event: a pure function, so what
/// reaches the journal is testable without a journal.
public enum JournalRecord {
    /// Fields the handler sets itself. A metadata key that would collide with one of them is
    /// renamed (see ``fieldName(forMetadataKey:)``) so a stray `message` metadata entry can
    /// never replace the entry's MESSAGE.
    public static let handlerFields: Set<String> = [
        "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
    ]

    /// journald's limit on a field name's length.
    public static let maximumFieldNameLength = 64

    /// The syslog priority for a swift-log level (`PRIORITY=`): 7 debug ... 2 critical.
    public static func priority(for level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// The fields of one entry, in order: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE,
    /// CODE_LINE, CODE_FUNC, then one field per metadata entry, sorted by field name.
    ///
    /// Values are sent as they are, newlines included (libsystemd uses the binary-safe form
    /// for them). A `MESSAGE_ID` metadata entry becomes the entry's MESSAGE_ID.
    ///
    /// - Parameters:
    ///   - metadata: the merged metadata (handler, provider, per-message).
    ///   - file: the source file, as swift-log passes it (`#fileID`).
    public static func fields(
        level: Logger.Level,
        message: String,
        metadata: Logger.Metadata,
        identifier: String,
        file: String,
        line: UInt,
        function: String
    ) -> [(String, String)] {
        var fields: [(String, String)] = [
            ("MESSAGE", message),
            ("PRIORITY", String(priority(for: level))),
            ("SYSLOG_IDENTIFIER", identifier),
            ("CODE_FILE", file),
            ("CODE_LINE", String(line)),
            ("CODE_FUNC", function),
        ]
        let extra = metadata
            .map { (fieldName(forMetadataKey: $0.key), stringValue($0.value)) }
            // Two keys may map to one name ("a.b", "a-b"): the journal keeps both values;
            // sort on the value too so the order does not depend on dictionary order.
            .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        fields.append(contentsOf: extra)
        return fields
    }

    /// The journal field name for a metadata key.
    ///
    /// A valid name (A-Z, 0-9 and `_`, not starting with `_` or a digit, at most 64
    /// characters, not one of ``handlerFields``) is kept. Anything else is sanitized rather
    /// than dropped: letters are uppercased, every other character becomes `_`, a name that
    /// starts with `_` or a digit (journald reserves `_` for trusted fields), is empty, or
    /// collides with a handler field gets the prefix `X_`, and the result is cut to 64
    /// characters. `error.message` becomes `ERROR_MESSAGE`, `_pid` becomes `X__PID`.
    public static func fieldName(forMetadataKey key: String) -> String {
        var name = ""
        name.unicodeScalars.reserveCapacity(key.unicodeScalars.count)
        for scalar in key.unicodeScalars {
            switch scalar {
            case "A"..."Z", "0"..."9", "_":
                name.unicodeScalars.append(scalar)
            case "a"..."z":
                name.unicodeScalars.append(Unicode.Scalar(scalar.value - 0x20)!)
            default:
                name.unicodeScalars.append("_")
            }
        }
        let first = name.unicodeScalars.first
        if first == nil || first == "_" || ("0"..."9").contains(first!) || handlerFields.contains(name) {
            name = "X_" + name
        }
        if name.unicodeScalars.count > maximumFieldNameLength {
            name = String(String.UnicodeScalarView(name.unicodeScalars.prefix(maximumFieldNameLength)))
        }
        return name
    }

    /// A metadata value as text: strings as they are, convertibles by their description,
    /// arrays as `[a, b]` and dictionaries as `[k: v]` sorted by key (without the quotes
    /// swift-log's own description puts around nested strings).
    static func stringValue(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let string):
            return string
        case .stringConvertible(let convertible):
            return convertible.description
        case .array(let values):
            return "[" + values.map(stringValue).joined(separator: ", ") + "]"
        case .dictionary(let entries):
            let sorted = entries.sorted { $0.key < $1.key }
            return "[" + sorted.map { "\($0.key): \(stringValue($0.value))" }.joined(separator: ", ") + "]"
        }
    }

    /// Handler metadata, then the provider's, then the message's (later wins), then the
    /// event's error as `error.message` / `error.type` (swift-log's StreamLogHandler names).
    static func mergedMetadata(
        handler: Logger.Metadata,
        provider: Logger.MetadataProvider?,
        event: Logger.Metadata?,
        error: (any Error)?
    ) -> Logger.Metadata {
        var metadata = handler
        if let provided = provider?.get(), !provided.isEmpty {
            metadata.merge(provided) { _, new in new }
        }
        if let event, !event.isEmpty {
            metadata.merge(event) { _, new in new }
        }
        if let error {
            metadata["error.message"] = "\(error)"
            metadata["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        return metadata
    }
}
