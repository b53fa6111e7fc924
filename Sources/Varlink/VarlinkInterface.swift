/// An interface description in the varlink IDL, read: its name, types, methods and errors.
///
/// The description a service serves is the one place its protocol is written; the server
/// reads its method names and each method's parameters from it, and a test holds a
/// service's Codable records against its types. The reader follows varlink.org's grammar
/// (comments, `interface`, `type`, `method`, `error`; `?T`, `[]T`, `[string]T`, enums and
/// inline structs); what it cannot read is refused with the token it stopped at.
public struct VarlinkInterface: Equatable, Sendable {
    public indirect enum TypeExpression: Equatable, Sendable, CustomStringConvertible {
        case bool, int, float, string, object
        case named(String)
        case optional(TypeExpression)
        case array(TypeExpression)
        case map(TypeExpression)
        case enumeration([String])
        case structure([Field])

        public var description: String {
            switch self {
            case .bool: "bool"
            case .int: "int"
            case .float: "float"
            case .string: "string"
            case .object: "object"
            case .named(let name): name
            case .optional(let type): "?" + type.description
            case .array(let type): "[]" + type.description
            case .map(let type): "[string]" + type.description
            case .enumeration(let values): "(" + values.joined(separator: ", ") + ")"
            case .structure(let fields): "(" + fields.map { "\($0.name): \($0.type)" }.joined(separator: ", ") + ")"
            }
        }
    }

    public struct Field: Equatable, Sendable {
        public var name: String
        public var type: TypeExpression

        public init(name: String, type: TypeExpression) {
            self.name = name
            self.type = type
        }
    }

    public struct Method: Equatable, Sendable {
        public var parameters: [Field]
        public var replies: [Field]

        public init(parameters: [Field], replies: [Field]) {
            self.parameters = parameters
            self.replies = replies
        }
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var description: String

        public init(description: String) { self.description = description }
    }

    public var name: String
    public var types: [String: TypeExpression] = [:]
    public var methods: [String: Method] = [:]
    public var errors: [String: [Field]] = [:]

    public init(parsing text: String) throws(ParseError) {
        var reader = Reader(tokens: Self.tokens(of: text))
        try reader.expect("interface")
        name = try reader.identifier()
        while let keyword = reader.next() {
            switch keyword {
            case "type":
                let typeName = try reader.identifier()
                types[typeName] = try reader.parenthesised()
            case "method":
                let methodName = try reader.identifier()
                let parameters = try reader.fields()
                try reader.expect("->")
                methods[methodName] = Method(parameters: parameters, replies: try reader.fields())
            case "error":
                let errorName = try reader.identifier()
                errors[errorName] = try reader.fields()
            default:
                throw ParseError(description: "expected type, method or error, found \"\(keyword)\"")
            }
        }
    }

    /// Words and the punctuation of the IDL, comments dropped.
    private static func tokens(of text: String) -> [String] {
        var tokens: [String] = []
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: true) {
            var line = rawLine[...]
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            var word = ""
            var characters = line.makeIterator()
            var pending: Character? = nil
            func flush() { if !word.isEmpty { tokens.append(word); word = "" } }
            while let character = pending ?? characters.next() {
                pending = nil
                switch character {
                case "(", ")", ",", ":", "?", "[", "]":
                    flush()
                    tokens.append(String(character))
                case "-":
                    flush()
                    let following = characters.next()
                    if following == ">" { tokens.append("->") } else { tokens.append("-"); pending = following }
                case " ", "\t", "\r":
                    flush()
                default:
                    word.append(character)
                }
            }
            flush()
        }
        return tokens
    }

    private struct Reader {
        var tokens: [String]
        var position = 0

        mutating func next() -> String? {
            guard position < tokens.count else { return nil }
            defer { position += 1 }
            return tokens[position]
        }

        func peek() -> String? { position < tokens.count ? tokens[position] : nil }

        mutating func expect(_ token: String) throws(ParseError) {
            let found = next()
            guard found == token else { throw ParseError(description: "expected \"\(token)\", found \(found.map { "\"\($0)\"" } ?? "the end")") }
        }

        mutating func identifier() throws(ParseError) -> String {
            guard let word = next(), let first = word.first, first.isLetter || first == "_" else {
                throw ParseError(description: "expected a name, found \(tokens.indices.contains(position - 1) ? "\"\(tokens[position - 1])\"" : "the end")")
            }
            return word
        }

        /// `( name: type, ... )`, possibly empty.
        mutating func fields() throws(ParseError) -> [Field] {
            guard case .structure(let fields) = try parenthesised(allowEnum: false) else { return [] }
            return fields
        }

        /// A struct `(a: T, b: U)` or an enum `(a, b)`; `()` is an empty struct.
        mutating func parenthesised(allowEnum: Bool = true) throws(ParseError) -> TypeExpression {
            try expect("(")
            if peek() == ")" { _ = next(); return .structure([]) }
            var fields: [Field] = []
            var values: [String] = []
            repeat {
                let name = try identifier()
                if peek() == ":" {
                    _ = next()
                    fields.append(Field(name: name, type: try type()))
                } else {
                    values.append(name)
                }
                guard fields.isEmpty || values.isEmpty else { throw ParseError(description: "\"\(name)\": fields and enum values mixed") }
            } while try separator()
            if !values.isEmpty {
                guard allowEnum else { throw ParseError(description: "expected \"name: type\", found \"\(values[0])\"") }
                return .enumeration(values)
            }
            return .structure(fields)
        }

        /// True after a ",", false after the closing ")".
        private mutating func separator() throws(ParseError) -> Bool {
            switch next() {
            case ",": return peek() != ")" || { _ = next(); return false }()
            case ")": return false
            case let other: throw ParseError(description: "expected \",\" or \")\", found \(other.map { "\"\($0)\"" } ?? "the end")")
            }
        }

        mutating func type() throws(ParseError) -> TypeExpression {
            switch peek() {
            case "?":
                _ = next()
                return .optional(try type())
            case "[":
                _ = next()
                if peek() == "]" {
                    _ = next()
                    return .array(try type())
                }
                try expect("string")
                try expect("]")
                return .map(try type())
            case "(":
                return try parenthesised()
            default:
                switch try identifier() {
                case "bool": return .bool
                case "int": return .int
                case "float": return .float
                case "string": return .string
                case "object": return .object
                case let name: return .named(name)
                }
            }
        }
    }
}
