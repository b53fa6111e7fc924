import Foundation
import PowerPolicy
import SystemPackage
import VFIO
import Glibc

/// Where the configuration lives and how strictly its files are checked.
public struct ConfigLoadOptions: Hashable, Sendable {
    /// Everything is read under this root: ROOT/etc/vfio-powerd, ROOT/run/vfio-powerd,
    /// ROOT/usr/lib/vfio-powerd. "/" in production; a temp folder in tests and the VM lab.
    public var configRoot: FilePath
    /// Accept files and directories that are group/world-writable or not owned by root.
    /// Only for tests and labs working in their own temp folders (`--allow-insecure-config`).
    public var allowInsecurePermissions: Bool

    public init(configRoot: FilePath = "/", allowInsecurePermissions: Bool = false) {
        self.configRoot = configRoot
        self.allowInsecurePermissions = allowInsecurePermissions
    }

    /// The directories in precedence order: /etc masks /run masks /usr/lib.
    public var directories: [FilePath] {
        ["etc/vfio-powerd", "run/vfio-powerd", "usr/lib/vfio-powerd"].map { configRoot.appending($0) }
    }

    public static let mainFileName = "vfio-powerd.conf"
    public static let dropInDirectoryName = "devices.d"
    /// Files larger than this are refused (a resource limit on operator input).
    public static let maximumFileSize = 1 << 20
    /// At most this many devices.d files are read.
    public static let maximumDropIns = 1000
}

/// The result of loading: the configuration (best effort: the parts that were valid) and
/// every problem found. The daemon must not apply a configuration with `hasErrors`.
public struct ConfigLoadResult: Hashable, Sendable {
    public var configuration: Configuration
    /// In file order; errors and warnings.
    public var problems: [ConfigProblem]
    public var hasErrors: Bool { problems.contains(where: \.isError) }
}

/// Reads the configuration files with systemd's precedence and validates them completely.
public enum ConfigLoader {
    public static func load(_ options: ConfigLoadOptions = ConfigLoadOptions()) -> ConfigLoadResult {
        var configuration = Configuration()
        var problems: [ConfigProblem] = []

        for directory in options.directories {
            problems += checkDirectory(directory, options: options)
            problems += checkDirectory(directory.appending(ConfigLoadOptions.dropInDirectoryName), options: options)
        }

        // The main file: the first directory that has the name wins, whole.
        let mainCandidates = options.directories.map { $0.appending(ConfigLoadOptions.mainFileName) }
        let main = pick(mainCandidates.filter { exists($0) }, records: &configuration.files)
        if let main {
            switch read(main, options: options) {
            case .success(let text):
                var parser = ConfigFileParser(file: main.string, text: text)
                (configuration.daemon, configuration.defaults) = parser.parseMain()
                problems += parser.problems
            case .failure(let fileProblems):
                problems += fileProblems.problems
                markRefused(main, in: &configuration.files)
            }
        }

        // devices.d: the union of names, each from its highest directory, in name order.
        var byName: [String: [FilePath]] = [:]
        for directory in options.directories {
            let folder = directory.appending(ConfigLoadOptions.dropInDirectoryName)
            switch listConfFiles(folder) {
            case .success(let names):
                for name in names { byName[name, default: []].append(folder.appending(name)) }
            case .failure(let unreadable):
                problems += unreadable.problems
            }
        }
        var names = byName.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        if names.count > ConfigLoadOptions.maximumDropIns {
            let folder = options.directories[0].appending(ConfigLoadOptions.dropInDirectoryName)
            problems.append(ConfigProblem(file: folder.string, message:
                "\(names.count) files in devices.d directories; at most \(ConfigLoadOptions.maximumDropIns) are read, the rest are ignored"))
            names = Array(names.prefix(ConfigLoadOptions.maximumDropIns))
        }
        let defaults = configuration.effectiveDefaults
        for name in names {
            guard let file = pick(byName[name]!, records: &configuration.files) else { continue }
            switch read(file, options: options) {
            case .success(let text):
                var parser = ConfigFileParser(file: file.string, text: text)
                configuration.devices += parser.parseDevices(defaults: defaults)
                problems += parser.problems
            case .failure(let fileProblems):
                problems += fileProblems.problems
                markRefused(file, in: &configuration.files)
            }
        }

        problems += checkAcrossEntries(configuration)
        return ConfigLoadResult(configuration: configuration, problems: sortProblems(problems))
    }

    /// Problems in file order (files in the order they were read), each file's in line order.
    static func sortProblems(_ problems: [ConfigProblem]) -> [ConfigProblem] {
        var fileOrder: [String: Int] = [:]
        for problem in problems where fileOrder[problem.file] == nil { fileOrder[problem.file] = fileOrder.count }
        return problems.enumerated().sorted { a, b in
            let fa = fileOrder[a.element.file]!, fb = fileOrder[b.element.file]!
            if fa != fb { return fa < fb }
            let la = (a.element.line ?? 0, a.element.column ?? 0), lb = (b.element.line ?? 0, b.element.column ?? 0)
            if la != lb { return la < lb }
            return a.offset < b.offset
        }.map(\.element)
    }

    /// Duplicate addresses and names between entries (in any files). Overlaps between match
    /// rules and addresses depend on sysfs: the resolver reports those.
    static func checkAcrossEntries(_ configuration: Configuration) -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        // The first entry of each address and name, by index: a dictionary of whole entries
        // was several megabytes at 4096 entries.
        var addresses: [PCIAddress: Int] = [:]
        var names: [String: Int] = [:]
        addresses.reserveCapacity(configuration.devices.count)
        names.reserveCapacity(configuration.devices.count)
        let entries = configuration.devices
        for (index, entry) in entries.enumerated() {
            if case .address(let address) = entry.selector {
                if let first = addresses[address] {
                    problems.append(ConfigProblem(at: entry.selectorLocation, key: "device.address", message:
                        "device \(address) is already selected by the entry at \(entries[first].selectorLocation); keep one of the two entries"))
                } else { addresses[address] = index }
            }
            if let name = entry.name {
                if let first = names[name] {
                    problems.append(ConfigProblem(at: entry.location, key: "device.name", message:
                        "name \"\(name)\" is already used by the entry at \(entries[first].location.fileAndLine); names must be unique (they label logs and status)"))
                } else { names[name] = index }
            }
        }
        return problems
    }

    // MARK: Files

    /// The winner among same-named candidates (highest precedence first); records the rest.
    private static func pick(_ candidates: [FilePath], records: inout [ConfigFileRecord]) -> FilePath? {
        guard let first = candidates.first else { return nil }
        if isMask(first) {
            for candidate in candidates {
                records.append(.init(path: candidate.string, status: .masked(by: first.string)))
            }
            return nil
        }
        records.append(.init(path: first.string, status: .used))
        for other in candidates.dropFirst() { records.append(.init(path: other.string, status: .overridden(by: first.string))) }
        return first
    }

    private static func markRefused(_ file: FilePath, in records: inout [ConfigFileRecord]) {
        if let index = records.firstIndex(where: { $0.path == file.string }) { records[index].status = .refused }
    }

    /// A symlink to /dev/null, or /dev/null itself, masks a name: the character device
    /// /dev/null is, by its device number, not any other (/dev/zero is no mask).
    static func isMask(_ path: FilePath) -> Bool {
        var info = stat(), null = stat()
        guard stat(path.string, &info) == 0, stat("/dev/null", &null) == 0 else { return false }
        return info.st_mode & S_IFMT == S_IFCHR && info.st_rdev == null.st_rdev
    }

    private static func exists(_ path: FilePath) -> Bool {
        var info = stat()
        return lstat(path.string, &info) == 0
    }

    /// The `.conf` names in a devices.d directory. One that does not exist has none; one
    /// that exists but cannot be listed (not a directory, a symlink loop, no permission) is
    /// an error: taking it as empty would, on a reload, release every device it configures.
    private static func listConfFiles(_ folder: FilePath) -> Result<[String], FileProblems> {
        var info = stat()
        if lstat(folder.string, &info) != 0 && errno == ENOENT { return .success([]) }
        guard let directory = opendir(folder.string) else {
            return .failure(FileProblems([ConfigProblem(file: folder.string, message:
                "cannot read this devices.d directory (\(String(cString: strerror(errno)))); nothing was changed. Make it a directory root can read, or remove it")]))
        }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasSuffix(".conf") && !name.hasPrefix(".") { names.append(name) }
        }
        return .success(names)
    }

    /// The strict-modes check of one file or directory (after following symlinks).
    static func permissionProblems(_ path: FilePath, isDirectory: Bool) -> [ConfigProblem] {
        var info = stat()
        guard stat(path.string, &info) == 0 else { return [] }
        var problems: [ConfigProblem] = []
        let what = isDirectory ? "directory" : "file"
        let writable = info.st_mode & 0o022
        if writable != 0 {
            let who = writable == 0o022 ? "group and others" : (writable == 0o020 ? "its group" : "others")
            let mode = String(info.st_mode & 0o7777, radix: 8)
            problems.append(ConfigProblem(file: path.string, message:
                "refusing a configuration \(what) that \(who) can write (mode \(String(repeating: "0", count: max(0, 4 - mode.count)) + mode)): anyone there could change what the daemon does to devices; fix: chmod go-w \(path.string)"))
        }
        if info.st_uid != 0 {
            problems.append(ConfigProblem(file: path.string, message:
                "refusing a configuration \(what) owned by uid \(info.st_uid), not root; fix: chown root:root \(path.string)"))
        }
        return problems
    }

    private static func checkDirectory(_ directory: FilePath, options: ConfigLoadOptions) -> [ConfigProblem] {
        guard !options.allowInsecurePermissions else { return [] }
        var info = stat()
        guard stat(directory.string, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return [] }
        let problems = permissionProblems(directory, isDirectory: true)
        return problems.isEmpty ? ancestorProblems(of: directory, for: directory) : problems
    }

    /// The directories above a configuration file or directory, after symlinks: one that
    /// another user owns, or that group or others can write without the sticky bit, lets
    /// them put another file (or symlink) in its place.
    static func ancestorProblems(of path: FilePath, for subject: FilePath) -> [ConfigProblem] {
        guard let resolved = realpath(path.string, nil) else { return [] }
        var current = FilePath(String(cString: resolved))
        free(resolved)
        while !current.isEmpty, current.string != "/" {
            let parent = current.removingLastComponent()
            var info = stat()
            if stat(parent.string, &info) == 0 {
                let writable = info.st_mode & 0o022 != 0 && info.st_mode & S_ISVTX == 0
                if info.st_uid != 0 || writable {
                    let mode = String(info.st_mode & 0o7777, radix: 8)
                    let why = info.st_uid != 0 ? "is owned by uid \(info.st_uid), not root" : "can be written by group or others (mode \(mode))"
                    return [ConfigProblem(file: subject.string, message:
                        "refusing it: the directory \(parent.string) above it \(why), so another user could replace it; fix the directory (chown root:root, chmod go-w) or move the configuration")]
                }
            }
            current = parent
        }
        return []
    }

    private static func read(_ path: FilePath, options: ConfigLoadOptions) -> Result<String, FileProblems> {
        if !options.allowInsecurePermissions {
            var problems = permissionProblems(path, isDirectory: false)
            // A symlink's target lives elsewhere: the directories above it count too.
            var link = stat()
            if problems.isEmpty, lstat(path.string, &link) == 0, link.st_mode & S_IFMT == S_IFLNK {
                problems = ancestorProblems(of: path, for: path)
            }
            if !problems.isEmpty { return .failure(FileProblems(problems)) }
        }
        var info = stat()
        guard stat(path.string, &info) == 0 else {
            return .failure(FileProblems([ConfigProblem(file: path.string, message: "cannot read: \(String(cString: strerror(errno)))")]))
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            return .failure(FileProblems([ConfigProblem(file: path.string, message: "not a regular file; remove it or replace it with a file (a symlink to /dev/null masks the name)")]))
        }
        guard Int(info.st_size) <= ConfigLoadOptions.maximumFileSize else {
            return .failure(FileProblems([ConfigProblem(file: path.string, message:
                "\(info.st_size) bytes is more than the \(ConfigLoadOptions.maximumFileSize) bytes a configuration file may have")]))
        }
        // Read with one read(2) loop of our own: Foundation's FileManager.contents(atPath:)
        // leaks a page for every empty file it reads (measured: 4096 bytes per reload with
        // one empty devices.d file).
        guard let bytes = readWhole(path, expected: Int(info.st_size)) else {
            return .failure(FileProblems([ConfigProblem(file: path.string, message: "cannot read the file: \(String(cString: strerror(errno)))")]))
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            return .failure(FileProblems([ConfigProblem(file: path.string, message: "not valid UTF-8 text")]))
        }
        return .success(text)
    }
}

/// A file's whole contents, at most `maximumFileSize` bytes (a file that grew since its stat
/// is cut there, and the size check already passed).
private func readWhole(_ path: FilePath, expected: Int) -> [UInt8]? {
    guard let fd = try? FileDescriptor.open(path, .readOnly, options: [.closeOnExec]) else { return nil }
    defer { try? fd.close() }
    var bytes = [UInt8](repeating: 0, count: max(expected, 0) + 1)
    var count = 0
    while count < bytes.count {
        let n = (try? bytes.withUnsafeMutableBytes { try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[count...])) }) ?? -1
        if n < 0 { return nil }
        if n == 0 { break }
        count += n
        if count == bytes.count && count <= ConfigLoadOptions.maximumFileSize { bytes += [UInt8](repeating: 0, count: 4096) }
    }
    return Array(bytes[..<min(count, ConfigLoadOptions.maximumFileSize)])
}

/// A file's problems as one error value.
struct FileProblems: Error {
    var problems: [ConfigProblem]
    init(_ problems: [ConfigProblem]) { self.problems = problems }
}
