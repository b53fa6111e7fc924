import ArgumentParser
import ControlProtocol
import Foundation
import PowerCtlKit
import PowerPolicy
import VFIO

/// Options every command that talks to the daemon shares.
struct DaemonOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The daemon's control socket.", valueName: "path"))
    var socket = ManagerInterface.defaultSocketPath

    func client() throws -> ManagerClient {
        do {
            return try ManagerClient(socketPath: socket)
        } catch {
            throw Failure(error)
        }
    }
}

/// A ControlClientError on its way out: the message on stderr, its exit status.
struct Failure: Error {
    let error: ControlClientError
    init(_ error: ControlClientError) { self.error = error }
}

/// Runs `body`, turning the daemon's refusals into a message and an exit status.
func talking<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let failure as Failure {
        printError("vfio-powerctl: \(failure.error)")
        throw ExitCode(failure.error.exitStatus)
    } catch let error as ControlClientError {
        printError("vfio-powerctl: \(error)")
        throw ExitCode(error.exitStatus)
    }
}

func nowRealtimeMicroseconds() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// A PCI address argument, checked before anything is sent.
func parseAddress(_ text: String) throws -> PCIAddress {
    switch PCIAddress.parse(text) {
    case .success(let address): return address
    case .failure(let error): throw ValidationError(error.description)
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show every managed device: state, wakes, last wake, share of time in low power.")
    @OptionGroup var daemon: DaemonOptions
    @Flag(help: "Print the devices and the daemon's statistics as JSON.") var json = false

    func run() throws {
        try talking {
            let client = try daemon.client()
            let devices = try client.listDevices()
            let statistics = try client.statistics()
            if json {
                struct Output: Encodable { var statistics: StatisticsRecord; var devices: [DeviceRecord] }
                try printJSON(Output(statistics: statistics, devices: devices))
            } else {
                print(Rendering.statusTable(devices, status: statistics.status, nowRealtimeUsec: nowRealtimeMicroseconds()), terminator: "")
            }
        }
    }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show everything the daemon knows about one device.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The device's PCI address.") var device: String
    @Flag(help: "Print the device as JSON.") var json = false

    func run() throws {
        let address = try parseAddress(device)
        try talking {
            let record = try daemon.client().device("\(address)")
            if json { try printJSON(record) } else { print(Rendering.detail(record, nowRealtimeUsec: nowRealtimeMicroseconds()), terminator: "") }
        }
    }
}

struct Monitor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print each device's state as it changes, until interrupted.",
        discussion: "First the current state of every device, then one line (or JSON object) per change.")
    @OptionGroup var daemon: DaemonOptions
    @Flag(help: "Print one JSON object per line.") var json = false

    func run() throws {
        try talking {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            try daemon.client().monitor { record in
                // Written straight to fd 1, unbuffered: a monitor piped into another program
                // must show each change as it happens.
                let line = json ? (try? encoder.encode(record)).map { String(decoding: $0, as: UTF8.self) } ?? ""
                                : Rendering.monitorLine(record, nowRealtimeUsec: nowRealtimeMicroseconds())
                FileHandle.standardOutput.write(Data((line + "\n").utf8))
            }
            // The stream ends only when the daemon closes it (stopping).
            throw ControlClientError.failed("vfio-powerd closed the monitor stream (it is stopping or restarting)")
        }
    }
}

struct Arm: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Put a device into low power now.",
        discussion: "A device that is awake (held by wake, waiting to re-arm, backing off) is armed at once; one that failed or went missing is opened again. Needs root or the daemon's admin_group.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The device's PCI address.") var device: String

    func run() throws {
        let address = try parseAddress(device)
        try talking {
            let record = try daemon.client().arm("\(address)")
            guard [.lowPower, .arming, .opening].contains(record.state) else {
                // Disabled, unsupported, or it failed again on the way: say what it is.
                throw ControlClientError.failed("\(record.address) was not armed: it is \(Rendering.state(record))"
                                                + (record.lastError.map { " (\($0))" } ?? ""))
            }
            print("\(record.address): \(Rendering.state(record))")
        }
    }
}

struct Wake: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take a device out of low power now and keep it awake.",
        discussion: "Without --for the device stays awake until `vfio-powerctl arm`. Needs root or the daemon's admin_group.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The device's PCI address.") var device: String
    @Option(name: .customLong("for"), help: ArgumentHelp("How long to keep it awake, e.g. 10m or 1h30m (at most 7 days).", valueName: "duration"))
    var hold: String?

    func run() throws {
        let address = try parseAddress(device)
        var seconds: Int64?
        if let hold {
            switch DurationText.parse(hold) {
            case .success(let duration):
                seconds = max(1, duration.components.seconds)
            case .failure(let error):
                throw ValidationError("--for: \(error)")
            }
        }
        try talking {
            let record = try daemon.client().wake("\(address)", seconds: seconds)
            guard record.state == .heldAwake else {
                throw ControlClientError.failed("\(record.address) was not woken: it is \(Rendering.state(record)), not open in the daemon"
                                                + (record.lastError.map { " (\($0))" } ?? ""))
            }
            print("\(record.address): \(Rendering.state(record))" + (hold.map { " for \($0)" } ?? " until `vfio-powerctl arm \(record.address)`"))
        }
    }
}

struct Adopt: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make the daemon adopt a vmm device from the VMM that holds it, now.",
        discussion: """
            For a VMM's start hook (libvirt's qemu hook, a Proxmox hookscript): the daemon sees a VMM open \
            the host's /dev/vfio/N by itself, but not one that runs with a private /dev (libvirt), which it \
            otherwise finds only by its vmm_scan_interval scan. With --pid only that process is looked at. \
            Needs root or the daemon's admin_group.
            """)
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "The device's PCI address.") var device: String
    @Option(help: "The VMM's process id.") var pid: Int32?

    func run() throws {
        let address = try parseAddress(device)
        try talking {
            var record = try daemon.client().adopt("\(address)", pid: pid)
            // The daemon looks through /proc off its loop; wait for what it found.
            let deadline = nowRealtimeMicroseconds() + 10_000_000
            while record.state == .adopting && nowRealtimeMicroseconds() < deadline {
                usleep(50_000)
                record = try daemon.client().device("\(address)")
            }
            guard record.source == .vmm else {
                throw ControlClientError.failed("\(record.address) is an `own` device: the daemon opens it itself; set source = \"vmm\" to adopt it from a VM")
            }
            guard let holder = record.holderPid else {
                throw ControlClientError.failed("\(record.address) was not adopted: no process holds it\(pid.map { " (pid \($0) does not)" } ?? "") (it is \(Rendering.state(record)))")
            }
            let who = "\(record.holderExecutable ?? "?") (pid \(holder))"
            guard record.state != .notAdopted else {
                throw ControlClientError.failed("\(record.address) is held by \(who) and was not adopted"
                                                + (record.lastError.map { ": \($0)" } ?? "; see journalctl -u vfio-powerd"))
            }
            print("\(record.address): adopted from \(who); \(Rendering.state(record))")
        }
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make the daemon read its configuration again (like systemctl reload vfio-powerd).",
        discussion: "The new configuration is validated completely first; on any error nothing changes and the problems are printed (exit status 78). Needs root or the daemon's admin_group.")
    @OptionGroup var daemon: DaemonOptions

    func run() throws {
        try talking {
            try daemon.client().reload()
            print("reloaded")
        }
    }
}
