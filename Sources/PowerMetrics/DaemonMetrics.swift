import ControlProtocol
import Prometheus

/// What one scrape learned of the daemon: its records, or that it could not be read.
public enum DaemonReading: Sendable {
    /// ListDevices and GetStatistics answered. `realtimeSeconds` is the Unix time of the
    /// reading, which turns the daemon's uptime into its start time.
    case reached(devices: [DeviceRecord], statistics: StatisticsRecord, realtimeSeconds: Int64)
    /// The daemon did not answer (not running, no permission, too slow): only
    /// `vfio_powerd_up 0`, never an HTTP error, so Prometheus records the outage as data.
    case unreachable
}

/// The daemon's records as Prometheus metrics, in the text exposition format.
///
/// A registry is made anew for every scrape, from the records of that scrape only: a device
/// that leaves the configuration leaves the output with it, and no label set outlives the
/// device it names. Reading the records wakes no device (the daemon reads only sysfs files
/// that do not resume one), so neither does a scrape.
///
/// swift-prometheus writes the samples of a registry in the order of its hash tables, which
/// changes from run to run; the text is put in a fixed order here (families as listed
/// below, samples sorted), so that it can be compared and read.
public enum DaemonMetrics {
    /// The Prometheus text format's content type (version 0.0.4).
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(_ reading: DaemonReading) -> String {
        var exposition = Exposition()
        guard case .reached(let devices, let statistics, let now) = reading else {
            exposition.gauge("vfio_powerd_up", help: "Whether the daemon answered this scrape (1) or not (0).", [([], 0)])
            return exposition.text
        }
        exposition.gauge("vfio_powerd_up", help: "Whether the daemon answered this scrape (1) or not (0).", [([], 1)])
        exposition.gauge("vfio_powerd_start_time_seconds",
                         help: "When the daemon became ready, in seconds since the Unix epoch.",
                         [([], Double(now - statistics.uptimeSeconds))])
        exposition.gauge("vfio_powerd_devices_configured",
                         help: "Devices the configuration selects (managed, idle, missing or disabled).",
                         [([], Double(statistics.devices))])
        exposition.gauge("vfio_powerd_devices",
                         help: "Devices by the daemon's status categories (a device may be in none of them: idle, in use by a guest, stopped, disabled).",
                         [([("category", "low_power")], Double(statistics.lowPower)),
                          ([("category", "awake")], Double(statistics.awake)),
                          ([("category", "missing")], Double(statistics.missing)),
                          ([("category", "failing")], Double(statistics.failing))])
        exposition.gauge("vfio_powerd_devices_flapping", help: "Devices in a flapping episode now.",
                         [([], Double(statistics.flapping))])
        exposition.counter("vfio_powerd_reloads_total",
                           help: "Configuration reloads since the daemon started, applied or rejected.",
                           [([], Double(statistics.reloads))])
        // Before the first reload the configuration in force is the one the daemon started
        // with, which loaded (a bad one refuses to start).
        exposition.gauge("vfio_powerd_last_reload_success",
                         help: "Whether the last configuration reload was applied (1) or rejected (0); 1 before any reload.",
                         [([], statistics.lastReloadSucceeded == false ? 0 : 1)])
        if let usec = statistics.lastReloadRealtimeUsec {
            exposition.gauge("vfio_powerd_last_reload_timestamp_seconds",
                             help: "When the last configuration reload finished, in seconds since the Unix epoch.",
                             [([], Double(usec) / 1_000_000)])
        }

        let labelled = devices.map { (labels: labels(of: $0), device: $0) }
        exposition.gauge("vfio_powerd_device_state",
                         help: "The device's state: 1 for the one it is in, 0 for every other.",
                         labelled.flatMap { labels, device in
                             DeviceRecord.State.allCases.map { state in (labels + [("state", state.rawValue)], state == device.state ? 1 : 0) }
                         })
        exposition.counter("vfio_powerd_device_low_power_seconds_total",
                           help: "Time the device spent in low power while the daemon managed it (the kernel's runtime_suspended_time where it has one).",
                           labelled.map { ($0.labels, Double(max(0, $0.device.lowPowerUsec)) / 1_000_000) })
        exposition.counter("vfio_powerd_device_managed_seconds_total",
                           help: "Time the daemon has managed the device.",
                           labelled.map { ($0.labels, Double(max(0, $0.device.managedUsec)) / 1_000_000) })
        exposition.counter("vfio_powerd_device_wakes_total", help: "Wakes out of one-shot low power.",
                           labelled.map { ($0.labels, Double($0.device.wakes)) })
        exposition.counter("vfio_powerd_device_self_wakes_total",
                           help: "Wakeup events the daemon caused itself (its own exit from low power), not counted as wakes.",
                           labelled.map { ($0.labels, Double($0.device.selfWakes)) })
        exposition.counter("vfio_powerd_device_arms_total", help: "Successful arms (entries into low power).",
                           labelled.map { ($0.labels, Double($0.device.arms)) })
        exposition.counter("vfio_powerd_device_flap_episodes_total", help: "Flapping episodes begun.",
                           labelled.map { ($0.labels, Double($0.device.flapEpisodes)) })
        exposition.gauge("vfio_powerd_device_flapping", help: "Whether a flapping episode is in progress (1) or not (0).",
                         labelled.map { ($0.labels, $0.device.flapping ? 1 : 0) })
        return exposition.text
    }

    /// Every device series carries these: the device, how the daemon holds it, and the VMM
    /// holding it now ("" when no process does).
    static func labels(of device: DeviceRecord) -> [(String, String)] {
        [("address", device.address), ("name", device.name ?? ""), ("source", device.source.rawValue),
         ("vmm", device.holderExecutable.map(basename) ?? "")]
    }

    private static func basename(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }
}

/// Families in the order they are added, each written by swift-prometheus from a registry
/// of its own, with its samples sorted.
private struct Exposition {
    private var families: [String] = []

    var text: String { families.joined() }

    mutating func gauge(_ name: String, help: String, _ samples: [([(String, String)], Double)]) {
        add { registry in
            for (labels, value) in samples {
                let gauge = labels.isEmpty ? registry.makeGauge(descriptor: Self.descriptor(name, help))
                                           : registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
                gauge.set(to: value)
            }
        }
    }

    /// Counters are read from the daemon, not counted here: each is made at zero and
    /// incremented once, to the daemon's value (whole numbers print without a fraction).
    mutating func counter(_ name: String, help: String, _ samples: [([(String, String)], Double)]) {
        add { registry in
            for (labels, value) in samples {
                let counter = labels.isEmpty ? registry.makeCounter(descriptor: Self.descriptor(name, help))
                                             : registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
                if value.rounded() == value, let whole = Int64(exactly: value) {
                    counter.increment(by: max(0, whole))
                } else {
                    counter.increment(by: max(0, value))
                }
            }
        }
    }

    /// The whole name, units included, is ours (vfio_powerd_..._seconds_total): the descriptor
    /// adds no namespace or unit of its own.
    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private mutating func add(_ fill: (PrometheusCollectorRegistry) -> Void) {
        let registry = PrometheusCollectorRegistry()
        fill(registry)
        let lines = registry.emitToString().split(separator: "\n", omittingEmptySubsequences: true)
        guard lines.contains(where: { !$0.hasPrefix("#") }) else { return }  // no samples, no family
        let ordered = lines.filter { $0.hasPrefix("#") } + lines.filter { !$0.hasPrefix("#") }.sorted()
        families.append(ordered.joined(separator: "\n") + "\n")
    }
}
