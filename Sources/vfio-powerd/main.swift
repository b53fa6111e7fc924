import ArgumentParser
import PowerConfig
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// vfio-powerd's entry point. For now only `--check-config` exists; the daemon loop lands
/// with the daemon issue. The checking itself lives in PowerConfig (`ConfigCheck`).
struct VFIOPowerd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfio-powerd",
        abstract: "Keep idle vfio-pci devices in low power.")

    @Flag(name: .customLong("check-config"),
          help: "Validate the configuration, print every problem and the resolved devices with the source of each value, and exit (78 on any error). Never opens a device.")
    var checkConfig = false

    @Option(name: .customLong("config-root"),
            help: ArgumentHelp("Read ROOT/etc, ROOT/run and ROOT/usr/lib instead of /etc, /run and /usr/lib.", valueName: "dir"))
    var configRoot: String = "/"

    @Option(name: .customLong("sysfs-root"), help: ArgumentHelp("Read sysfs from DIR/bus/pci/... instead of /sys.", valueName: "dir"))
    var sysfsRoot: String = "/sys"

    @Flag(name: .customLong("allow-insecure-config"),
          help: "Accept configuration files that are group/world-writable or not owned by root (tests and labs only).")
    var allowInsecureConfig = false

    func run() throws {
        guard checkConfig else {
            writeToStandardError("vfio-powerd: the daemon loop is not built yet; only --check-config works\n")
            throw ExitCode(70)  // EX_SOFTWARE
        }
        let outcome = ConfigCheck.run(
            ConfigLoadOptions(configRoot: FilePath(configRoot), allowInsecurePermissions: allowInsecureConfig),
            sysfsRoot: FilePath(sysfsRoot))
        print(outcome.report, terminator: "")
        if outcome.exitStatus != 0 { throw ExitCode(outcome.exitStatus) }
    }
}

func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}

VFIOPowerd.main()
