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
///
/// The index is a tree of paths (one node per path, children in file order), scanned from
/// the text's UTF-8 bytes in one pass: no copy of the text, no joined path strings, so a
/// devices.d file with thousands of entries is indexed in a few milliseconds and a few
/// hundred kilobytes. Columns count Unicode scalars, as toml++ does.
struct TOMLPositionIndex {
    struct Position: Hashable { var line: Int; var column: Int }

    /// One path. Positions are packed (line << 32 | column); 0 is "not seen".
    private struct Node {
        var name: String
        var parent: Int32
        var firstChild: Int32 = -1
        var lastChild: Int32 = -1
        var nextSibling: Int32 = -1
        var childCount: Int32 = 0
        /// How many `[[this]]` headers the text has had so far.
        var headerCount: Int32 = 0
        var key: UInt64 = 0
        var value: UInt64 = 0
        /// Children named "#N", by N (array elements; N counts from 0 without gaps).
        var elements: [Int32] = []
    }

    private var nodes: [Node] = [Node(name: "", parent: -1)]
    /// Children by name of the nodes that have many (a linear search serves the others).
    private var manyChildren: [Int32: [String: Int32]] = [:]
    private static let linearChildLimit: Int32 = 16

    func key(_ path: [String]) -> Position? { node(path).flatMap { Self.unpack(nodes[Int($0)].key) } }
    func value(_ path: [String]) -> Position? { node(path).flatMap { Self.unpack(nodes[Int($0)].value) } }

    /// The best position for a problem with the value at `path`: the value, else its key,
    /// else the nearest enclosing key or header.
    func bestValuePosition(_ path: [String]) -> Position {
        if let position = value(path) { return position }
        return bestKeyPosition(path)
    }

    func bestKeyPosition(_ path: [String]) -> Position {
        // The deepest node on the path, then up: the same as trying ever shorter prefixes.
        var current: Int32 = 0
        for component in path {
            guard let next = child(of: current, named: component) else { break }
            current = next
        }
        while current > 0 {
            if let position = Self.unpack(nodes[Int(current)].key) { return position }
            current = nodes[Int(current)].parent
        }
        return Position(line: 1, column: 1)
    }

    /// The names under `path` in the order the text first shows them (array elements "#N"
    /// excluded), or nil when the index has no such path.
    func childNames(_ path: [String]) -> [String]? {
        guard let parent = node(path) else { return nil }
        var names: [String] = []
        names.reserveCapacity(Int(nodes[Int(parent)].childCount))
        var current = nodes[Int(parent)].firstChild
        while current >= 0 {
            names.append(nodes[Int(current)].name)
            current = nodes[Int(current)].nextSibling
        }
        return names
    }

    private func node(_ path: [String]) -> Int32? {
        var current: Int32 = 0
        for component in path {
            guard let next = child(of: current, named: component) else { return nil }
            current = next
        }
        return current
    }

    private static func elementIndex(_ name: String) -> Int? {
        var utf8 = name.utf8[...]
        guard utf8.first == UInt8(ascii: "#") else { return nil }
        utf8 = utf8.dropFirst()
        guard let first = utf8.first, first >= UInt8(ascii: "0"), first <= UInt8(ascii: "9"),
              first != UInt8(ascii: "0") || utf8.count == 1, utf8.count <= 9 else { return nil }
        var value = 0
        for byte in utf8 {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    private func child(of parent: Int32, named name: String) -> Int32? {
        if let index = Self.elementIndex(name) {
            let elements = nodes[Int(parent)].elements
            return index < elements.count ? elements[index] : nil
        }
        if let table = manyChildren[parent] { return table[name] }
        var current = nodes[Int(parent)].firstChild
        while current >= 0 {
            if nodes[Int(current)].name == name { return current }
            current = nodes[Int(current)].nextSibling
        }
        return nil
    }

    private mutating func childCreating(of parent: Int32, named name: String) -> Int32 {
        if let existing = child(of: parent, named: name) { return existing }
        if let index = Self.elementIndex(name) { return elementCreating(of: parent, at: index) }
        let id = Int32(nodes.count)
        nodes.append(Node(name: name, parent: parent))
        if nodes[Int(parent)].lastChild >= 0 {
            nodes[Int(nodes[Int(parent)].lastChild)].nextSibling = id
        } else {
            nodes[Int(parent)].firstChild = id
        }
        nodes[Int(parent)].lastChild = id
        nodes[Int(parent)].childCount += 1
        if nodes[Int(parent)].childCount == Self.linearChildLimit {
            var table: [String: Int32] = [:]
            var current = nodes[Int(parent)].firstChild
            while current >= 0 {
                table[nodes[Int(current)].name] = current
                current = nodes[Int(current)].nextSibling
            }
            manyChildren[parent] = table
        } else if nodes[Int(parent)].childCount > Self.linearChildLimit {
            manyChildren[parent]![name] = id
        }
        return id
    }

    /// The array element "#`index`" under `parent`, made if new.
    private mutating func elementCreating(of parent: Int32, at index: Int) -> Int32 {
        // Elements come in order from the scanner; a gap (which it never makes) is filled so
        // the numbering stays the text's.
        while nodes[Int(parent)].elements.count <= index {
            nodes.append(Node(name: "", parent: parent))
            nodes[Int(parent)].elements.append(Int32(nodes.count - 1))
        }
        return nodes[Int(parent)].elements[index]
    }

    private static func pack(_ position: Position) -> UInt64 { UInt64(position.line) << 32 | UInt64(position.column) }
    private static func unpack(_ packed: UInt64) -> Position? {
        packed == 0 ? nil : Position(line: Int(packed >> 32), column: Int(packed & 0xFFFF_FFFF))
    }

    // MARK: Scanning

    init(text source: String) {
        var source = source
        source.withUTF8 { bytes in
            var scanner = Scanner(text: bytes)
            var currentTable: Int32 = 0
            while true {
                scanner.skipWhitespaceCommentsAndNewlines()
                guard let c = scanner.peek() else { break }
                if c == UInt8(ascii: "[") {
                    currentTable = scanHeader(&scanner)
                } else {
                    let start = scanner.index
                    scanKeyValue(&scanner, table: currentTable)
                    if scanner.index == start { scanner.advance() }   // never loop on text we cannot read
                }
            }
        }
    }

    /// `[a.b]` or `[[a.b]]`; returns the node of the table it opens.
    private mutating func scanHeader(_ s: inout Scanner) -> Int32 {
        s.advance()
        let isArray = s.peek() == UInt8(ascii: "[")
        if isArray { s.advance() }
        let components = s.scanKey()
        while let c = s.peek(), c != UInt8(ascii: "\n") {
            s.advance()
            if c == UInt8(ascii: "]") && (!isArray || s.peek() == UInt8(ascii: "]")) { if isArray { s.advance() }; break }
        }
        var resolved: Int32 = 0
        for (offset, (name, start)) in components.enumerated() {
            resolved = childCreating(of: resolved, named: name)
            let last = offset == components.count - 1
            let count = nodes[Int(resolved)].headerCount
            if last && isArray {
                nodes[Int(resolved)].headerCount = count + 1
                if nodes[Int(resolved)].key == 0 { nodes[Int(resolved)].key = Self.pack(start) }
                resolved = elementCreating(of: resolved, at: Int(count))
                nodes[Int(resolved)].key = Self.pack(start)
            } else if count > 0 {
                resolved = elementCreating(of: resolved, at: Int(count - 1))
            } else if last || nodes[Int(resolved)].key == 0 {
                nodes[Int(resolved)].key = Self.pack(start)
            }
        }
        s.skipSpaces()
        s.skipComment()
        return resolved
    }

    private mutating func scanKeyValue(_ s: inout Scanner, table: Int32) {
        let components = s.scanKey()
        guard !components.isEmpty else { return }
        var current = table
        for (name, start) in components {
            current = childCreating(of: current, named: name)
            if nodes[Int(current)].key == 0 { nodes[Int(current)].key = Self.pack(start) }
        }
        s.skipSpaces()
        guard s.peek() == UInt8(ascii: "=") else { return }
        s.advance()
        s.skipSpaces()
        scanValue(&s, node: current)
    }

    private mutating func scanValue(_ s: inout Scanner, node: Int32) {
        nodes[Int(node)].value = Self.pack(s.position)
        guard let c = s.peek() else { return }
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            s.scanString(quote: c)
        case UInt8(ascii: "{"):
            s.advance()
            while true {
                s.skipWhitespaceCommentsAndNewlines()
                guard let next = s.peek() else { return }
                if next == UInt8(ascii: "}") { s.advance(); return }
                if next == UInt8(ascii: ",") { s.advance(); continue }
                let start = s.index
                scanKeyValue(&s, table: node)
                if s.index == start { s.advance() }
            }
        case UInt8(ascii: "["):
            s.advance()
            var element = 0
            while true {
                s.skipWhitespaceCommentsAndNewlines()
                guard let next = s.peek() else { return }
                if next == UInt8(ascii: "]") { s.advance(); return }
                if next == UInt8(ascii: ",") { s.advance(); element += 1; continue }
                let start = s.index
                scanValue(&s, node: elementCreating(of: node, at: element))
                if s.index == start { s.advance() }
            }
        default:
            while let c = s.peek(), c != UInt8(ascii: ","), c != UInt8(ascii: "]"), c != UInt8(ascii: "}"),
                  c != UInt8(ascii: "\n"), c != UInt8(ascii: "#") { s.advance() }
        }
    }

    /// A cursor over the text's bytes that keeps line and column (in Unicode scalars).
    private struct Scanner {
        let text: UnsafeBufferPointer<UInt8>
        var index = 0
        var line = 1
        var column = 1

        init(text: UnsafeBufferPointer<UInt8>) { self.text = text }

        var position: Position { Position(line: line, column: column) }

        func peek(_ offset: Int = 0) -> UInt8? {
            index + offset < text.count ? text[index + offset] : nil
        }

        /// One byte on; a scalar's continuation bytes do not count as columns.
        mutating func advance() {
            guard index < text.count else { return }
            let byte = text[index]
            if byte == UInt8(ascii: "\n") { line += 1; column = 1 } else if byte & 0xC0 != 0x80 { column += 1 }
            index += 1
            // Stay on scalar boundaries: the continuation bytes of a scalar go with it.
            while index < text.count, text[index] & 0xC0 == 0x80 { index += 1 }
        }

        mutating func skipSpaces() {
            while let c = peek(), c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") || c == UInt8(ascii: "\r") { advance() }
        }

        mutating func skipComment() {
            if peek() == UInt8(ascii: "#") { while let c = peek(), c != UInt8(ascii: "\n") { advance() } }
        }

        mutating func skipWhitespaceCommentsAndNewlines() {
            while let c = peek() {
                if c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") || c == UInt8(ascii: "\r") || c == UInt8(ascii: "\n") { advance() }
                else if c == UInt8(ascii: "#") { skipComment() }
                else { break }
            }
        }

        static func isBareKeyCharacter(_ c: UInt8) -> Bool {
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
        }

        /// The bytes of the scalar at the cursor.
        func scalarBytes() -> UnsafeBufferPointer<UInt8>.SubSequence {
            var end = index + 1
            while end < text.count, text[end] & 0xC0 == 0x80 { end += 1 }
            return text[index..<end]
        }

        /// A dotted key: each component with the position where it starts.
        mutating func scanKey() -> [(String, Position)] {
            var components: [(String, Position)] = []
            while true {
                skipSpaces()
                let start = position
                let startIndex = index
                var name: String
                if let quote = peek(), quote == UInt8(ascii: "\"") || quote == UInt8(ascii: "'") {
                    advance()
                    var bytes: [UInt8] = []
                    while let c = peek(), c != quote, c != UInt8(ascii: "\n") {
                        if c == UInt8(ascii: "\\") && quote == UInt8(ascii: "\"") { advance() }
                        if peek() != nil { bytes += scalarBytes() }
                        advance()
                    }
                    advance()
                    name = String(decoding: bytes, as: UTF8.self)
                } else {
                    let first = index
                    while let c = peek(), Self.isBareKeyCharacter(c) { advance() }
                    name = String(decoding: UnsafeBufferPointer(rebasing: text[first..<index]), as: UTF8.self)
                }
                if name.isEmpty && startIndex == index { return components }
                components.append((name, start))
                skipSpaces()
                if peek() == UInt8(ascii: ".") { advance() } else { return components }
            }
        }

        mutating func scanString(quote: UInt8) {
            let multiline = peek(1) == quote && peek(2) == quote
            let backslash = UInt8(ascii: "\\")
            if multiline {
                advance(); advance(); advance()
                while let c = peek() {
                    if c == backslash && quote == UInt8(ascii: "\"") { advance(); advance(); continue }
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
            while let c = peek(), c != UInt8(ascii: "\n") {
                if c == backslash && quote == UInt8(ascii: "\"") { advance(); advance(); continue }
                advance()
                if c == quote { return }
            }
        }
    }
}
