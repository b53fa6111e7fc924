/// Where keys, values and table headers sit in a TOML document's text.
///
/// Why this exists: TOMLKit 0.6.0 hands out line and column only for parse errors. toml++
/// keeps a `source()` region on every node, but TOMLKit's C bridge (CTOML) does not export
/// it, and reaching toml++ directly would need C++ interop in Package.swift. So, after TOMLKit
/// has accepted a document (this index is never used on text the parser rejected), we walk
/// the text once to note where each key path starts. This is a position index, not a parser:
/// it decides nothing about values; it only skips strings, arrays and inline tables well
/// enough to keep its place, and any path it cannot place falls back to its table's header,
/// then to the top of the file, so a message is never lost, only less precise.
///
/// Paths are the key components from the document root; an array-of-tables element is the
/// component "#N" (N from 0, in file order, as toml++ keeps them).
struct TOMLPositionIndex {
    struct Position: Hashable { var line: Int; var column: Int }

    private(set) var keys: [String: Position] = [:]
    private(set) var values: [String: Position] = [:]

    static func pathKey(_ components: [String]) -> String { components.joined(separator: "\u{1F}") }

    func key(_ path: [String]) -> Position? { keys[Self.pathKey(path)] }
    func value(_ path: [String]) -> Position? { values[Self.pathKey(path)] }

    /// The best position for a problem with the value at `path`: the value, else its key,
    /// else the nearest enclosing key or header.
    func bestValuePosition(_ path: [String]) -> Position {
        if let position = value(path) { return position }
        return bestKeyPosition(path)
    }

    func bestKeyPosition(_ path: [String]) -> Position {
        var path = path
        while !path.isEmpty {
            if let position = key(path) { return position }
            path.removeLast()
        }
        return Position(line: 1, column: 1)
    }

    // MARK: Scanning

    private var text: [Unicode.Scalar] = []
    private var index = 0
    private var line = 1
    private var column = 1
    private var arrayCounts: [String: Int] = [:]

    init(text source: String) {
        text = Array(source.unicodeScalars)
        var currentTable: [String] = []
        while true {
            skipWhitespaceCommentsAndNewlines()
            guard let c = peek() else { break }
            if c == "[" {
                currentTable = scanHeader()
            } else {
                let start = index
                scanKeyValue(prefix: currentTable)
                if index == start { advance() }   // never loop on text we cannot read
            }
        }
    }

    private func peek(_ offset: Int = 0) -> Unicode.Scalar? {
        index + offset < text.count ? text[index + offset] : nil
    }

    private var position: Position { Position(line: line, column: column) }

    private mutating func advance() {
        guard index < text.count else { return }
        if text[index] == "\n" { line += 1; column = 1 } else { column += 1 }
        index += 1
    }

    private mutating func skipSpaces() {
        while let c = peek(), c == " " || c == "\t" || c == "\r" { advance() }
    }

    private mutating func skipComment() {
        if peek() == "#" { while let c = peek(), c != "\n" { advance() } }
    }

    private mutating func skipWhitespaceCommentsAndNewlines() {
        while let c = peek() {
            if c == " " || c == "\t" || c == "\r" || c == "\n" { advance() }
            else if c == "#" { skipComment() }
            else { break }
        }
    }

    private func isBareKeyCharacter(_ c: Unicode.Scalar) -> Bool {
        (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "_" || c == "-"
    }

    /// A dotted key: each component with the position where it starts.
    private mutating func scanKey() -> [(String, Position)] {
        var components: [(String, Position)] = []
        while true {
            skipSpaces()
            let start = position
            var name = ""
            if let quote = peek(), quote == "\"" || quote == "'" {
                advance()
                while let c = peek(), c != quote, c != "\n" {
                    if c == "\\" && quote == "\"" { advance() }
                    if let escaped = peek() { name.unicodeScalars.append(escaped) }
                    advance()
                }
                advance()
            } else {
                while let c = peek(), isBareKeyCharacter(c) { name.unicodeScalars.append(c); advance() }
            }
            if name.isEmpty && start == position { return components }
            components.append((name, start))
            skipSpaces()
            if peek() == "." { advance() } else { return components }
        }
    }

    /// `[a.b]` or `[[a.b]]`; returns the resolved path of the table it opens.
    private mutating func scanHeader() -> [String] {
        advance()
        let isArray = peek() == "["
        if isArray { advance() }
        let components = scanKey()
        while let c = peek(), c != "\n" { advance(); if c == "]" && (!isArray || peek() == "]") { if isArray { advance() }; break } }
        var resolved: [String] = []
        for (offset, (name, start)) in components.enumerated() {
            resolved.append(name)
            let last = offset == components.count - 1
            if last && isArray {
                let key = Self.pathKey(resolved)
                let count = (arrayCounts[key] ?? 0) + 1
                arrayCounts[key] = count
                if keys[key] == nil { keys[key] = start }
                resolved.append("#\(count - 1)")
                keys[Self.pathKey(resolved)] = start
            } else if let count = arrayCounts[Self.pathKey(resolved)] {
                resolved.append("#\(count - 1)")
            } else if last || keys[Self.pathKey(resolved)] == nil {
                keys[Self.pathKey(resolved)] = start
            }
        }
        skipSpaces()
        skipComment()
        return resolved
    }

    private mutating func scanKeyValue(prefix: [String]) {
        let components = scanKey()
        guard !components.isEmpty else { return }
        var path = prefix
        for (name, start) in components {
            path.append(name)
            let key = Self.pathKey(path)
            if keys[key] == nil { keys[key] = start }
        }
        skipSpaces()
        guard peek() == "=" else { return }
        advance()
        skipSpaces()
        scanValue(path: path)
    }

    private mutating func scanValue(path: [String]) {
        values[Self.pathKey(path)] = position
        guard let c = peek() else { return }
        switch c {
        case "\"", "'":
            scanString(quote: c)
        case "{":
            advance()
            while true {
                skipWhitespaceCommentsAndNewlines()
                guard let next = peek() else { return }
                if next == "}" { advance(); return }
                if next == "," { advance(); continue }
                let start = index
                scanKeyValue(prefix: path)
                if index == start { advance() }
            }
        case "[":
            advance()
            var element = 0
            while true {
                skipWhitespaceCommentsAndNewlines()
                guard let next = peek() else { return }
                if next == "]" { advance(); return }
                if next == "," { advance(); element += 1; continue }
                let start = index
                scanValue(path: path + ["#\(element)"])
                if index == start { advance() }
            }
        default:
            while let c = peek(), c != ",", c != "]", c != "}", c != "\n", c != "#" { advance() }
        }
    }

    private mutating func scanString(quote: Unicode.Scalar) {
        let multiline = peek(1) == quote && peek(2) == quote
        if multiline {
            advance(); advance(); advance()
            while let c = peek() {
                if c == "\\" && quote == "\"" { advance(); advance(); continue }
                if c == quote && peek(1) == quote && peek(2) == quote {
                    advance(); advance(); advance()
                    // Up to two more quotes belong to the content ("""a"""" is a\").
                    while peek() == quote { advance() }
                    return
                }
                advance()
            }
            return
        }
        advance()
        while let c = peek(), c != "\n" {
            if c == "\\" && quote == "\"" { advance(); advance(); continue }
            advance()
            if c == quote { return }
        }
    }
}
