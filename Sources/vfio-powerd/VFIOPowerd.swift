import ArgumentParser
import ControlProtocol
import Dispatch
import Logging
import PowerConfig
import PowerDaemon
import Systemd
import SystemPackage
import VFIO
import Glibc

/// vfio-powerd: the daemon. Reads the story of a systemd daemon: parse arguments, load and
/// validate the configuration, open and arm the devices, READY=1, run the loop.
struct VFIOPowerd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfio-powerd",
        abstract: "Keep idle vfio-pci devices in low power.",
        discussion: """
            Runs in the foreground as a systemd service (Type=notify). Configuration: \
            /etc/vfio-powerd/vfio-powerd.conf and /etc/vfio-powerd/devices.d/*.conf \
            (see vfio-powerd.conf(5)). SIGHUP reloads, SIGTERM stops and leaves every \
            device awake. Exit status: 0 stopped, 78 configuration invalid.
            """,
        version: "0.1.0")

    @Flag(name: .customLong("check-config"),
          help: "Validate the configuration, print every problem and the resolved devices with the source of each value, and exit (78 on any error). Never opens a device.")
    var checkConfig = false

    @Option(name: .customLong("config-root"),
            help: ArgumentHelp("Read DIR/etc, DIR/run and DIR/usr/lib instead of /etc, /run and /usr/lib.", valueName: "dir"))
    var configRoot: String = "/"

    @Option(name: .customLong("sysfs-root"), help: ArgumentHelp("Read sysfs from DIR/bus/pci/... instead of /sys.", valueName: "dir"))
    var sysfsRoot: String = "/sys"

    @Flag(name: .customLong("allow-insecure-config"),
          help: "Accept configuration files that are group/world-writable or not owned by root (tests and labs only).")
    var allowInsecureConfig = false

    @Option(name: .customLong("control-socket"),
            help: ArgumentHelp("Where to serve the control interface (io.vfiopowerd.Manager, varlink).", valueName: "path"))
    var controlSocket = ManagerInterface.defaultSocketPath

    @Option(name: .customLong("log-target"),
            help: "Where to log: auto (the journal when journald runs, else stderr), journal, or stderr.")
    var logTarget: LogTarget = .auto

    @Option(name: .customLong("log-level"), help: "The lowest level logged: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() throws {
        let loadOptions = ConfigLoadOptions(configRoot: FilePath(configRoot), allowInsecurePermissions: allowInsecureConfig)
        if checkConfig {
            let outcome = ConfigCheck.run(loadOptions, sysfsRoot: FilePath(sysfsRoot))
            print(outcome.report, terminator: "")
            if outcome.exitStatus != 0 { throw ExitCode(outcome.exitStatus) }
            return
        }

        SystemdLogging.bootstrap(target: logTarget, identifier: "vfio-powerd", logLevel: logLevel)
        let logger = Logger(label: "vfio-powerd")
        let session = VFIOSession(sysfsRoot: FilePath(sysfsRoot))
        let manager = Manager(options: DaemonOptions(config: loadOptions, sysfsRoot: FilePath(sysfsRoot)),
                              source: KernelDeviceSource(session: session), logger: logger)
        let control = ControlService(manager: manager, socketPath: controlSocket)
        let signals = SignalSources()
        DaemonActor.queue.async {
            DaemonActor.assumeIsolated {
                Self.start(manager, control: control, signals: signals, logger: logger, controlSocket: controlSocket)
            }
        }
        dispatchMain()
    }

    /// On the daemon's queue: starts the manager, then follows the signals.
    @DaemonActor
    private static func start(_ manager: Manager, control: ControlService, signals: SignalSources,
                              logger: Logger, controlSocket: String) {
        do throws(Manager.StartError) {
            try manager.start(beforeReady: {
                do {
                    try control.start()
                } catch {
                    // The devices are managed either way; only vfio-powerctl cannot reach us.
                    logger.error("control socket \(controlSocket) unavailable: \(error); vfio-powerctl cannot reach the daemon (devices are managed all the same)")
                }
            })
        } catch {
            // Every problem is already in the journal (and on stderr when run by hand).
            switch error {
            case .configRejected:
                SystemdNotifier().errno(EINVAL)
                Glibc.exit(ConfigCheck.exitConfigError)
            case .eventLoopUnavailable(let errno):
                SystemdNotifier().errno(errno.rawValue)
                Glibc.exit(EXIT_FAILURE)
            }
        }
        signals.start(
            reload: { manager.reload() },
            stop: {
                control.stop()
                // Exits once the devices' last calls have returned (at most 20 s).
                manager.stop { Glibc.exit(0) }
            })
    }
}

extension LogTarget: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}

/// SIGHUP → reload, SIGTERM/SIGINT → stop, as Dispatch sources on the daemon's queue. The
/// signals were blocked in main before any thread existed; the sources receive them.
@DaemonActor
final class SignalSources {
    /// Each cancelled when released.
    private var sources: [OwnedSource] = []

    /// Made before the loop runs (and kept by `run`, which never returns).
    nonisolated init() {}

    func start(reload: @escaping @Sendable @DaemonActor () -> Void, stop: @escaping @Sendable @DaemonActor () -> Void) {
        for (signal, action) in [(SIGHUP, reload), (SIGTERM, stop), (SIGINT, stop)] {
            let source = DispatchSource.makeSignalSource(signal: signal, queue: DaemonActor.queue)
            source.setEventHandler { DaemonActor.assumeIsolated(action) }
            source.activate()
            sources.append(OwnedSource(source))
        }
    }
}
