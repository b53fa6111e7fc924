import Foundation
import PowerConfig
import SystemPackage

/// A configuration root in a temp folder: ROOT/etc|run|usr/lib/vfio-powerd/...
final class TempConfigRoot {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("vfio-powerd-config-\(UUID().uuidString)").path
        for directory in ["etc", "run", "usr/lib"] {
            try FileManager.default.createDirectory(atPath: "\(path)/\(directory)/vfio-powerd/devices.d", withIntermediateDirectories: true)
        }
        // Whatever the umask, start from modes strict mode accepts.
        for directory in ["etc", "run", "usr/lib"] {
            chmod("\(path)/\(directory)/vfio-powerd", 0o755)
            chmod("\(path)/\(directory)/vfio-powerd/devices.d", 0o755)
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Writes `text` to ROOT/`relativePath` with mode 0644.
    @discardableResult
    func write(_ relativePath: String, _ text: String) throws -> String {
        let full = "\(path)/\(relativePath)"
        try text.write(toFile: full, atomically: false, encoding: .utf8)
        chmod(full, 0o644)
        return full
    }

    func mask(_ relativePath: String) throws {
        try FileManager.default.createSymbolicLink(atPath: "\(path)/\(relativePath)", withDestinationPath: "/dev/null")
    }

    func options(allowInsecure: Bool = true) -> ConfigLoadOptions {
        ConfigLoadOptions(configRoot: FilePath(path), allowInsecurePermissions: allowInsecure)
    }

    /// Problems with the root's prefix removed, one per line.
    func render(_ problems: [ConfigProblem]) -> String {
        problems.map { $0.description.replacingOccurrences(of: path + "/", with: "") }.joined(separator: "\n")
    }
}

enum Fixtures {
    static var directory: URL { Bundle.module.url(forResource: "Fixtures", withExtension: nil)! }
    static func text(_ name: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }
    static func names(withSuffix suffix: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(suffix) }.sorted()
    }
}

extension ConfigProblem {
    var isWarning: Bool { severity == .warning }
}
