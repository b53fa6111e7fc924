import CTOML

/// A TOML document as toml++ parsed it (through the CTOML shim): every table, array and value,
/// with the places toml++ recorded for its key and its value.
///
/// Paths, in the position look-ups, are the key components from the root; an array element is
/// the component "#N" (N from 0, in file order, as toml++ keeps them).
final class TOMLDocument: Sendable {
    struct Position: Hashable, Sendable {
        var line: Int
        var column: Int
    }

    enum Kind: Sendable {
        case table, array, string, integer, float, boolean, date, time, dateTime
    }

    /// toml++'s description of the first syntax error, and where it is (nil when the failure
    /// has no place in the text).
    struct SyntaxError: Error, Sendable {
        var description: String
        var position: Position?
    }

    fileprivate struct Node: Sendable {
        var kind: Kind
        /// The key in the parent table ("" for the root and for array elements).
        var name: String
        /// A scalar's value as text ("" for tables and arrays).
        var text: String
        /// Packed (line << 32 | column); 0 is "none".
        var keyPosition: UInt64
        var valuePosition: UInt64
        var parent: Int32
        /// This node's children are `children[childStart ..< childStart + childCount]`: a
        /// table's in the order its keys appear in the file, an array's by index.
        var childStart: Int32 = 0
        var childCount: Int32 = 0
    }

    /// nodes[0] is the root table.
    fileprivate let nodes: [Node]
    fileprivate let children: [Int32]

    var root: TOMLTable { TOMLTable(document: self, node: 0) }

    /// Parses `text`; `file` names it in toml++'s own records.
    static func parse(_ text: String, file: String) -> Result<TOMLDocument, SyntaxError> {
        var text = text
        let parsed = text.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { ctoml_parse($0.baseAddress, $0.count, file) }
        }
        guard let parsed else { return .failure(SyntaxError(description: "out of memory", position: nil)) }
        defer { ctoml_free(parsed) }
        if let error = parsed.pointee.error {
            let position = parsed.pointee.error_position
            return .failure(SyntaxError(description: String(cString: error),
                                        position: position.line == 0 ? nil : Position(line: Int(position.line), column: Int(position.column))))
        }
        return .success(TOMLDocument(UnsafeBufferPointer(start: parsed.pointee.entries, count: parsed.pointee.entry_count)))
    }

    private init(_ entries: UnsafeBufferPointer<ctoml_entry>) {
        var nodes: [Node] = []
        nodes.reserveCapacity(entries.count + 1)
        nodes.append(Node(kind: .table, name: "", text: "", keyPosition: 0, valuePosition: 0, parent: -1))
        var childCounts = [Int32](repeating: 0, count: entries.count + 1)
        for entry in entries {
            // Entry i is node i + 1 (the root comes first).
            let parent = entry.parent + 1
            childCounts[Int(parent)] += 1
            nodes.append(Node(kind: Kind(entry.kind), name: Self.string(entry.key, entry.key_length),
                              text: Self.string(entry.text, entry.text_length),
                              keyPosition: Self.pack(entry.key_position), valuePosition: Self.pack(entry.value_position),
                              parent: parent))
        }
        // Children in one array, grouped by parent (a counting sort), then ordered.
        var start: Int32 = 0
        for index in nodes.indices {
            nodes[index].childStart = start
            start += childCounts[index]
        }
        var children = [Int32](repeating: 0, count: entries.count)
        for (offset, entry) in entries.enumerated() {
            let parent = Int(entry.parent + 1)
            let slot = nodes[parent].childStart + nodes[parent].childCount
            nodes[parent].childCount += 1
            // An array's elements go straight to their index; a table's are sorted below.
            children[Int(nodes[parent].kind == .array ? nodes[parent].childStart + entry.element : slot)] = Int32(offset + 1)
        }
        for node in nodes where node.kind == .table && node.childCount > 1 {
            let range = Int(node.childStart) ..< Int(node.childStart + node.childCount)
            // File order; toml++ keeps a table's keys sorted by name. A name breaks ties
            // (keys have distinct places in accepted text, but the order must not depend on it).
            children[range].sort { a, b in
                let (x, y) = (nodes[Int(a)], nodes[Int(b)])
                return (x.keyPosition, x.name) < (y.keyPosition, y.name)
            }
        }
        self.nodes = nodes
        self.children = children
    }

    private static func string(_ bytes: UnsafePointer<CChar>?, _ count: Int) -> String {
        guard let bytes else { return "" }
        return bytes.withMemoryRebound(to: UInt8.self, capacity: count) {
            String(decoding: UnsafeBufferPointer(start: $0, count: count), as: UTF8.self)
        }
    }

    private static func pack(_ position: ctoml_position) -> UInt64 {
        position.line == 0 ? 0 : UInt64(position.line) << 32 | UInt64(position.column)
    }

    private static func unpack(_ packed: UInt64) -> Position? {
        packed == 0 ? nil : Position(line: Int(packed >> 32), column: Int(packed & 0xFFFF_FFFF))
    }

    // MARK: Positions by path

    func keyPosition(_ path: [String]) -> Position? { node(path).flatMap { Self.unpack(nodes[Int($0)].keyPosition) } }
    func valuePosition(_ path: [String]) -> Position? { node(path).flatMap { Self.unpack(nodes[Int($0)].valuePosition) } }

    /// The best position for a problem with the value at `path`: the value, else its key,
    /// else the nearest enclosing key or header.
    func bestValuePosition(_ path: [String]) -> Position {
        valuePosition(path) ?? bestKeyPosition(path)
    }

    /// The key at `path`, else the nearest enclosing key or header (an element of an inline
    /// array has no key of its own: its array's), else the top of the file.
    func bestKeyPosition(_ path: [String]) -> Position {
        // The deepest node on the path, then up: the same as trying ever shorter prefixes.
        var current: Int32 = 0
        for component in path {
            guard let next = child(of: current, named: component) else { break }
            current = next
        }
        while current > 0 {
            if let position = Self.unpack(nodes[Int(current)].keyPosition) { return position }
            current = nodes[Int(current)].parent
        }
        return Position(line: 1, column: 1)
    }

    private func node(_ path: [String]) -> Int32? {
        var current: Int32 = 0
        for component in path {
            guard let next = child(of: current, named: component) else { return nil }
            current = next
        }
        return current
    }

    private func child(of parent: Int32, named name: String) -> Int32? {
        let node = nodes[Int(parent)]
        switch node.kind {
        case .array:
            guard name.hasPrefix("#"), let index = Int32(name.dropFirst()), index >= 0, index < node.childCount else { return nil }
            return children[Int(node.childStart + index)]
        case .table:
            return childNamed(name, in: parent)
        default:
            return nil
        }
    }

    fileprivate func childNamed(_ name: String, in table: Int32) -> Int32? {
        let node = nodes[Int(table)]
        for slot in Int(node.childStart) ..< Int(node.childStart + node.childCount) where nodes[Int(children[slot])].name == name {
            return children[slot]
        }
        return nil
    }
}

private extension TOMLDocument.Kind {
    init(_ kind: ctoml_kind) {
        switch kind {
        case .CTOML_TABLE: self = .table
        case .CTOML_ARRAY: self = .array
        case .CTOML_STRING: self = .string
        case .CTOML_INTEGER: self = .integer
        case .CTOML_FLOAT: self = .float
        case .CTOML_BOOLEAN: self = .boolean
        case .CTOML_DATE: self = .date
        case .CTOML_TIME: self = .time
        case .CTOML_DATE_TIME: self = .dateTime
        }
    }
}

/// One value of a document: a scalar, a table or an array.
struct TOMLValue {
    fileprivate let document: TOMLDocument
    fileprivate let node: Int32

    private var contents: TOMLDocument.Node { document.nodes[Int(node)] }

    var kind: TOMLDocument.Kind { contents.kind }
    var table: TOMLTable? { kind == .table ? TOMLTable(document: document, node: node) : nil }
    var array: TOMLArray? { kind == .array ? TOMLArray(document: document, node: node) : nil }
    var string: String? { kind == .string ? contents.text : nil }
    var integer: Int? { kind == .integer ? Int(contents.text) : nil }
    var float: Double? { kind == .float ? Double(contents.text) : nil }
    var boolean: Bool? { kind == .boolean ? contents.text == "true" : nil }
}

/// A table's keys and values, in the order the file has them.
struct TOMLTable {
    fileprivate let document: TOMLDocument
    fileprivate let node: Int32

    var count: Int { Int(document.nodes[Int(node)].childCount) }

    /// The keys in file order.
    var keys: [String] { entries.map(\.key) }

    /// Keys and values in file order.
    var entries: [(key: String, value: TOMLValue)] {
        let contents = document.nodes[Int(node)]
        return (Int(contents.childStart) ..< Int(contents.childStart + contents.childCount)).map { slot in
            let child = document.children[slot]
            return (document.nodes[Int(child)].name, TOMLValue(document: document, node: child))
        }
    }

    subscript(key: String) -> TOMLValue? {
        document.childNamed(key, in: node).map { TOMLValue(document: document, node: $0) }
    }
}

/// An array's elements by index.
struct TOMLArray {
    fileprivate let document: TOMLDocument
    fileprivate let node: Int32

    var count: Int { Int(document.nodes[Int(node)].childCount) }

    subscript(index: Int) -> TOMLValue {
        let contents = document.nodes[Int(node)]
        precondition(index >= 0 && index < Int(contents.childCount), "element \(index) of an array of \(contents.childCount)")
        return TOMLValue(document: document, node: document.children[Int(contents.childStart) + index])
    }
}
