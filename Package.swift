// swift-tools-version:6.1
//
// vfio-powerd: a systemd service that keeps idle vfio-pci devices in their lowest
// power state through the kernel's VFIO_DEVICE_FEATURE_LOW_POWER_* ioctls.
//
// Modules, from the kernel up:
//   CVFIO          C shim: <linux/vfio.h> and <sys/eventfd.h> facts as constants (no magic numbers), epoll, malloc_trim
//   CSystemd       libsystemd (sd_notify, sd_journal_sendv), found through pkg-config
//   VFIO           typed Linux layer: PCI addresses, the group path, low-power ioctls, eventfd, sysfs
//   VFIOWords      the VFIO layer's errors in words: what the daemon and vfio-powerctl print
//   PowerPolicy    pure core: policy model and the per-device state machine (no I/O, no clock, no logs;
//                  swift-system for Errno only)
//   CTOML          C interface over Debian's toml++ (header-only): entries with their source positions
//   PowerConfig    TOML configuration: files, precedence, validation, device selection against sysfs
//   Systemd        sd_notify and a swift-log handler over the journal
//   PowerDaemon    the daemon: Manager, one controller per device, the Dispatch event loop,
//                  and the control interface (io.vfiopowerd.Manager over varlink)
//   ControlProtocol io.vfiopowerd.Manager: its description (the .varlink file) and records,
//                  shared by the daemon and vfio-powerctl
//   PowerCtlKit    vfio-powerctl's view of the daemon: client, rendering
//   PowerMetrics   the daemon's records as Prometheus metrics (pure: records in, text out)
//   vfio-powerd-exporter  serves /metrics over HTTP (SwiftNIO), reading the daemon over varlink
//   VFIOSimulator  test double: a simulated vfio-pci device over real eventfds (tests and
//                  benchmarks only; Tests/Doubles)
//   SystemdTesting test double: a fake systemd notify socket (tests only; Tests/Doubles)
//   Varlink        the varlink protocol: a server on the daemon's Dispatch queue, and a client
//   CVarlink       recvmsg(2) with SCM_RIGHTS (file descriptors passed to the server)
import PackageDescription

let package = Package(
    name: "vfio-powerd",
    products: [
        .executable(name: "vfio-powerd", targets: ["vfio-powerd"]),
        .executable(name: "vfio-powerctl", targets: ["vfio-powerctl"]),
        .executable(name: "vfio-powerd-exporter", targets: ["vfio-powerd-exporter"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        // The exporter: Prometheus' text format, and an HTTP server.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .target(name: "CVFIO"),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .target(name: "VFIO", dependencies: [
            "CVFIO",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Errno only (the core classifies what the kernel answered; it calls nothing).
        // Reasons in, sentences out: the VFIO layer's errors as operators read them, for the
        // daemon and vfio-powerctl alike (which does not link the daemon).
        .target(name: "VFIOWords", dependencies: [
            "VFIO",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "PowerPolicy", dependencies: [
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // recvmsg with SCM_RIGHTS: the one control-message layout the varlink server needs.
        .target(name: "CVarlink"),
        .target(name: "Varlink", dependencies: ["CVarlink"]),
        // toml++ from libtomlplusplus-dev (make deps), included header-only: nothing of it is
        // linked or needed at run time, so the binaries copied into the lab's VMs stay as they are.
        .target(name: "CTOML"),
        .target(name: "PowerConfig", dependencies: [
            "PowerPolicy", "VFIO", "VFIOWords", "CTOML",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "Systemd", dependencies: [
            "CSystemd",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The control protocol, written once: the interface file and its Codable records.
        .target(name: "ControlProtocol", dependencies: ["Varlink"], resources: [
            .embedInCode("io.vfiopowerd.Manager.varlink"),
        ]),
        .target(name: "PowerDaemon", dependencies: [
            "VFIO", "VFIOWords", "CVFIO", "PowerPolicy", "PowerConfig", "Systemd", "Varlink", "ControlProtocol",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // What vfio-powerctl knows of the daemon: a client, and how to show its records.
        .target(name: "PowerCtlKit", dependencies: ["Varlink", "ControlProtocol"]),
        // The daemon's records as Prometheus metrics: no sockets, so it is tested with literal records.
        .target(name: "PowerMetrics", dependencies: [
            "ControlProtocol",
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // Plays systemd's side of sd_notify in tests (a datagram socket for NOTIFY_SOCKET).
        .target(name: "SystemdTesting", dependencies: ["Varlink"], path: "Tests/Doubles/SystemdTesting"),
        .target(name: "VFIOSimulator", dependencies: [
            "VFIO", "CVFIO",
            .product(name: "SystemPackage", package: "swift-system"),
        ], path: "Tests/Doubles/VFIOSimulator"),
        .executableTarget(name: "vfio-powerd", dependencies: [
            "PowerDaemon", "PowerConfig", "ControlProtocol",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The benchmark harness (make bench): the real Manager with simulated devices, in release.
        .executableTarget(name: "vfio-powerd-bench", dependencies: [
            "PowerDaemon", "PowerConfig", "PowerPolicy", "VFIO", "VFIOSimulator", "Varlink",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ], path: "bench/Sources/vfio-powerd-bench"),
        .executableTarget(name: "vfio-powerctl", dependencies: [
            "VFIO", "VFIOWords", "PowerConfig", "PowerPolicy", "PowerCtlKit", "Varlink", "ControlProtocol",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Serves /metrics on its own (socket-activated) unit: the daemon keeps PrivateNetwork=yes.
        .executableTarget(name: "vfio-powerd-exporter", dependencies: [
            "PowerMetrics", "PowerCtlKit", "ControlProtocol", "Systemd",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),

        .testTarget(name: "VFIOTests", dependencies: [
            "VFIO", "VFIOWords", "CVFIO", "VFIOSimulator",
            .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "PowerPolicyTests", dependencies: [
            "PowerPolicy",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "PowerConfigTests", dependencies: [
            "PowerConfig", "PowerPolicy", "VFIO", "VFIOSimulator",
            .product(name: "PropertyBased", package: "swift-property-based"),
        ], resources: [.copy("Fixtures")]),
        .testTarget(name: "SystemdTests", dependencies: [
            "Systemd", "CSystemd", "SystemdTesting",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "PowerDaemonTests", dependencies: [
            "PowerDaemon", "VFIOSimulator", "PowerPolicy", "PowerConfig", "Systemd", "SystemdTesting", "VFIO",
            "PowerCtlKit", "Varlink", "ControlProtocol",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ], exclude: ["varlink_client.py"]),
        .testTarget(name: "VarlinkTests", dependencies: ["Varlink"]),
        .testTarget(name: "PowerCtlTests", dependencies: ["PowerCtlKit", "ControlProtocol"], exclude: ["Fixtures"]),
        .testTarget(name: "ControlProtocolTests", dependencies: ["ControlProtocol", "Varlink"]),
        .testTarget(name: "PowerMetricsTests", dependencies: ["PowerMetrics", "ControlProtocol"]),
        // Real-kernel tests: they run inside the VM lab's guest (lab/lab.sh kernel-tests),
        // where /dev/vfio exists; `swift test` on the host skips this target (see Makefile).
        .testTarget(name: "KernelTests", dependencies: ["VFIO", "VFIOWords", "CVFIO"]),
    ],
    swiftLanguageModes: [.v6],
    // toml++ 3 needs C++17.
    cxxLanguageStandard: .cxx17
)
