import Glibc
import CTOML
import TOMLKit

/// TOMLKit 0.6's `string`, `int` and `bool` each leak the copy that its toml++ shim hands
/// them (strdup or malloc, never freed): about 32 bytes per value read, which made every
/// reload grow the daemon by 130 KB at 4096 entries (measured: 33 bytes per key). These read
/// the same node through the same shim and free the copy. The node's pointer is internal to
/// TOMLKit, so it is read by reflection: a stopgap until TOMLKit is replaced (issue 11).
extension TOMLValueConvertible {
    private var node: OpaquePointer? {
        Mirror(reflecting: tomlValue).children.first { $0.label == "tomlValuePointer" }?.value as? OpaquePointer
    }

    var stringValue: String? {
        guard type == .string, let node, let copy = nodeAsString(node) else { return nil }
        defer { free(UnsafeMutableRawPointer(mutating: copy)) }
        return String(cString: copy)
    }

    var intValue: Int? {
        guard type == .int, let node, let copy = nodeAsInt(node) else { return nil }
        defer { free(UnsafeMutableRawPointer(mutating: copy)) }
        return Int(copy.pointee)
    }

    var boolValue: Bool? {
        guard type == .bool, let node, let copy = nodeAsBool(node) else { return nil }
        defer { free(UnsafeMutableRawPointer(mutating: copy)) }
        return copy.pointee
    }
}
