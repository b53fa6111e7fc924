import Glibc

/// A file's identity: the device and inode `fstat(2)` reports.
public struct FileIdentity: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64

    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }

    /// The identity of an open file descriptor, or nil when `fstat` fails (a closed fd).
    ///
    /// The corresponding C function is `fstat`.
    public static func of(fileDescriptor: Int32) -> FileIdentity? {
        var info = stat()
        guard fstat(fileDescriptor, &info) == 0 else { return nil }
        return FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }
}

/// Whether the journal is there to log to, and whether stderr already goes to it.
///
/// libsystemd's `sd_journal_sendv` returns success and drops the entry when journald is not
/// running, so the daemon has to find out itself. Everything that reads the system takes
/// its input as a parameter, so tests inject paths and values.
public enum JournalDetection {
    /// Where journald listens for native-protocol entries.
    public static let defaultSocketPath = "/run/systemd/journal/socket"

    /// True when `socketPath` exists and is a socket: journald is running and
    /// `sd_journal_sendv` will deliver.
    public static func isJournalAvailable(socketPath: String = defaultSocketPath) -> Bool {
        var info = stat()
        guard stat(socketPath, &info) == 0 else { return false }
        return (info.st_mode & S_IFMT) == S_IFSOCK
    }

    /// True when stderr is connected to the journal, the way systemd documents it
    /// (systemd.exec(5), `$JOURNAL_STREAM`): the variable holds `<device>:<inode>` of the
    /// stream, and it matches stderr's `fstat`. A mismatch means stderr was redirected after
    /// systemd started the process (a shell in between), so it is not the journal any more.
    ///
    /// - Parameters:
    ///   - journalStream: the value of `JOURNAL_STREAM`, nil when unset.
    ///   - stderr: stderr's identity (``FileIdentity/of(fileDescriptor:)`` of 2).
    public static func stderrIsJournal(journalStream: String?, stderr: FileIdentity?) -> Bool {
        guard let journalStream, let stderr, let stream = parseJournalStream(journalStream) else {
            return false
        }
        return stream == stderr
    }

    /// ``stderrIsJournal(journalStream:stderr:)`` for this process.
    public static func stderrIsJournal() -> Bool {
        stderrIsJournal(
            journalStream: getenv("JOURNAL_STREAM").map { String(cString: $0) },
            stderr: FileIdentity.of(fileDescriptor: STDERR_FILENO))
    }

    /// Parses `JOURNAL_STREAM`'s `<device>:<inode>` (both decimal); nil when malformed.
    public static func parseJournalStream(_ value: String) -> FileIdentity? {
        let parts = value.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2,
              parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }),
              let device = UInt64(parts[0]), let inode = UInt64(parts[1])
        else { return nil }
        return FileIdentity(device: device, inode: inode)
    }
}
