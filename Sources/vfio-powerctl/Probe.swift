import ArgumentParser
import Foundation
import PowerPolicy
import SystemPackage
import VFIO
import VFIOWords

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check whether a device and this kernel support low power.",
        discussion: """
            Checks that the device is bound to vfio-pci and its IOMMU group is usable, opens \
            it, and asks the kernel which low-power features it offers. With --cycle it also \
            arms one-shot low power, waits for the device to suspend, wakes it with an access, \
            and reports what happened and how long each step took. The device is closed at \
            the end, which returns it to the kernel's idle state.

            Exit status: 0 the device can be managed; 1 it cannot (features absent, or the \
            cycle did not behave as documented); 69 it could not be opened; 77 not permitted.
            """
    )

    @Argument(help: "The device's PCI address, e.g. 0000:01:00.0 or 01:00.0.",
              transform: { text in
                  switch PCIAddress.parse(text) {
                  case .success(let address): return address
                  case .failure(let error): throw ValidationError(error.description)
                  }
              })
    var device: PCIAddress

    @Flag(help: "Arm one-shot low power, wait for suspend, wake the device, and time each step.")
    var cycle = false

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Option(help: ArgumentHelp("Where sysfs is mounted.", visibility: .hidden))
    var sysfsRoot = "/sys"

    @Option(help: ArgumentHelp("Where device nodes are.", visibility: .hidden))
    var devRoot = "/dev"

    func run() throws {
        let session = VFIOSession(sysfsRoot: FilePath(sysfsRoot), devRoot: FilePath(devRoot))
        let probe = LowPowerProbe(session: session, sysfsRoot: FilePath(sysfsRoot))
        let report: LowPowerProbe.Report
        do {
            report = try probe.run(device, cycle: cycle)
        } catch {
            printError("vfio-powerctl: \(error)")
            switch error.code {
            case .notPermitted: throw ExitCode(ExitStatus.notPermitted)
            // Opened fine, but the kernel refused low power: the device cannot be managed.
            case .featureAbsent, .alreadyEngaged, .resumeFailed: throw ExitCode(ExitStatus.lowPowerUnavailable)
            default: throw ExitCode(ExitStatus.cannotOpen)
            }
        }
        let verdict = ProbeVerdict(report)
        if json {
            print(try ProbeJSON(report, verdict).encoded())
        } else {
            print(ProbeText.render(report, verdict), terminator: "")
        }
        if !verdict.manageable { throw ExitCode(ExitStatus.lowPowerUnavailable) }
    }
}

/// What the report means for vfio-powerd.
struct ProbeVerdict {
    var manageable: Bool
    var problems: [String]

    init(_ report: LowPowerProbe.Report) {
        var problems: [String] = []
        if !report.support.isComplete {
            problems.append("the kernel does not offer every low-power feature for this device: they need Linux 6.1 or later and vfio-pci")
        }
        if let cycle = report.cycle {
            if cycle.timeToSuspend == nil {
                let control = cycle.armed.powerControl.map { $0 == .on ? " (power/control is \"on\", which forbids runtime suspend: write \"auto\")" : "" } ?? ""
                problems.append("the device did not suspend within the timeout after arming\(control)")
            }
            if cycle.wakeLatency == nil {
                problems.append("the wakeup eventfd did not fire after an access")
            } else if cycle.wakeCount != 1 {
                problems.append("the wakeup eventfd counted \(cycle.wakeCount.map(String.init) ?? "nothing") instead of 1")
            }
            if cycle.afterWake.runtimeStatus == .suspended {
                problems.append("the device suspended again after a one-shot wake")
            }
            if let extra = cycle.extraSignals {
                problems.append("the wakeup eventfd fired again (\(extra)) without a new entry")
            }
        }
        self.problems = problems
        manageable = problems.isEmpty
    }
}

enum ProbeText {
    static func render(_ report: LowPowerProbe.Report, _ verdict: ProbeVerdict) -> String {
        var out = "\(report.address)  driver \(report.driver)\n"
        out += "  features     " + LowPowerFeature.allCases.map { feature in
            "\(feature) " + (report.support.refusals[feature].map { "no (\($0.symbolicName))" } ?? "yes")
        }.joined(separator: ", ") + "\n"
        out += "  before open  \(describe(report.before))\n"
        out += "  after open   \(describe(report.opened))\n"
        if let cycle = report.cycle {
            out += "  one-shot cycle\n"
            out += "    arm          entry ioctl took \(format(cycle.armCall))\n"
            out += "    suspend      " + (cycle.timeToSuspend.map { "runtime suspended \(format($0)) after arming: \(describe(cycle.armed))" }
                                          ?? "did not suspend: \(describe(cycle.armed))") + "\n"
            out += "    wake         " + (cycle.wakeLatency.map { "eventfd fired \(format($0)) after an access, count \(cycle.wakeCount.map(String.init) ?? "?")" }
                                          ?? "eventfd did not fire after an access") + "\n"
            let stayedAwake = cycle.timeToSuspend != nil && cycle.wakeLatency != nil && cycle.afterWake.runtimeStatus != .suspended
            out += "    after wake   \(describe(cycle.afterWake))" + (stayedAwake ? ": stayed awake, as a one-shot entry should" : "") + "\n"
        }
        if verdict.manageable {
            out += "verdict: vfio-powerd can manage this device\n"
        } else {
            out += "verdict: vfio-powerd cannot manage this device:\n"
            for problem in verdict.problems { out += "  - \(problem)\n" }
        }
        return out
    }

    static func describe(_ view: PowerView) -> String {
        var parts: [String] = []
        if let status = view.runtimeStatus { parts.append("runtime \(status)") }
        if let state = view.powerState { parts.append(state.description) }
        if let control = view.powerControl { parts.append("control \(control)") }
        if let d3cold = view.d3coldAllowed { parts.append(d3cold ? "d3cold allowed" : "d3cold forbidden") }
        if let suspended = view.runtimeSuspendedTime { parts.append("suspended \(format(suspended)) in total") }
        return parts.isEmpty ? "no power attributes in sysfs" : parts.joined(separator: ", ")
    }

    static func format(_ duration: Duration) -> String {
        let microseconds = Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
        if microseconds < 1000 { return String(format: "%.0f µs", microseconds) }
        if microseconds < 1e6 { return String(format: "%.1f ms", microseconds / 1000) }
        return String(format: "%.2f s", microseconds / 1e6)
    }
}

/// The JSON form of the report: stable keys, durations in microseconds.
struct ProbeJSON: Encodable {
    struct View: Encodable {
        var runtimeStatus: String?
        var powerState: String?
        var powerControl: String?
        var d3coldAllowed: Bool?
        var runtimeSuspendedMs: Int64?
        var runtimeActiveMs: Int64?
        init(_ view: PowerView) {
            runtimeStatus = view.runtimeStatus?.description
            powerState = view.powerState?.description
            powerControl = view.powerControl?.description
            d3coldAllowed = view.d3coldAllowed
            runtimeSuspendedMs = view.runtimeSuspendedTime?.milliseconds
            runtimeActiveMs = view.runtimeActiveTime?.milliseconds
        }
    }
    struct Cycle: Encodable {
        var armCallUsec: Int64
        var timeToSuspendUsec: Int64?
        var armed: View
        var wakeLatencyUsec: Int64?
        var wakeCount: UInt64?
        var afterWake: View
        var extraSignals: UInt64?
    }
    var device: String
    var driver: String
    var features: [String: String]
    var before: View
    var opened: View
    var cycle: Cycle?
    var manageable: Bool
    var problems: [String]

    init(_ report: LowPowerProbe.Report, _ verdict: ProbeVerdict) {
        device = report.address.description
        driver = report.driver
        features = Dictionary(uniqueKeysWithValues: LowPowerFeature.allCases.map {
            ($0.description, report.support.refusals[$0]?.symbolicName ?? "supported")
        })
        before = View(report.before)
        opened = View(report.opened)
        cycle = report.cycle.map {
            Cycle(armCallUsec: $0.armCall.microseconds, timeToSuspendUsec: $0.timeToSuspend?.microseconds, armed: View($0.armed),
                  wakeLatencyUsec: $0.wakeLatency?.microseconds, wakeCount: $0.wakeCount, afterWake: View($0.afterWake),
                  extraSignals: $0.extraSignals)
        }
        manageable = verdict.manageable
        problems = verdict.problems
    }

    func encoded() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}


func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
