import Logging

import Glibc

/// Where log records go: picked once at start-up.
public enum LogTarget: String, CaseIterable, Sendable {
    /// The journal when journald is running, stderr otherwise.
    case auto
    /// The journal's native protocol (structured fields), whether or not it seems to run.
    case journal
    /// Readable lines on stderr.
    case stderr
}

/// The destination ``LogTarget/auto`` (or an explicit target) resolves to.
public enum LogDestination: Equatable, Sendable {
    case journal
    /// `timestamps`: prefix lines with the time (not when stderr is the journal, which
    /// stamps entries itself); `syslogPriorityPrefix`: prefix `<N>` so the journal keeps
    /// each line's priority.
    case stderr(timestamps: Bool, syslogPriorityPrefix: Bool)
}

/// Chooses and creates the daemon's log handler.
///
/// Typical use, once at the top of `main`, before the first `Logger` is made:
///
///     SystemdLogging.bootstrap(target: .auto, logLevel: .info)
///     let logger = Logger(label: "vfio-powerd")
public enum SystemdLogging {
    public static let defaultIdentifier = "vfio-powerd"

    /// The decision, as a pure function of what was observed.
    ///
    /// With `.auto`: the journal whenever its socket is there (even when stderr is also the
    /// journal: the native protocol keeps structured fields), stderr otherwise.
    public static func destination(
        target: LogTarget, journalAvailable: Bool, stderrIsJournal: Bool
    ) -> LogDestination {
        switch target {
        case .journal:
            return .journal
        case .auto where journalAvailable:
            return .journal
        case .auto, .stderr:
            return .stderr(timestamps: !stderrIsJournal, syslogPriorityPrefix: stderrIsJournal)
        }
    }

    /// ``destination(target:journalAvailable:stderrIsJournal:)`` for this process.
    public static func destination(
        target: LogTarget, socketPath: String = JournalDetection.defaultSocketPath
    ) -> LogDestination {
        destination(
            target: target,
            journalAvailable: JournalDetection.isJournalAvailable(socketPath: socketPath),
            stderrIsJournal: JournalDetection.stderrIsJournal())
    }

    /// A handler for `destination`.
    public static func makeHandler(
        destination: LogDestination,
        identifier: String = defaultIdentifier,
        logLevel: Logger.Level = .info,
        metadataProvider: Logger.MetadataProvider? = nil
    ) -> any LogHandler {
        switch destination {
        case .journal:
            return JournalLogHandler(
                identifier: identifier, logLevel: logLevel, metadataProvider: metadataProvider)
        case .stderr(let timestamps, let prefix):
            return StderrLogHandler(
                format: StderrLineFormat(
                    identifier: identifier, timestamps: timestamps, syslogPriorityPrefix: prefix),
                logLevel: logLevel, metadataProvider: metadataProvider)
        }
    }

    /// A handler for `label`, detecting the destination now. The label is not used for
    /// output (the identifier names the program); it is accepted so this can be passed to
    /// `LoggingSystem.bootstrap` directly.
    public static func makeHandler(label: String) -> any LogHandler {
        makeHandler(destination: destination(target: .auto))
    }

    /// Detects the destination once and bootstraps swift-log with it. Call at most once per
    /// process (swift-log traps on a second bootstrap). Returns the destination chosen, so
    /// `main` can mention it at debug level.
    @discardableResult
    public static func bootstrap(
        target: LogTarget = .auto,
        identifier: String = defaultIdentifier,
        logLevel: Logger.Level = .info,
        metadataProvider: Logger.MetadataProvider? = nil
    ) -> LogDestination {
        let chosen = destination(target: target)
        LoggingSystem.bootstrap({ _, provider in
            makeHandler(
                destination: chosen, identifier: identifier, logLevel: logLevel,
                metadataProvider: provider)
        }, metadataProvider: metadataProvider)
        return chosen
    }
}
