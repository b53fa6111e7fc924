import Foundation
import PowerConfig
import PowerPolicy
import Testing
import VFIO
import VFIOSimulator

@Suite struct PrecedenceAndMaskingTests {
    @Test func etcMasksRunMasksUsrLibByFileNameAndOrderIsLexicographic() throws {
        let root = try TempConfigRoot()
        try root.write("usr/lib/vfio-powerd/vfio-powerd.conf", "[defaults]\nrearm_delay = \"5m\"\n")
        try root.write("run/vfio-powerd/vfio-powerd.conf", "[defaults]\nrearm_delay = \"1m\"\n")
        try root.write("usr/lib/vfio-powerd/devices.d/20-b.conf", "[[device]]\nname = \"vendor-b\"\naddress = \"0000:00:02.0\"\n")
        try root.write("etc/vfio-powerd/devices.d/20-b.conf", "[[device]]\nname = \"local-b\"\naddress = \"0000:00:02.0\"\n")
        try root.write("usr/lib/vfio-powerd/devices.d/10-a.conf", "[[device]]\nname = \"a\"\naddress = \"0000:00:01.0\"\n")
        try root.write("run/vfio-powerd/devices.d/30-c.conf", "[[device]]\nname = \"c\"\naddress = \"0000:00:03.0\"\n")
        let result = ConfigLoader.load(root.options())
        #expect(result.problems == [])
        #expect(result.configuration.devices.map(\.name) == ["a", "local-b", "c"])
        #expect(result.configuration.effectiveDefaults.policy.rearmDelay == .seconds(60))
        #expect(result.configuration.effectiveDefaults.source(of: .rearmDelay)
            == .file(ConfigLocation(file: "\(root.path)/run/vfio-powerd/vfio-powerd.conf", line: 2, column: 1)))
        #expect(result.configuration.files.contains(ConfigFileRecord(
            path: "\(root.path)/usr/lib/vfio-powerd/devices.d/20-b.conf",
            status: .overridden(by: "\(root.path)/etc/vfio-powerd/devices.d/20-b.conf"))))
    }

    @Test func aSymlinkToDevNullMasksAFile() throws {
        let root = try TempConfigRoot()
        try root.write("usr/lib/vfio-powerd/devices.d/10-a.conf", "[[device]]\naddress = \"0000:00:01.0\"\n")
        try root.mask("etc/vfio-powerd/devices.d/10-a.conf")
        try root.write("usr/lib/vfio-powerd/vfio-powerd.conf", "[defaults]\nmode = \"off\"\n")
        try root.mask("etc/vfio-powerd/vfio-powerd.conf")
        let result = ConfigLoader.load(root.options())
        #expect(result.problems == [])
        #expect(result.configuration.devices.isEmpty)
        #expect(result.configuration.effectiveDefaults.policy.mode == .oneShot)
        #expect(result.configuration.files.contains(ConfigFileRecord(
            path: "\(root.path)/usr/lib/vfio-powerd/devices.d/10-a.conf",
            status: .masked(by: "\(root.path)/etc/vfio-powerd/devices.d/10-a.conf"))))
    }

    @Test func noFilesAtAllMeansBuiltInDefaultsAndNoDevices() throws {
        let root = try TempConfigRoot()
        let result = ConfigLoader.load(root.options())
        #expect(result.problems == [] && result.configuration.devices.isEmpty)
        #expect(result.configuration.effectiveDefaults == .builtIn)
    }

    @Test func defaultsFromTheMainFileApplyUnderDeviceSettings() throws {
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/vfio-powerd.conf", "[defaults]\nrearm_delay = \"1m\"\nd3cold = \"forbid\"\n")
        try root.write("etc/vfio-powerd/devices.d/a.conf", "[[device]]\naddress = \"01:00.0\"\nrearm_delay = \"90s\"\n")
        let result = ConfigLoader.load(root.options())
        let entry = try #require(result.configuration.devices.first)
        let effective = result.configuration.effectivePolicy(of: entry)
        #expect(effective.policy == DevicePolicy(rearmDelay: .seconds(90), d3cold: .forbid))
        #expect(effective.source(of: .rearmDelay).description == "\(root.path)/etc/vfio-powerd/devices.d/a.conf:3")
        #expect(effective.source(of: .d3cold).description == "\(root.path)/etc/vfio-powerd/vfio-powerd.conf:3")
        #expect(effective.source(of: .mode).description == "built-in default")
    }
}

@Suite struct PermissionTests {
    @Test func aWorldWritableFileIsRefusedWithTheFix() throws {
        let root = try TempConfigRoot()
        let file = try root.write("etc/vfio-powerd/devices.d/a.conf", "[[device]]\naddress = \"01:00.0\"\n")
        chmod(file, 0o666)
        let strict = ConfigLoader.load(root.options(allowInsecure: false))
        let expected = "\(file): refusing a configuration file that group and others can write (mode 0666): anyone there could change what the daemon does to devices; fix: chmod go-w \(file)"
        #expect(strict.problems.map(\.description).contains(expected))
        #expect(strict.hasErrors)
        #expect(strict.configuration.devices.isEmpty)

        let relaxed = ConfigLoader.load(root.options(allowInsecure: true))
        #expect(relaxed.problems == [])
        #expect(relaxed.configuration.devices.count == 1)
    }

    @Test func aGroupWritableDirectoryIsRefused() throws {
        let root = try TempConfigRoot()
        chmod("\(root.path)/etc/vfio-powerd/devices.d", 0o775)
        let strict = ConfigLoader.load(root.options(allowInsecure: false))
        #expect(strict.problems.map(\.description).contains(
            "\(root.path)/etc/vfio-powerd/devices.d: refusing a configuration directory that its group can write (mode 0775): anyone there could change what the daemon does to devices; fix: chmod go-w \(root.path)/etc/vfio-powerd/devices.d"))
    }

    @Test func ownershipOtherThanRootIsRefusedWithChown() throws {
        let root = try TempConfigRoot()
        let file = try root.write("etc/vfio-powerd/vfio-powerd.conf", "")
        // As root (CI) give the file away; as a user the file is already not root's.
        if getuid() == 0 { chown(file, 65534, 65534) }
        let strict = ConfigLoader.load(root.options(allowInsecure: false))
        let uid = getuid() == 0 ? 65534 : getuid()
        #expect(strict.problems.map(\.description).contains(
            "\(file): refusing a configuration file owned by uid \(uid), not root; fix: chown root:root \(file)"))
    }
}

@Suite struct ResolverTests {
    func tree() throws -> FakeSysfsTree {
        let tree = try FakeSysfsTree()
        try tree.add(.init(PCIAddress("01:00.0")!, vendor: 0x10de, device: 0x2204, classCode: 0x030000, driver: "vfio-pci"))
        try tree.add(.init(PCIAddress("01:00.1")!, vendor: 0x10de, device: 0x1aef, classCode: 0x040300, driver: "vfio-pci"))
        try tree.add(.init(PCIAddress("02:00.0")!, vendor: 0x8086, device: 0x10d3, classCode: 0x020000, driver: "vfio-pci"))
        try tree.add(.init(PCIAddress("03:00.0")!, vendor: 0x8086, device: 0x10d3, classCode: 0x020000, driver: "e1000e"))
        try tree.add(.init(PCIAddress("00:02.0")!, vendor: 0x8086, device: 0x3e92, classCode: 0x030000, driver: "i915"))
        return tree
    }

    func load(_ devices: String) throws -> (TempConfigRoot, Configuration) {
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/devices.d/a.conf", devices)
        let result = ConfigLoader.load(root.options())
        #expect(result.problems == [])
        return (root, result.configuration)
    }

    @Test func classPrefixSelectsDisplayControllersBoundToVfioOnly() throws {
        let tree = try tree(); defer { tree.remove() }
        let (_, config) = try load("[[device]]\nname = \"gpus\"\nmatch = { class = \"0x03\" }\n")
        let resolution = DeviceResolver.resolve(config, sysfsRoot: .init(tree.path))
        #expect(resolution.devices.map(\.address.description) == ["0000:01:00.0"])
        #expect(resolution.devices.first?.identity == DeviceIdentity(vendor: 0x10de, device: 0x2204, classCode: 0x030000, driver: "vfio-pci"))
        #expect(resolution.problems == [])
    }

    @Test func idsAndExplicitDriverSelect() throws {
        let tree = try tree(); defer { tree.remove() }
        let (_, config) = try load("[[device]]\n[device.match]\nvendor = 0x8086\ndevice = \"10d3\"\ndriver = \"e1000e\"\n")
        let resolution = DeviceResolver.resolve(config, sysfsRoot: .init(tree.path))
        #expect(resolution.devices.map(\.address.description) == ["0000:03:00.0"])
    }

    @Test func aDeviceSelectedTwiceIsAnErrorNamingBothPlaces() throws {
        let tree = try tree(); defer { tree.remove() }
        let (root, config) = try load("""
            [[device]]
            name = "gpu"
            address = "01:00.0"

            [[device]]
            name = "nvidia"
            match = { vendor = 0x10de }
            """)
        let resolution = DeviceResolver.resolve(config, sysfsRoot: .init(tree.path))
        #expect(root.render(resolution.problems) ==
            "etc/vfio-powerd/devices.d/a.conf:7:1: device.match: device 0000:01:00.0 is selected twice: by this entry and by \"gpu\" (etc/vfio-powerd/devices.d/a.conf:1) at etc/vfio-powerd/devices.d/a.conf:3:11; narrow the match or remove one entry")
        #expect(resolution.hasErrors)
        #expect(resolution.devices.map(\.address.description) == ["0000:01:00.0", "0000:01:00.1"])
        #expect(resolution.devices.first?.entry.name == "gpu")
    }

    @Test func anAbsentAddressIsListedAsNotPresentAndUnmatchedRulesAreKept() throws {
        let tree = try tree(); defer { tree.remove() }
        let (_, config) = try load("""
            [[device]]
            address = "0000:09:00.0"
            enabled = false

            [[device]]
            match = { vendor = 0x1234 }
            """)
        let resolution = DeviceResolver.resolve(config, sysfsRoot: .init(tree.path))
        #expect(resolution.problems == [])
        #expect(resolution.devices.count == 1)
        #expect(resolution.devices[0].isPresent == false)
        #expect(resolution.devices[0].policy.enabled == false)
        #expect(resolution.unmatchedRules.count == 1)
    }

    @Test func maxDevicesIsEnforced() throws {
        let tree = try tree(); defer { tree.remove() }
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/vfio-powerd.conf", "[daemon]\nmax_devices = 1\n")
        try root.write("etc/vfio-powerd/devices.d/a.conf", "[[device]]\nmatch = { vendor = 0x10de }\n")
        let config = ConfigLoader.load(root.options()).configuration
        let resolution = DeviceResolver.resolve(config, sysfsRoot: .init(tree.path))
        #expect(root.render(resolution.problems) ==
            "etc/vfio-powerd/vfio-powerd.conf:2:1: daemon.max_devices: the configuration selects 2 devices, more than max_devices = 1; raise the limit or narrow the match rules")
    }

    /// The daemon resolves thousands of entries by address on every reload: it must not read
    /// their IDs, and a match rule reads the IDs only of devices bound to its driver. The IDs
    /// removed here would make any such read fail.
    @Test func onlyTheReadsSelectionNeedsAreMade() throws {
        let tree = try tree(); defer { tree.remove() }
        for name in ["0000:01:00.0", "0000:00:02.0"] {
            for attribute in ["vendor", "device", "class"] {
                try FileManager.default.removeItem(at: tree.root.appendingPathComponent("devices/pci0000:00/\(name)/\(attribute)"))
            }
        }
        let (_, config) = try load("""
            [[device]]
            address = "01:00.0"

            [[device]]
            address = "0000:09:00.0"

            [[device]]
            match = { class = "0x03" }
            """)
        // 00:02.0 (i915) is a display controller with unreadable IDs: the rule never reads them.
        let resolution = DeviceResolver.resolve(config, sysfsRoot: .init(tree.path))
        #expect(resolution.problems == [])
        #expect(resolution.devices.map(\.address.description) == ["0000:01:00.0", "0000:09:00.0"])
        #expect(resolution.devices.map(\.isPresent) == [true, false])
        #expect(resolution.devices.map(\.identity) == [nil, nil])
        #expect(resolution.unmatchedRules.count == 1)

        // check-config reads the identity of every selected device, as before.
        let checked = DeviceResolver.resolve(config, sysfsRoot: .init(tree.path), reads: .ofSelectedDevices)
        #expect(checked.devices.map(\.isPresent) == [false, false])
        try tree.add(.init(PCIAddress("04:00.0")!, vendor: 0x10de, device: 0x2204, classCode: 0x030000, driver: "vfio-pci"))
        let (_, byAddress) = try load("[[device]]\naddress = \"04:00.0\"\n")
        #expect(DeviceResolver.resolve(byAddress, sysfsRoot: .init(tree.path), reads: .ofSelectedDevices).devices.first?.identity
            == DeviceIdentity(vendor: 0x10de, device: 0x2204, classCode: 0x030000, driver: "vfio-pci"))
    }

    @Test func classPatterns() {
        #expect(ClassMatch("0x03")!.description == "0x03xxxx")
        #expect(ClassMatch("0300")!.matches(0x030000) && !ClassMatch("0300")!.matches(0x030200))
        #expect(ClassMatch("0x020000")!.matches(0x020000) && !ClassMatch("0x020000")!.matches(0x020001))
        #expect(ClassMatch("3") == nil && ClassMatch("0x0300000") == nil && ClassMatch("zz") == nil)
    }
}

@Suite struct CheckConfigTests {
    @Test func reportListsProblemsDevicesAndSourcesAndExits78OnErrors() throws {
        let tree = try FakeSysfsTree(); defer { tree.remove() }
        try tree.add(.init(PCIAddress("01:00.0")!, vendor: 0x10de, device: 0x2204, classCode: 0x030000))
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/devices.d/10-gpu.conf", "[[device]]\nname = \"gpu0\"\naddress = \"01:00.0\"\nd3cold = \"forbid\"\n")
        var outcome = ConfigCheck.run(root.options(), sysfsRoot: .init(tree.path))
        #expect(outcome.exitStatus == 0)
        let report = outcome.report.replacingOccurrences(of: root.path + "/", with: "")
        #expect(report.contains("  0000:01:00.0 \"gpu0\": 10de:2204 class 0x030000, driver vfio-pci\n    selected by address at etc/vfio-powerd/devices.d/10-gpu.conf:3\n"))
        #expect(report.contains("    d3cold = forbid             (etc/vfio-powerd/devices.d/10-gpu.conf:4)\n"))
        #expect(report.contains("    mode = oneshot              (built-in default)\n"))
        #expect(report.hasSuffix("Configuration OK: 0 warnings; 1 device selected.\n"))

        try root.write("etc/vfio-powerd/devices.d/20-bad.conf", "[[device]]\naddress = \"99:00.0\"\nrearm_delay = 30\n")
        outcome = ConfigCheck.run(root.options(), sysfsRoot: .init(tree.path))
        #expect(outcome.exitStatus == 78)
        let bad = outcome.report.replacingOccurrences(of: root.path + "/", with: "")
        #expect(bad.contains("Problems:\netc/vfio-powerd/devices.d/20-bad.conf:3:15: device.rearm_delay: expected a duration like \"30s\", got 30 (write \"30s\" for 30 seconds)\n"))
        #expect(bad.contains("  0000:99:00.0: not present (the daemon waits for it)\n"))
        #expect(bad.hasSuffix("Configuration refused: 1 error, 0 warnings; 2 devices selected (1 not present).\n"))
    }

    /// The [daemon] settings, each with where its value came from.
    @Test func reportListsTheDaemonSettingsAndTheirSources() throws {
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/vfio-powerd.conf",
                       "[daemon]\nmax_devices = 8\nsocket_group = \"vfio-powerd\"\nvmm_executables = [\"qemu-*\", \"/opt/vmm/bin/vmm\"]\nvmm_scan_interval = \"0s\"\n")
        let report = ConfigCheck.run(root.options(), sysfsRoot: "/nonexistent").report
            .replacingOccurrences(of: root.path + "/", with: "")
        let file = "etc/vfio-powerd/vfio-powerd.conf"
        #expect(report.contains("""
            Daemon:
              rescan_interval = 30s       (built-in default)
              max_devices = 8             (\(file):2)
              socket_group = "vfio-powerd" (\(file):3)
              admin_group = (none: root only) (built-in default)
              vmm_executables = ["qemu-*", "/opt/vmm/bin/vmm"] (\(file):4)
              guest_d3_interval = 1s      (built-in default)
              vmm_scan_interval = 0s      (\(file):5)

            """), "\(report)")
    }

    @Test func theShippedExamplesAreValid() throws {
        // config/ sits three levels above this file: Tests/PowerConfigTests/LoaderTests.swift.
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let root = try TempConfigRoot()
        try root.write("etc/vfio-powerd/vfio-powerd.conf", String(contentsOf: repo.appendingPathComponent("config/vfio-powerd.conf"), encoding: .utf8))
        for name in ["10-gpu.conf", "20-nic.conf"] {
            try root.write("etc/vfio-powerd/devices.d/\(name)", String(contentsOf: repo.appendingPathComponent("config/devices.d/\(name)"), encoding: .utf8))
        }
        let result = ConfigLoader.load(root.options())
        #expect(result.problems == [])
        #expect(result.configuration.devices.map(\.name) == ["gpu0", "gpu0-audio", "lab NICs"])
        #expect(result.configuration.effectiveDefaults == .builtIn)
    }
}
