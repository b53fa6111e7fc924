/// A place in a configuration file: 1-based line and column.
public struct ConfigLocation: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    /// "FILE:LINE:COLUMN"
    public var description: String { "\(file):\(line):\(column)" }
    /// "FILE:LINE", how provenance is shown.
    public var fileAndLine: String { "\(file):\(line)" }

    public static func < (a: ConfigLocation, b: ConfigLocation) -> Bool {
        (a.file, a.line, a.column) < (b.file, b.line, b.column)
    }
}

/// One thing wrong with the configuration, phrased for the operator who has to fix it.
///
/// Printed as `FILE:LINE:COLUMN: key: message` (a warning says `warning:` before the
/// message); problems about a whole file (permissions, unreadable) have no line: `FILE: message`.
public struct ConfigProblem: Hashable, Sendable, CustomStringConvertible {
    public enum Severity: String, Hashable, Sendable {
        /// The configuration is refused: check-config exits 78, the daemon keeps its old one.
        case error
        /// Worth fixing, but the configuration is used.
        case warning
    }

    public var severity: Severity
    public var file: String
    /// nil for problems with the file as a whole.
    public var line: Int?
    public var column: Int?
    /// The key as a dotted path from the top of the file (`defaults.rearm_delay`,
    /// `device.match.vendor`), nil for syntax and file problems.
    public var key: String?
    public var message: String

    public init(_ severity: Severity = .error, file: String, line: Int? = nil, column: Int? = nil,
                key: String? = nil, message: String) {
        self.severity = severity
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        self.message = message
    }

    public init(_ severity: Severity = .error, at location: ConfigLocation, key: String?, message: String) {
        self.init(severity, file: location.file, line: location.line, column: location.column, key: key, message: message)
    }

    public var isError: Bool { severity == .error }

    public var description: String {
        var text = file
        if let line { text += ":\(line):\(column ?? 1)" }
        if let key { text += ": \(key)" }
        text += ": "
        if severity == .warning { text += "warning: " }
        return text + message
    }

    /// File order, then line and column; file-level problems first.
    static func ordered(_ a: ConfigProblem, _ b: ConfigProblem) -> Bool {
        (a.file, a.line ?? 0, a.column ?? 0, a.key ?? "", a.message) < (b.file, b.line ?? 0, b.column ?? 0, b.key ?? "", b.message)
    }
}

/// Where an effective value came from.
public enum Provenance: Hashable, Sendable, CustomStringConvertible {
    case builtInDefault
    case file(ConfigLocation)

    /// "built-in default" or "FILE:LINE".
    public var description: String {
        switch self {
        case .builtInDefault: "built-in default"
        case .file(let location): location.fileAndLine
        }
    }
}

/// A value and where it came from.
public struct Sourced<Value: Hashable & Sendable>: Hashable, Sendable {
    public var value: Value
    public var source: Provenance
    public init(_ value: Value, _ source: Provenance) {
        self.value = value
        self.source = source
    }
}

/// Levenshtein distance, for "did you mean" advice.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}

/// The closest candidate within a small distance, if any: "did you mean `rearm_delay`?"
func closestMatch(to word: String, in candidates: [String]) -> String? {
    let limit = max(2, word.count / 3)
    let scored = candidates.map { ($0, editDistance(word.lowercased(), $0)) }.filter { $0.1 <= limit }
    return scored.min { ($0.1, $0.0) < ($1.1, $1.0) }?.0
}
