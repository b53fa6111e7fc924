import Logging

import Glibc

/// How ``StderrLogHandler`` lays out one record on one line.
///
///     2026-11-22 10:04:31.512 vfio-powerd: warning: 0000:01:00.0: arm failed: Device or resource busy [ERRNO=16 VFIO_DEVICE=0000:01:00.0]
///
/// - an optional local timestamp (left out when stderr is the journal, which stamps entries
///   itself), or instead a `<N>` syslog priority prefix that journald's stream reader turns
///   into the entry's PRIORITY;
/// - the identifier; the level, except for `info` (the ordinary case reads best bare);
/// - the message, then the metadata as `KEY=value` sorted by key, in brackets. `MESSAGE_ID`
///   is left out: it is for machines, and the journal handler sends it.
///
/// Newlines in the message or values are shown as `\n`, so one record is always one line;
/// a value with a space, `"`, `]` or `=`, or an empty one, is quoted.
public struct StderrLineFormat: Sendable {
    public var identifier: String
    /// Prefix each line with the local time.
    public var timestamps: Bool
    /// Prefix each line with `<N>` (the record's syslog priority) for journald's stream reader.
    public var syslogPriorityPrefix: Bool

    public init(identifier: String, timestamps: Bool, syslogPriorityPrefix: Bool) {
        self.identifier = identifier
        self.timestamps = timestamps
        self.syslogPriorityPrefix = syslogPriorityPrefix
    }

    /// Metadata keys not shown on a terminal line.
    public static let hiddenKeys: Set<String> = ["MESSAGE_ID"]

    /// The line for one record, newline included. `time` is used only with ``timestamps``.
    public func line(
        level: Logger.Level, message: String, metadata: Logger.Metadata, time: timespec? = nil
    ) -> String {
        var line = ""
        if syslogPriorityPrefix {
            line += "<\(JournalRecord.priority(for: level))>"
        }
        if timestamps, let time {
            line += Self.timestamp(time) + " "
        }
        line += identifier + ": "
        if level != .info {
            line += "\(level): "
        }
        line += Self.escapeNewlines(message)
        let shown = metadata
            .filter { !Self.hiddenKeys.contains($0.key) }
            .map { ($0.key, Self.quoted(JournalRecord.stringValue($0.value))) }
            .sorted { $0.0 < $1.0 }
        if !shown.isEmpty {
            line += " [" + shown.map { "\($0.0)=\($0.1)" }.joined(separator: " ") + "]"
        }
        return line + "\n"
    }

    /// `YYYY-MM-DD HH:MM:SS.mmm` in local time (or UTC).
    public static func timestamp(_ time: timespec, utc: Bool = false) -> String {
        var seconds = time.tv_sec
        var parts = tm()
        if utc {
            gmtime_r(&seconds, &parts)
        } else {
            localtime_r(&seconds, &parts)
        }
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2)) "
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))."
            + pad(Int32(time.tv_nsec / 1_000_000), 3)
    }

    static func escapeNewlines(_ text: String) -> String {
        guard text.contains(where: \.isNewline) else { return text }
        var result = ""
        for character in text {
            switch character {
            case "\n": result += "\\n"
            case "\r\n": result += "\\r\\n"
            case "\r": result += "\\r"
            case _ where character.isNewline: result += " "
            default: result.append(character)
            }
        }
        return result
    }

    static func quoted(_ value: String) -> String {
        let escaped = escapeNewlines(value)
        let needsQuotes = escaped.isEmpty
            || escaped.contains(where: { $0 == " " || $0 == "\"" || $0 == "]" || $0 == "=" || $0 == "\t" })
        guard needsQuotes else { return escaped }
        return "\"" + escaped.replacingAll("\\\"", for: "\"") + "\""
    }
}

extension String {
    fileprivate func replacingAll(_ replacement: String, for character: Character) -> String {
        var result = ""
        for c in self {
            if c == character { result += replacement } else { result.append(c) }
        }
        return result
    }
}

/// A swift-log handler that writes one readable line per record to stderr (or to an
/// injected writer): for a foreground run in a terminal, or when there is no journald.
///
/// Each record is written with a single `write(2)`, so lines from several threads do not
/// interleave (a line shorter than PIPE_BUF is atomic on a pipe).
public struct StderrLogHandler: LogHandler {
    public var format: StderrLineFormat
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public var logLevel: Logger.Level
    private let writer: @Sendable (String) -> Void
    private let clock: @Sendable () -> timespec

    /// - Parameters:
    ///   - writer: receives each finished line (default: `write(2)` to fd 2).
    ///   - clock: the time for timestamps (default: `CLOCK_REALTIME`).
    public init(
        format: StderrLineFormat,
        logLevel: Logger.Level = .info,
        metadataProvider: Logger.MetadataProvider? = nil,
        writer: @escaping @Sendable (String) -> Void = StderrLogHandler.writeToStderr,
        clock: @escaping @Sendable () -> timespec = StderrLogHandler.realtimeNow
    ) {
        self.format = format
        self.logLevel = logLevel
        self.metadataProvider = metadataProvider
        self.writer = writer
        self.clock = clock
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = JournalRecord.mergedMetadata(
            handler: metadata, provider: metadataProvider, event: event.metadata, error: event.error)
        let time = format.timestamps ? clock() : nil
        writer(format.line(level: event.level, message: event.message.description, metadata: merged, time: time))
    }

    /// Writes the whole string to fd 2, retrying on EINTR and short writes; gives up
    /// silently on any other error (there is nowhere left to report it).
    public static let writeToStderr: @Sendable (String) -> Void = { line in
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(STDERR_FILENO, buffer.baseAddress! + offset, buffer.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }

    /// `CLOCK_REALTIME` now.
    public static let realtimeNow: @Sendable () -> timespec = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return now
    }
}
