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
    /// What sysfs says the device is. Read for every device a match rule selected, and, when
    /// resolving with `.ofSelectedDevices` (check-config), for every selected device; nil when
    /// the device is not present, or when nothing needed its identity (a device selected by
    /// address, resolved for the daemon).
    public var identity: DeviceIdentity?
    /// Whether the device is present now. Only an entry by address can select an absent
    /// device: the daemon waits for it to appear.
    public var isPresent: Bool

    public var policy: DevicePolicy { effective.policy }
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
    /// How much of sysfs the resolver reads.
    public enum IdentityReads: Hashable, Sendable {
        /// Only what selecting needs: a device selected by address is present when sysfs
        /// lists it, and its identity is not read; match rules read the driver link of every
        /// present device, and its IDs only when the driver is the rule's. What the daemon needs.
        case forSelection
        /// Also the identity of every selected device, as check-config shows it (a device
        /// whose IDs cannot be read then counts as not present).
        case ofSelectedDevices
    }

    /// Matches entries against sysfs under `sysfsRoot`. Reads only identity attributes (the
    /// directory listing, driver links, vendor, device, class), and only those `reads` needs.
    public static func resolve(_ configuration: Configuration, sysfsRoot: FilePath = "/sys",
                               reads: IdentityReads = .forSelection) -> Resolution {
        var problems: [ConfigProblem] = []
        var devices: [ResolvedDevice] = []
        var selectedIndex: [PCIAddress: Int] = [:]
        var unmatched: [DeviceEntry] = []
        var sysfs = SysfsIdentities(present: (try? SysfsPCIDevice.allAddresses(sysfsRoot: sysfsRoot)) ?? [], sysfsRoot: sysfsRoot)
        let defaults = configuration.effectiveDefaults
        devices.reserveCapacity(configuration.devices.count)
        selectedIndex.reserveCapacity(configuration.devices.count)

        func select(_ address: PCIAddress, by entry: DeviceEntry, identity: DeviceIdentity?, isPresent: Bool) {
            if let first = selectedIndex[address].map({ devices[$0] }) {
                // Same entry twice cannot happen; two entries naming one address by address
                // were already reported by the loader.
                if case .address = first.entry.selector, case .address = entry.selector { return }
                problems.append(ConfigProblem(at: entry.selectorLocation, key: selectorKey(entry), message:
                    "device \(address) is selected twice: by this entry and by \(first.entry.label) at \(first.entry.selectorLocation); narrow the match or remove one entry"))
                return
            }
            selectedIndex[address] = devices.count
            devices.append(ResolvedDevice(address: address, entry: entry,
                                          effective: configuration.effectivePolicy(of: entry, defaults: defaults),
                                          identity: identity, isPresent: isPresent))
        }

        // Entries by address first, so a match rule overlapping one is the entry reported.
        for entry in configuration.devices {
            guard case .address(let address) = entry.selector else { continue }
            guard let index = sysfs.index(of: address) else {
                select(address, by: entry, identity: nil, isPresent: false)
                continue
            }
            switch reads {
            case .forSelection:
                select(address, by: entry, identity: nil, isPresent: true)
            case .ofSelectedDevices:
                let identity = sysfs.identity(at: index)
                select(address, by: entry, identity: identity, isPresent: identity != nil)
            }
        }
        for entry in configuration.devices {
            guard case .match(let rule) = entry.selector else { continue }
            var matched = false
            for index in sysfs.present.indices {
                guard let identity = sysfs.identity(at: index, ifMatching: rule) else { continue }
                matched = true
                select(sysfs.present[index], by: entry, identity: identity, isPresent: true)
            }
            if !matched { unmatched.append(entry) }
        }

        devices.sort { $0.address < $1.address }
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

/// The devices sysfs lists, with their identity attributes read at most once each and only
/// when asked for.
private struct SysfsIdentities {
    /// In address order.
    let present: [PCIAddress]
    let sysfsRoot: FilePath
    private var drivers: [String??]
    private var identities: [DeviceIdentity??]

    init(present: [PCIAddress], sysfsRoot: FilePath) {
        self.present = present
        self.sysfsRoot = sysfsRoot
        drivers = Array(repeating: nil, count: present.count)
        identities = Array(repeating: nil, count: present.count)
    }

    func index(of address: PCIAddress) -> Int? {
        var low = 0, high = present.count
        while low < high {
            let middle = (low + high) / 2
            if present[middle] < address { low = middle + 1 } else { high = middle }
        }
        return low < present.count && present[low] == address ? low : nil
    }

    private mutating func driver(at index: Int) -> String? {
        if let driver = drivers[index] { return driver }
        let driver = SysfsPCIDevice(address: present[index], sysfsRoot: sysfsRoot).driver()
        drivers[index] = .some(driver)
        return driver
    }

    /// The identity, nil when its IDs cannot be read (as `DeviceIdentity.read`).
    mutating func identity(at index: Int) -> DeviceIdentity? {
        if let identity = identities[index] { return identity }
        let sysfs = SysfsPCIDevice(address: present[index], sysfsRoot: sysfsRoot)
        var identity: DeviceIdentity?
        if let vendor = try? sysfs.vendorID(), let device = try? sysfs.deviceID(), let classCode = try? sysfs.classCode() {
            identity = DeviceIdentity(vendor: vendor, device: device, classCode: classCode, driver: driver(at: index))
        }
        identities[index] = .some(identity)
        return identity
    }

    /// The identity when `rule` matches it. The driver link is read first: a rule matches
    /// only devices bound to its driver (vfio-pci unless it names another), so the IDs of
    /// the host's other devices are never read.
    mutating func identity(at index: Int, ifMatching rule: MatchRule) -> DeviceIdentity? {
        guard driver(at: index) == (rule.driver ?? MatchRule.defaultDriver),
              let identity = identity(at: index), rule.matches(identity) else { return nil }
        return identity
    }
}
