// swift-tools-version:6.1
//
// vfio-powerd: a systemd service that keeps idle vfio-pci devices in their lowest
// power state through the kernel's VFIO_DEVICE_FEATURE_LOW_POWER_* ioctls.
//
// Modules, from the kernel up:
//   CVFIO          C shim: <linux/vfio.h> and <sys/eventfd.h> facts as constants (no magic numbers), epoll, malloc_trim
//   CSystemd       libsystemd (sd_notify, sd_journal_sendv), found through pkg-config
//   VFIO           typed Linux layer: PCI addresses, the group path, low-power ioctls, eventfd, sysfs
//   PowerPolicy    pure core: policy model and the per-device state machine (no I/O, no clock, no logs)
//   CTOML          C interface over Debian's toml++ (header-only): entries with their source positions
//   PowerConfig    TOML configuration: files, precedence, validation, device selection against sysfs
//   Systemd        sd_notify and a swift-log handler over the journal
//   PowerDaemon    the daemon: Manager, one controller per device, the Dispatch event loop,
//                  and the control interface (io.vfiopowerd.Manager over varlink)
//   PowerCtlKit    vfio-powerctl's view of the daemon: records, client, rendering
//   VFIOSimulator  a simulated vfio-pci device over real eventfds (tests and benchmarks only)
//   SystemdTesting a fake systemd notify socket (tests only)
//   Varlink        the varlink protocol: a server on the daemon's Dispatch queue, and a client
//   CVarlink       recvmsg(2) with SCM_RIGHTS (file descriptors passed to the server)
import PackageDescription

let package = Package(
    name: "vfio-powerd",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "vfio-powerd", targets: ["vfio-powerd"]),
        .executable(name: "vfio-powerctl", targets: ["vfio-powerctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        .target(name: "CVFIO"),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .target(name: "VFIO", dependencies: [
            "CVFIO",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "PowerPolicy"),
        // recvmsg with SCM_RIGHTS: the one control-message layout the varlink server needs.
        .target(name: "CVarlink"),
        .target(name: "Varlink", dependencies: ["CVarlink"]),
        // toml++ from libtomlplusplus-dev (make deps), included header-only: nothing of it is
        // linked or needed at run time, so the binaries copied into the lab's VMs stay as they are.
        .target(name: "CTOML"),
        .target(name: "PowerConfig", dependencies: [
            "PowerPolicy", "VFIO", "CTOML",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "Systemd", dependencies: [
            "CSystemd",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "PowerDaemon", dependencies: [
            "VFIO", "CVFIO", "PowerPolicy", "PowerConfig", "Systemd", "Varlink",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ], resources: [
            // The control interface's description: one file, served by GetInterfaceDescription.
            .embedInCode("Control/io.vfiopowerd.Manager.varlink"),
        ]),
        // What vfio-powerctl knows of the daemon: its records, a client, and how to show them.
        .target(name: "PowerCtlKit", dependencies: ["Varlink"]),
        // Plays systemd's side of sd_notify in tests (a datagram socket for NOTIFY_SOCKET).
        .target(name: "SystemdTesting"),
        .target(name: "VFIOSimulator", dependencies: [
            "VFIO", "CVFIO",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .executableTarget(name: "vfio-powerd", dependencies: [
            "PowerDaemon", "PowerConfig",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The benchmark harness (make bench): the real Manager with simulated devices, in release.
        .executableTarget(name: "vfio-powerd-bench", dependencies: [
            "PowerDaemon", "PowerConfig", "PowerPolicy", "VFIO", "VFIOSimulator",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ], path: "bench/Sources/vfio-powerd-bench"),
        .executableTarget(name: "vfio-powerctl", dependencies: [
            "VFIO", "PowerConfig", "PowerPolicy", "PowerCtlKit", "Varlink",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "VFIOTests", dependencies: [
            "VFIO", "CVFIO", "VFIOSimulator",
            .product(name: "PropertyBased", package: "swift-property-based"),
        ]),
        .testTarget(name: "PowerPolicyTests", dependencies: [
            "PowerPolicy",
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
            "PowerCtlKit", "Varlink",
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["varlink_client.py"]),
        .testTarget(name: "VarlinkTests", dependencies: ["Varlink"]),
        .testTarget(name: "PowerCtlTests", dependencies: ["PowerCtlKit"], exclude: ["Fixtures"]),
        // Real-kernel tests: they run inside the VM lab's guest (lab/lab.sh kernel-tests),
        // where /dev/vfio exists; `swift test` on the host skips this target (see Makefile).
        .testTarget(name: "KernelTests", dependencies: ["VFIO", "CVFIO"]),
    ],
    swiftLanguageModes: [.v6],
    // toml++ 3 needs C++17.
    cxxLanguageStandard: .cxx17
)
