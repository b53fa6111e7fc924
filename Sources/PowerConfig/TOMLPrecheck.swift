/// What is checked in a configuration file's text before TOML parses it: what toml++ would
/// accept, or reject only in its own words, though no configuration of this daemon has it.
///
/// - A NUL byte: toml++ (which is given the text's length) rejects it as an unexpected
///   character; this says what a NUL in a text file means (truncated or corrupted) instead.
/// - A `\u0000` escape: toml++ accepts it and the value reaches Swift whole, but no value
///   here can hold a NUL, and where one goes on to C (a group name, to getgrnam_r) it would be
///   cut short (`"ro\u0000ot"` looked up as "ro"); this names the escape and its place.
/// - Nesting and dotted keys past what any configuration needs: toml++ caps inline arrays
///   and tables at 256 levels, but not dotted keys or table headers, and builds and frees its
///   tree recursively, so tens of thousands of levels (`a.a.a… = 1`, well under the size
///   limit) can overflow a thread's stack and kill the process, a running daemon on reload
///   included. The limit here is far lower, and its message names it.
///
/// One pass over the text, aware of strings and comments; the first problem of each kind is
/// reported with its line and column.
enum TOMLPrecheck {
    /// Deeper than any configuration of this daemon goes (it uses two levels), far below
    /// what overflows a thread's stack.
    static let maximumDepth = 32
    static let maximumDottedParts = 32

    struct Finding: Equatable {
        var line: Int
        var column: Int
        var message: String
    }

    static func check(_ text: String) -> [Finding] {
        var findings: [Finding] = []
        var reported = Set<String>()
        func report(_ kind: String, _ line: Int, _ column: Int, _ message: String) {
            guard reported.insert(kind).inserted else { return }
            findings.append(Finding(line: line, column: column, message: message))
        }

        enum Context { case code, comment, basic, literal, multilineBasic, multilineLiteral }
        var context = Context.code
        var depth = 0
        var dotsOnLine = 0
        var line = 1, column = 0
        let scalars = Array(text.unicodeScalars)
        var index = 0
        func peek(_ offset: Int) -> Unicode.Scalar? { index + offset < scalars.count ? scalars[index + offset] : nil }
        func isDigit(_ scalar: Unicode.Scalar?) -> Bool { scalar.map { ("0"..."9").contains($0) } ?? false }

        while index < scalars.count {
            let scalar = scalars[index]
            column += 1
            if scalar == "\0" {
                report("nul", line, column, "a NUL byte: configuration text has none, and everything after it would be ignored; is the file truncated or corrupted?")
            }
            if scalar == "\n" {
                line += 1
                column = 0
                dotsOnLine = 0
                if context == .comment || context == .basic || context == .literal { context = .code }
                index += 1
                continue
            }
            switch context {
            case .comment:
                break
            case .code:
                switch scalar {
                case "#": context = .comment
                case "\"":
                    if peek(1) == "\"" && peek(2) == "\"" { context = .multilineBasic; index += 2; column += 2 } else { context = .basic }
                case "'":
                    if peek(1) == "'" && peek(2) == "'" { context = .multilineLiteral; index += 2; column += 2 } else { context = .literal }
                case "[", "{":
                    depth += 1
                    if depth > maximumDepth {
                        report("depth", line, column, "nested deeper than \(maximumDepth) levels of tables and arrays; no setting of vfio-powerd needs more than two")
                    }
                case "]", "}":
                    depth = max(0, depth - 1)
                case ".":
                    // A dot between digits is a number's (1.5); any other joins key parts.
                    if !(isDigit(index > 0 ? scalars[index - 1] : nil) && isDigit(peek(1))) {
                        dotsOnLine += 1
                        if dotsOnLine >= maximumDottedParts {
                            report("dots", line, column, "a key with more than \(maximumDottedParts) dotted parts; no setting of vfio-powerd has more than three")
                        }
                    }
                default: break
                }
            case .basic, .multilineBasic:
                if scalar == "\\" {
                    // An escape: a NUL one would cut the value short.
                    let next = peek(1)
                    if next == "u" || next == "U" {
                        let digits = next == "u" ? 4 : 8
                        let hex = (0..<digits).compactMap { peek(2 + $0) }.map(String.init).joined()
                        if hex.count == digits, let value = UInt32(hex, radix: 16), value == 0 {
                            report("escape", line, column, "a \\\(next!)\(hex) escape (NUL) in a string: the value would be cut short there; remove it")
                        }
                    }
                    index += 2
                    column += 1
                    continue
                }
                if context == .basic && scalar == "\"" { context = .code }
                if context == .multilineBasic && scalar == "\"" && peek(1) == "\"" && peek(2) == "\"" {
                    context = .code
                    index += 2
                    column += 2
                }
            case .literal:
                if scalar == "'" { context = .code }
            case .multilineLiteral:
                if scalar == "'" && peek(1) == "'" && peek(2) == "'" {
                    context = .code
                    index += 2
                    column += 2
                }
            }
            index += 1
        }
        return findings
    }
}
