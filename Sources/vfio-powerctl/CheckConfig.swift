import ArgumentParser
import PowerConfig
import SystemPackage

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Check the configuration files without the daemon (as `vfio-powerd --check-config`).",
        discussion: "Prints every problem as FILE:LINE:COLUMN: key: message, then the devices the files select with each value and where it came from. Never opens a device. Exit status 78 on any error.")

    @Option(help: ArgumentHelp("Read DIR/etc, DIR/run and DIR/usr/lib instead of /etc, /run and /usr/lib.", valueName: "dir"))
    var configRoot = "/"

    @Option(help: ArgumentHelp("Where sysfs is mounted.", visibility: .hidden))
    var sysfsRoot = "/sys"

    @Flag(help: "Accept files that are group/world-writable or not owned by root (tests and labs only).")
    var allowInsecureConfig = false

    func run() throws {
        let outcome = ConfigCheck.run(ConfigLoadOptions(configRoot: FilePath(configRoot), allowInsecurePermissions: allowInsecureConfig),
                                      sysfsRoot: FilePath(sysfsRoot))
        print(outcome.report, terminator: "")
        if outcome.exitStatus != 0 { throw ExitCode(outcome.exitStatus) }
    }
}
