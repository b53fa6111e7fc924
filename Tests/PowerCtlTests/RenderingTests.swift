import ControlProtocol
import PowerCtlKit
import XCTest

/// What operators read, exactly: the status table, the detail view and monitor lines, from
/// literal records and a fixed "now".
final class RenderingTests: XCTestCase {
    // 2026-11-22 10:00:00 UTC.
    let now: Int64 = 1_795_341_600_000_000

    func testStatusTable() {
        let devices = [
            DeviceRecord(address: "0000:00:02.0", name: "nic", state: .waitingToRearm, wakes: 3, arms: 4,
                         lowPowerUsec: 91_000_000, managedUsec: 100_000_000, lastWakeRealtimeUsec: now - 2_000_000,
                         nextArmRealtimeUsec: now + 28_000_000, configuredAt: "/etc/vfio-powerd/devices.d/10-lab.conf:3"),
            DeviceRecord(address: "0000:00:03.0", name: "disk", state: .lowPower, arms: 1,
                         lowPowerUsec: 99_400_000, managedUsec: 100_000_000),
            DeviceRecord(address: "0000:01:00.0", driver: nil, state: .gone, arms: 0, lastError: "open: ENODEV"),
            DeviceRecord(address: "0000:02:00.0", name: "flappy", state: .lowPower, wakes: 125, arms: 126, flapping: true,
                         flapEpisodes: 1, lowPowerUsec: 10_000_000, managedUsec: 7_200_000_000,
                         lastWakeRealtimeUsec: now - 3 * 3_600_000_000),
        ]
        XCTAssertEqual(Rendering.statusTable(devices, status: "4 devices: 2 in low power, 1 awake, 1 missing; 128 wakes; 1 flapping",
                                             nowRealtimeUsec: now), """
            vfio-powerd: 4 devices: 2 in low power, 1 awake, 1 missing; 128 wakes; 1 flapping
            DEVICE        NAME    SOURCE  MODE     STATE                 HOLDER  WAKES  LAST WAKE  LOW POWER
            0000:00:02.0  nic     own     oneshot  waiting to re-arm     -           3     2s ago        91%
            0000:00:03.0  disk    own     oneshot  low power             -           0          -        99%
            0000:01:00.0  -       own     oneshot  gone                  -           0          -          -
            0000:02:00.0  flappy  own     oneshot  low power (flapping)  -         125     3h ago         0%

            """)
    }

    /// A name from a configuration file never reaches the terminal as an escape sequence or a
    /// line break: every view escapes control characters.
    func testControlCharactersInWhatTheDaemonSaysAreEscaped() {
        let device = DeviceRecord(address: "0000:00:02.0", name: "nic\u{1B}]0;pwned\u{07}\ninjected\u{202E}", state: .lowPower,
                                  arms: 1, configuredAt: "/etc/vfio-powerd/devices.d/10-lab.conf:3")
        let escaped = "nic\\u{1B}]0;pwned\\u{7}\\u{A}injected\\u{202E}"
        let table = Rendering.statusTable([device], status: "1 device: 1 in low power; 0 wakes", nowRealtimeUsec: now)
        let detail = Rendering.detail(device, nowRealtimeUsec: now)
        let monitor = Rendering.monitorLine(device, nowRealtimeUsec: now)
        for output in [table, detail, monitor] {
            XCTAssertFalse(output.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x202E }, output)
            XCTAssertTrue(output.contains(escaped), output)
        }
        XCTAssertEqual(table.split(separator: "\n").count, 3, "the status line, the header and one row")
        XCTAssertEqual(Rendering.shown("plain: déjà vu"), "plain: déjà vu")
    }

    func testStatusWithoutDevices() {
        XCTAssertEqual(Rendering.statusTable([], status: "no devices configured", nowRealtimeUsec: now), """
            vfio-powerd: no devices configured
            no devices configured (see /etc/vfio-powerd/devices.d)

            """)
    }

    func testDetail() {
        let device = DeviceRecord(address: "0000:00:02.0", name: "nic", state: .heldAwake, wakes: 3, selfWakes: 1, arms: 4,
                                  flapEpisodes: 1, lowPowerUsec: 91_500_000, managedUsec: 100_000_000,
                                  lastWakeRealtimeUsec: now - 125_000_000, nextArmRealtimeUsec: now + 600_000_000,
                                  configuredAt: "/etc/vfio-powerd/devices.d/10-lab.conf:3")
        XCTAssertEqual(Rendering.detail(device, nowRealtimeUsec: now), """
            Device:        0000:00:02.0 (nic)
            Driver:        vfio-pci
            Source:        own
            Mode:          oneshot
            State:         held awake
            Next arm:      in 10m00s
            Wakes:         3 (+1 caused by the daemon itself)
            Last wake:     2m ago
            Arms:          4
            Flapping:      no (1 episodes so far)
            In low power:  1m31s of 1m40s managed (92%)
            Last error:    none
            Configured at: /etc/vfio-powerd/devices.d/10-lab.conf:3

            """)
    }

    func testMonitorLines() {
        XCTAssertEqual(Rendering.monitorLine(DeviceRecord(address: "0000:00:02.0", name: "nic", state: .waitingToRearm, wakes: 1,
                                                          nextArmRealtimeUsec: now + 30_000_000), nowRealtimeUsec: now),
                       "10:00:00 0000:00:02.0 (nic) waiting to re-arm, arms in 30s; 1 wake")
        XCTAssertEqual(Rendering.monitorLine(DeviceRecord(address: "0000:01:00.0", state: .gone, wakes: 2, lastError: "open: ENODEV"),
                                             nowRealtimeUsec: now + 61_000_000),
                       "10:01:01 0000:01:00.0 gone; 2 wakes; open: ENODEV")
    }

    /// A device a VM holds: its holder in every view, and the kernel's own words in show.
    func testVMMDevice() {
        var gpu = DeviceRecord(address: "0000:01:00.0", name: "gpu0", source: .vmm, state: .lowPower, wakes: 2, arms: 3,
                               lowPowerUsec: 50_000_000, managedUsec: 100_000_000, configuredAt: "/etc/vfio-powerd/devices.d/10-gpu.conf:2")
        gpu.holderPid = 4242
        gpu.holderExecutable = "/usr/bin/qemu-system-x86_64"
        gpu.powerState = "D3hot"
        gpu.runtimeStatus = "suspended"
        gpu.runtimeSuspendedMs = 61_000
        let idle = DeviceRecord(address: "0000:02:00.0", source: .vmm, state: .idle, arms: 0)
        XCTAssertEqual(Rendering.statusTable([gpu, idle], status: "2 devices: 1 in low power, 1 idle (no VM); 2 wakes", nowRealtimeUsec: now), """
            vfio-powerd: 2 devices: 1 in low power, 1 idle (no VM); 2 wakes
            DEVICE        NAME  SOURCE  MODE     STATE      HOLDER                         WAKES  LAST WAKE  LOW POWER
            0000:01:00.0  gpu0  vmm     oneshot  low power  qemu-system-x86_64 (pid 4242)      2          -        50%
            0000:02:00.0  -     vmm     oneshot  idle       -                                  0          -          -

            """)
        let detail = Rendering.detail(gpu, nowRealtimeUsec: now)
        XCTAssertTrue(detail.contains("Held by:       qemu-system-x86_64 (pid 4242)\n"), detail)
        XCTAssertTrue(detail.contains("Kernel:        power_state D3hot, runtime_status suspended, suspended for 1m01s in all\n"), detail)
        XCTAssertEqual(Rendering.monitorLine(gpu, nowRealtimeUsec: now), "10:00:00 0000:01:00.0 (gpu0) low power (qemu-system-x86_64 (pid 4242)); 2 wakes")
    }
}
