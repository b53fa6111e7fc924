import CSystemd
import Logging

import Glibc

/// A swift-log handler that writes structured entries to the systemd journal.
///
/// Each record becomes one entry with the fields ``JournalRecord/fields(level:message:metadata:identifier:file:line:function:)``
/// builds, sent with `sd_journal_sendv(3)` (the variadic `sd_journal_send` cannot be called
/// from Swift). Metadata entries become journal fields, so `journalctl VFIO_DEVICE=...`
/// filters on them.
///
/// libsystemd drops entries silently when journald is not running; use
/// ``SystemdLogging/makeHandler(label:)`` (or check ``JournalDetection``) to pick this handler
/// only when the journal is there.
///
/// A value type as swift-log requires; `sd_journal_sendv` is thread-safe, so loggers using
/// this handler may log from any thread.
public struct JournalLogHandler: LogHandler {
    /// `SYSLOG_IDENTIFIER=` of every entry.
    public var identifier: String
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level

    public init(
        identifier: String = SystemdLogging.defaultIdentifier,
        logLevel: Logger.Level = .info,
        metadataProvider: Logger.MetadataProvider? = nil
    ) {
        self.identifier = identifier
        self.logLevel = logLevel
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = JournalRecord.mergedMetadata(
            handler: metadata, provider: metadataProvider, event: event.metadata, error: event.error)
        let fields = JournalRecord.fields(
            level: event.level, message: event.message.description, metadata: merged,
            identifier: identifier, file: event.file, line: event.line, function: event.function)
        // A logger has nowhere to report its own failure; the result is dropped on purpose.
        _ = Self.send(fields)
    }

    /// Sends one entry; returns `sd_journal_sendv`'s result (0, or a negative errno).
    ///
    /// All `FIELD=value` strings go into one contiguous buffer and each iovec points at its
    /// slice; libsystemd copes with any byte in a value (a newline makes it use the
    /// binary-safe, length-prefixed form on the wire).
    ///
    /// The corresponding C function is `sd_journal_sendv`.
    @discardableResult
    public static func send(_ fields: [(String, String)]) -> Int32 {
        var buffer: [UInt8] = []
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(fields.count)
        for (name, value) in fields {
            let start = buffer.count
            buffer.append(contentsOf: name.utf8)
            buffer.append(UInt8(ascii: "="))
            buffer.append(contentsOf: value.utf8)
            ranges.append(start..<buffer.count)
        }
        return buffer.withUnsafeMutableBytes { bytes -> Int32 in
            let base = bytes.baseAddress
            var vectors = ranges.map { range in
                iovec(iov_base: base.map { $0 + range.lowerBound }, iov_len: range.count)
            }
            return vectors.withUnsafeMutableBufferPointer { iov in
                sd_journal_sendv(iov.baseAddress, Int32(iov.count))
            }
        }
    }
}
