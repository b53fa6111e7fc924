import Glibc
import ControlProtocol
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import PowerCtlKit
import SystemdTesting
import VFIO
import XCTest

/// vfio-powerd-exporter as Prometheus sees it: the real daemon (simulated devices) serves its
/// control socket, the built exporter binary reads it, Debian's promtool checks the output
/// and the alert rules, and a real Prometheus server scrapes the exporter every second; its
/// query API must show the wakes the test caused and the daemon's time in low power.
///
/// Needs /usr/bin/prometheus and /usr/bin/promtool (Debian's `prometheus`; `make deps`
/// installs it). Without them the test is skipped on a developer's machine and fails under
/// CI=true.
final class PrometheusScrapeTests: XCTestCase {
    let nic = "0000:00:02.0"
    let nvme = "0000:00:03.0"
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let rules = repository.appendingPathComponent("docs/alerts/vfio-powerd.rules.yml")

    private var processes: [Process] = []
    private var folder: URL!

    override func setUpWithError() throws {
        for tool in ["/usr/bin/prometheus", "/usr/bin/promtool"] where !FileManager.default.isExecutableFile(atPath: tool) {
            let message = "\(tool) is missing: install Debian's prometheus package (make deps does)"
            if ProcessInfo.processInfo.environment["CI"] == "true" {
                XCTFail(message)
                throw SetupFailure(description: message)
            }
            throw XCTSkip(message)
        }
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("prometheus-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDown() {
        for process in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if let folder { try? FileManager.default.removeItem(at: folder) }
    }

    func testTheAlertRulesAreValid() throws {
        let check = try runProcess("/usr/bin/promtool", ["check", "rules", Self.rules.path])
        XCTAssertEqual(check.status, 0, check.output)
        XCTAssertTrue(check.output.contains("SUCCESS"), check.output)
    }

    func testPrometheusScrapesTheExporter() throws {
        let daemon = try DaemonHarness(mainConfig: "[defaults]\nsource = \"own\"\nrearm_delay = \"0s\"\n", devices: ["10-lab.conf": """
            [[device]]
            address = "\(nic)"
            name = "nic"

            [[device]]
            address = "\(nvme)"
            """])
        let (a, _) = (try daemon.plug(nic), try daemon.plug(nvme))
        try daemon.start()
        try daemon.startControl()

        // The exporter on a free loopback port, reading the harness's control socket.
        let exporterPort = try freePort()
        let exporter = try start(Self.binary("vfio-powerd-exporter").path,
                                 ["--listen", "127.0.0.1:\(exporterPort)", "--socket", daemon.socketPath, "--timeout", "2"],
                                 log: "exporter.log")
        let metricsURL = URL(string: "http://127.0.0.1:\(exporterPort)/metrics")!
        let first = try XCTUnwrap(waitFor(timeout: 10) { try? String(decoding: Data(contentsOf: metricsURL), as: UTF8.self) },
                                  "the exporter answers within 10s: \(log("exporter.log"))")
        XCTAssertTrue(exporter.isRunning)
        XCTAssertTrue(first.contains("\nvfio_powerd_up 1.0\n"), first)

        // Three wakes of the nic, each re-armed (rearm_delay 0s) before the next.
        for wake in 1...3 {
            daemon.device(a).access()
            XCTAssertTrue(daemon.waitUntil { daemon.device(a).calls(.arm) == wake + 1 && daemon.device(a).engagement == .oneShot },
                          "re-armed after wake \(wake)")
        }

        // The kernel's count of suspended time (power/runtime_suspended_time, milliseconds)
        // moves on by 61.5s for the nic: 1200 when the daemon started managing it.
        try daemon.tree.set("power/runtime_suspended_time", "62700", on: a)

        // What the exporter writes passes Prometheus' own linter.
        let text = try String(decoding: Data(contentsOf: metricsURL), as: UTF8.self)
        let output = folder.appendingPathComponent("metrics.txt")
        try Data(text.utf8).write(to: output)
        let lint = try runProcess("/bin/sh", ["-c", "/usr/bin/promtool check metrics < \(output.path)"])
        XCTAssertEqual(lint.status, 0, "promtool check metrics: \(lint.output)\n\(text)")
        XCTAssertEqual(lint.output, "", "promtool has no complaint")

        // A real Prometheus server, scraping every second, with the example alert rules loaded.
        let prometheusPort = try freePort()
        let config = folder.appendingPathComponent("prometheus.yml")
        try Data("""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
              evaluation_interval: 1s
            rule_files:
              - \(Self.rules.path)
            scrape_configs:
              - job_name: vfio-powerd
                static_configs:
                  - targets: ['127.0.0.1:\(exporterPort)']
            """.utf8).write(to: config)
        try start("/usr/bin/prometheus", ["--config.file=\(config.path)", "--storage.tsdb.path=\(folder.appendingPathComponent("data").path)",
                                          "--web.listen-address=127.0.0.1:\(prometheusPort)", "--log.level=warn"],
                  log: "prometheus.log")
        func query(_ expression: String) -> [(labels: [String: String], value: Double)]? {
            var components = URLComponents(string: "http://127.0.0.1:\(prometheusPort)/api/v1/query")!
            components.queryItems = [URLQueryItem(name: "query", value: expression)]
            guard let data = try? Data(contentsOf: components.url!),
                  let reply = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  reply["status"] as? String == "success",
                  let result = (reply["data"] as? [String: Any])?["result"] as? [[String: Any]] else { return nil }
            return result.compactMap { sample in
                guard let labels = sample["metric"] as? [String: String], let pair = sample["value"] as? [Any],
                      let value = (pair.last as? String).flatMap(Double.init) else { return nil }
                return (labels, value)
            }
        }

        let wakes = try XCTUnwrap(waitFor(timeout: 30) { () -> [(labels: [String: String], value: Double)]? in
            guard let result = query("vfio_powerd_device_wakes_total"), result.count == 2 else { return nil }
            return result
        }, "Prometheus has scraped both devices' wakes within 30s: \(log("prometheus.log"))")
        print("Prometheus: vfio_powerd_device_wakes_total = \(wakes.map { "\($0.labels["address"] ?? "?") \($0.value)" })")
        let byAddress = Dictionary(uniqueKeysWithValues: wakes.map { ($0.labels["address"] ?? "?", $0) })
        XCTAssertEqual(byAddress[nic]?.value, 3, "\(wakes)")
        XCTAssertEqual(byAddress[nic]?.labels["name"], "nic")
        XCTAssertEqual(byAddress[nic]?.labels["source"], "own")
        XCTAssertEqual(byAddress[nic]?.labels["vmm"], nil, "an empty label is no label to Prometheus")
        XCTAssertEqual(byAddress[nic]?.labels["job"], "vfio-powerd")
        XCTAssertEqual(byAddress[nvme]?.value, 0, "no wakes: \(wakes)")
        XCTAssertEqual(byAddress[nvme]?.labels["name"], nil, "no name")

        XCTAssertEqual(query("vfio_powerd_up")?.map(\.value), [1])
        XCTAssertEqual(query(#"vfio_powerd_device_state{state="low_power"} == 1"#)?.count, 2, "both in low power")
        XCTAssertEqual(query("count(vfio_powerd_device_state)")?.first?.value, Double(2 * DeviceRecord.State.allCases.count))
        XCTAssertEqual(query(#"vfio_powerd_devices{category="low_power"}"#)?.map(\.value), [2])
        XCTAssertEqual(query("vfio_powerd_device_arms_total{name=\"nic\"}")?.map(\.value), [4])

        // Time in low power: the kernel's counter since the daemon took the device, 61.5s for
        // the nic, none for the nvme; the daemon's own record says the same.
        let residency = try XCTUnwrap(query("vfio_powerd_device_low_power_seconds_total"))
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: residency.map { ($0.labels["address"] ?? "?", $0.value) }), [nic: 61.5, nvme: 0])
        let client = try ManagerClient(socketPath: daemon.socketPath)
        XCTAssertEqual(try client.listDevices().first { $0.address == nic }?.lowPowerUsec, 61_500_000)
        let managed = try XCTUnwrap(query(#"vfio_powerd_device_managed_seconds_total{name="nic"}"#)?.first?.value)
        XCTAssertGreaterThan(managed, 0)

        // The example rules loaded and were evaluated against these series.
        let rules = try XCTUnwrap(Data(contentsOf: URL(string: "http://127.0.0.1:\(prometheusPort)/api/v1/rules")!))
        let rulesText = String(decoding: rules, as: UTF8.self)
        XCTAssertTrue(rulesText.contains("VFIOPowerdDeviceFlapping") && rulesText.contains("\"health\":\"ok\""), rulesText)
        XCTAssertFalse(rulesText.contains("\"health\":\"err\""), rulesText)

        // The daemon goes away: the scrape still succeeds, with vfio_powerd_up 0 and no device series.
        daemon.stopControl()
        let down = try XCTUnwrap(waitFor(timeout: 30) { () -> Bool? in
            query("vfio_powerd_up")?.first?.value == 0 ? true : nil
        }, "vfio_powerd_up drops to 0")
        XCTAssertTrue(down)
        XCTAssertEqual(query("up{job=\"vfio-powerd\"}")?.map(\.value), [1], "the scrape itself succeeds")
        let downText = try String(decoding: Data(contentsOf: metricsURL), as: UTF8.self)
        XCTAssertFalse(downText.contains("vfio_powerd_device_"), downText)
    }

    // MARK: Plumbing

    /// An executable built next to the test bundle.
    static func binary(_ name: String) -> URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name)
    }

    /// A loopback port nothing listens on now (the kernel's pick for port 0).
    private func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SetupFailure(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw SetupFailure(description: "bind: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @discardableResult
    private func start(_ path: String, _ arguments: [String], log: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let output = folder.appendingPathComponent(log)
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes.append(process)
        return process
    }

    private func log(_ name: String) -> String {
        (try? String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)) ?? "(no \(name))"
    }

    /// Polls `body` every 100ms until it gives a value; nil after `timeout` seconds.
    private func waitFor<T>(timeout: TimeInterval, _ body: () throws -> T?) rethrows -> T? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if let value = try body() { return value }
            usleep(100_000)
        } while Date() < deadline
        return nil
    }
}

/// A set-up step that failed, in words.
private struct SetupFailure: Error, CustomStringConvertible {
    let description: String
}
