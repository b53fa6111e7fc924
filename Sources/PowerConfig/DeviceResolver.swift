import PowerPolicy
import SystemPackage
import VFIO

/// What sysfs says a device is; read without waking it (never its `config`).
public struct DeviceIdentity: Hashable, Sendable, CustomStringConvertible {
    public var vendor: UInt16
    public var device: UInt16
    public var classCode: UInt32
    public var driver: String?

    public init(vendor: UInt16, device: UInt16, classCode: UInt32, driver: String?) {
        self.vendor = vendor
        self.device = device
        self.classCode = classCode
        self.driver = driver
    }

    /// Reads the identity attributes; nil when the device is absent or unreadable.
    public static func read(_ sysfs: SysfsPCIDevice) -> DeviceIdentity? {
        guard sysfs.exists, let vendor = try? sysfs.vendorID(), let device = try? sysfs.deviceID(),
              let classCode = try? sysfs.classCode() else { return nil }
        return DeviceIdentity(vendor: vendor, device: device, classCode: classCode, driver: sysfs.driver())
    }

    /// "10de:2204 class 0x030000, driver vfio-pci" (lspci -nn's ID spelling).
    public var description: String {
        let id = String(hex4(vendor).dropFirst(2)) + ":" + String(hex4(device).dropFirst(2))
        let classText = String(classCode, radix: 16)
        return "\(id) class 0x\(String(repeating: "0", count: max(0, 6 - classText.count)) + classText), driver \(driver ?? "none")"
    }
}

/// One device the configuration selects, with its effective policy.
public struct ResolvedDevice: Hashable, Sendable {
    public var address: PCIAddress
    public var entry: DeviceEntry
    public var effective: EffectivePolicy
    /// nil when the device is not present now (only possible for entries by address: the
    /// daemon waits for it to appear).
    public var identity: DeviceIdentity?

    public var policy: DevicePolicy { effective.policy }
    public var isPresent: Bool { identity != nil }
}

/// The configuration matched against the devices present now.
public struct Resolution: Hashable, Sendable {
    /// Every selected device in address order: present ones, and absent ones named by address.
    public var devices: [ResolvedDevice]
    /// Match rules that select no device present now (not an error: shown by check-config).
    public var unmatchedRules: [DeviceEntry]
    /// Devices selected twice, too many devices: errors the daemon must refuse like file problems.
    public var problems: [ConfigProblem]

    public var hasErrors: Bool { problems.contains(where: \.isError) }
}

public enum DeviceResolver {
    /// Matches entries against sysfs under `sysfsRoot`. Reads only identity attributes.
    public static func resolve(_ configuration: Configuration, sysfsRoot: FilePath = "/sys") -> Resolution {
        var problems: [ConfigProblem] = []
        var selected: [PCIAddress: ResolvedDevice] = [:]
        var unmatched: [DeviceEntry] = []
        let present = (try? SysfsPCIDevice.allAddresses(sysfsRoot: sysfsRoot)) ?? []
        var identities: [PCIAddress: DeviceIdentity] = [:]
        for address in present {
            identities[address] = DeviceIdentity.read(SysfsPCIDevice(address: address, sysfsRoot: sysfsRoot))
        }

        func select(_ address: PCIAddress, by entry: DeviceEntry) {
            if let first = selected[address] {
                // Same entry twice cannot happen; two entries naming one address by address
                // were already reported by the loader.
                if case .address = first.entry.selector, case .address = entry.selector { return }
                problems.append(ConfigProblem(at: entry.selectorLocation, key: selectorKey(entry), message:
                    "device \(address) is selected twice: by this entry and by \(first.entry.label) at \(first.entry.selectorLocation); narrow the match or remove one entry"))
                return
            }
            selected[address] = ResolvedDevice(address: address, entry: entry, effective: configuration.effectivePolicy(of: entry),
                                               identity: identities[address])
        }

        // Entries by address first, so a match rule overlapping one is the entry reported.
        for entry in configuration.devices {
            if case .address(let address) = entry.selector { select(address, by: entry) }
        }
        for entry in configuration.devices {
            guard case .match(let rule) = entry.selector else { continue }
            let matches = present.filter { identities[$0].map(rule.matches) ?? false }
            if matches.isEmpty { unmatched.append(entry) }
            for address in matches { select(address, by: entry) }
        }

        let devices = selected.values.sorted { $0.address < $1.address }
        let limit = configuration.daemon.maxDevices
        if devices.count > limit.value {
            let file: String
            var line: Int?
            if case .file(let location) = limit.source { (file, line) = (location.file, location.line) } else {
                file = devices[limit.value].entry.location.file
            }
            problems.append(ConfigProblem(file: file, line: line, column: line == nil ? nil : 1, key: "daemon.max_devices", message:
                "the configuration selects \(devices.count) devices, more than max_devices = \(limit.value); raise the limit or narrow the match rules"))
        }
        return Resolution(devices: devices, unmatchedRules: unmatched, problems: problems)
    }

    private static func selectorKey(_ entry: DeviceEntry) -> String {
        if case .address = entry.selector { "device.address" } else { "device.match" }
    }
}
