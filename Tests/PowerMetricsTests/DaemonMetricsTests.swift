import ControlProtocol
import PowerMetrics
import Testing

/// The exposition for literal records: the exact text an operator's Prometheus reads.
@Suite struct DaemonMetricsTests {
    static let gpu = DeviceRecord(
        address: "0000:01:00.0", name: "gpu0", source: .vmm, holderPid: 4242,
        holderExecutable: "/usr/bin/qemu-system-x86_64", state: .lowPower, wakes: 3, selfWakes: 1, arms: 4,
        flapping: false, flapEpisodes: 2, lowPowerUsec: 61_500_000, managedUsec: 120_000_000)

    static let statistics = StatisticsRecord(
        devices: 1, lowPower: 1, awake: 0, missing: 0, failing: 0, wakes: 3, selfWakes: 1, arms: 4, flapping: 0,
        status: "1 device: 1 in low power; 3 wakes", uptimeSeconds: 100, reloads: 2, lastReloadSucceeded: false,
        lastReloadRealtimeUsec: 1_700_000_050_250_000)

    @Test func oneDevice() {
        let text = DaemonMetrics.render(.reached(devices: [Self.gpu], statistics: Self.statistics, realtimeSeconds: 1_700_000_100))
        let labels = #"address="0000:01:00.0",name="gpu0",source="vmm",vmm="qemu-system-x86_64""#
        let states = DeviceRecord.State.allCases.map(\.rawValue).sorted().map {
            "vfio_powerd_device_state{\(labels),state=\"\($0)\"} \($0 == "low_power" ? "1.0" : "0.0")\n"
        }.joined()
        #expect(text == """
            # HELP vfio_powerd_up Whether the daemon answered this scrape (1) or not (0).
            # TYPE vfio_powerd_up gauge
            vfio_powerd_up 1.0
            # HELP vfio_powerd_start_time_seconds When the daemon became ready, in seconds since the Unix epoch.
            # TYPE vfio_powerd_start_time_seconds gauge
            vfio_powerd_start_time_seconds 1700000000.0
            # HELP vfio_powerd_devices_configured Devices the configuration selects (managed, idle, missing or disabled).
            # TYPE vfio_powerd_devices_configured gauge
            vfio_powerd_devices_configured 1.0
            # HELP vfio_powerd_devices Devices by the daemon's status categories (a device may be in none of them: idle, in use by a guest, stopped, disabled).
            # TYPE vfio_powerd_devices gauge
            vfio_powerd_devices{category="awake"} 0.0
            vfio_powerd_devices{category="failing"} 0.0
            vfio_powerd_devices{category="low_power"} 1.0
            vfio_powerd_devices{category="missing"} 0.0
            # HELP vfio_powerd_devices_flapping Devices in a flapping episode now.
            # TYPE vfio_powerd_devices_flapping gauge
            vfio_powerd_devices_flapping 0.0
            # HELP vfio_powerd_reloads_total Configuration reloads since the daemon started, applied or rejected.
            # TYPE vfio_powerd_reloads_total counter
            vfio_powerd_reloads_total 2
            # HELP vfio_powerd_last_reload_success Whether the last configuration reload was applied (1) or rejected (0); 1 before any reload.
            # TYPE vfio_powerd_last_reload_success gauge
            vfio_powerd_last_reload_success 0.0
            # HELP vfio_powerd_last_reload_timestamp_seconds When the last configuration reload finished, in seconds since the Unix epoch.
            # TYPE vfio_powerd_last_reload_timestamp_seconds gauge
            vfio_powerd_last_reload_timestamp_seconds 1700000050.25
            # HELP vfio_powerd_device_state The device's state: 1 for the one it is in, 0 for every other.
            # TYPE vfio_powerd_device_state gauge

            """ + states + """
            # HELP vfio_powerd_device_low_power_seconds_total Time the device spent in low power while the daemon managed it (the kernel's runtime_suspended_time where it has one).
            # TYPE vfio_powerd_device_low_power_seconds_total counter
            vfio_powerd_device_low_power_seconds_total{\(labels)} 61.5
            # HELP vfio_powerd_device_managed_seconds_total Time the daemon has managed the device.
            # TYPE vfio_powerd_device_managed_seconds_total counter
            vfio_powerd_device_managed_seconds_total{\(labels)} 120
            # HELP vfio_powerd_device_wakes_total Wakes out of one-shot low power.
            # TYPE vfio_powerd_device_wakes_total counter
            vfio_powerd_device_wakes_total{\(labels)} 3
            # HELP vfio_powerd_device_self_wakes_total Wakeup events the daemon caused itself (its own exit from low power), not counted as wakes.
            # TYPE vfio_powerd_device_self_wakes_total counter
            vfio_powerd_device_self_wakes_total{\(labels)} 1
            # HELP vfio_powerd_device_arms_total Successful arms (entries into low power).
            # TYPE vfio_powerd_device_arms_total counter
            vfio_powerd_device_arms_total{\(labels)} 4
            # HELP vfio_powerd_device_flap_episodes_total Flapping episodes begun.
            # TYPE vfio_powerd_device_flap_episodes_total counter
            vfio_powerd_device_flap_episodes_total{\(labels)} 2
            # HELP vfio_powerd_device_flapping Whether a flapping episode is in progress (1) or not (0).
            # TYPE vfio_powerd_device_flapping gauge
            vfio_powerd_device_flapping{\(labels)} 0.0

            """)
    }

    @Test func anUnreachableDaemonIsUpZeroAndNothingElse() {
        #expect(DaemonMetrics.render(.unreachable) == """
            # HELP vfio_powerd_up Whether the daemon answered this scrape (1) or not (0).
            # TYPE vfio_powerd_up gauge
            vfio_powerd_up 0.0

            """)
    }

    /// No device, no device series; before any reload, no reload time and success 1.
    @Test func noDevicesNoReloadYet() {
        var statistics = Self.statistics
        statistics.devices = 0
        statistics.reloads = 0
        statistics.lastReloadSucceeded = nil
        statistics.lastReloadRealtimeUsec = nil
        let text = DaemonMetrics.render(.reached(devices: [], statistics: statistics, realtimeSeconds: 1_700_000_100))
        #expect(!text.contains("vfio_powerd_device_"))
        #expect(!text.contains("vfio_powerd_last_reload_timestamp_seconds"))
        #expect(text.contains("\nvfio_powerd_last_reload_success 1.0\n"))
        #expect(text.contains("\nvfio_powerd_reloads_total 0\n"))
    }

    /// Every device has one series per state, whatever it is doing, so none appears or
    /// disappears when it changes state; a device without name or holder has empty labels;
    /// label values are escaped.
    @Test func everyDeviceHasEveryStateAndEscapedLabels() {
        let odd = DeviceRecord(address: "0000:02:00.0", name: #"a "quoted" \ name"#, source: .own, state: .failed)
        let text = DaemonMetrics.render(.reached(devices: [Self.gpu, odd], statistics: Self.statistics, realtimeSeconds: 0))
        let states = text.split(separator: "\n").filter { $0.hasPrefix("vfio_powerd_device_state{") }
        #expect(states.count == 2 * DeviceRecord.State.allCases.count)
        #expect(states.filter { $0.hasSuffix(" 1.0") }.count == 2)
        #expect(text.contains(#"vfio_powerd_device_state{address="0000:02:00.0",name="a \"quoted\" \\ name",source="own",vmm="",state="failed"} 1.0"#))
    }

    /// Output is in the same order on every run (the library's own order follows hash seeds).
    @Test func theOrderIsFixed() {
        let reading = DaemonReading.reached(devices: [Self.gpu], statistics: Self.statistics, realtimeSeconds: 1)
        #expect(DaemonMetrics.render(reading) == DaemonMetrics.render(reading))
    }
}
