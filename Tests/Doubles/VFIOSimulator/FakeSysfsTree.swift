import Foundation
import VFIO

/// A sysfs tree in a temporary folder, laid out as the kernel lays out the real one, so code
/// that takes a sysfs root (SysfsPCIDevice, the device resolver) can be tested exactly:
///
///     ROOT/devices/pci0000:00/DDDD:BB:DD.F/{vendor,device,class,power_state,d3cold_allowed,power/...}
///     ROOT/bus/pci/devices/DDDD:BB:DD.F      -> ../../../devices/pci0000:00/DDDD:BB:DD.F
///     ROOT/bus/pci/drivers/NAME/             (DEVICE/driver -> here)
///     ROOT/kernel/iommu_groups/G/devices/ADDR (DEVICE/iommu_group -> ROOT/kernel/iommu_groups/G)
public final class FakeSysfsTree {
    public let root: URL

    /// Creates an empty tree in a new temporary folder; `remove()` deletes it.
    public init() throws {
        root = FileManager.default.temporaryDirectory
            .appendingPathComponent("fake-sysfs-\(UUID().uuidString)")
        for folder in ["devices/pci0000:00", "bus/pci/devices", "bus/pci/drivers", "kernel/iommu_groups"] {
            try FileManager.default.createDirectory(at: root.appendingPathComponent(folder),
                                                    withIntermediateDirectories: true)
        }
    }

    public var path: String { root.path }

    public func remove() { try? FileManager.default.removeItem(at: root) }

    /// The facts one fake device starts with; defaults describe an unopened device bound to
    /// vfio-pci, runtime-suspended in D3hot, as the kernel leaves it.
    public struct Device {
        public var address: PCIAddress
        public var vendor: UInt16
        public var device: UInt16
        public var classCode: UInt32
        public var driver: String?
        public var iommuGroup: String?
        public var runtimeStatus: String
        public var powerState: String
        public var powerControl: String
        public var d3coldAllowed: Bool

        public init(_ address: PCIAddress, vendor: UInt16 = 0x8086, device: UInt16 = 0x10d3,
                    classCode: UInt32 = 0x020000, driver: String? = "vfio-pci", iommuGroup: String? = nil,
                    runtimeStatus: String = "suspended", powerState: String = "D3hot",
                    powerControl: String = "auto", d3coldAllowed: Bool = true) {
            self.address = address
            self.vendor = vendor
            self.device = device
            self.classCode = classCode
            self.driver = driver
            self.iommuGroup = iommuGroup
            self.runtimeStatus = runtimeStatus
            self.powerState = powerState
            self.powerControl = powerControl
            self.d3coldAllowed = d3coldAllowed
        }
    }

    /// Adds a device with its attributes, driver link and IOMMU group.
    public func add(_ device: Device) throws {
        let name = device.address.description
        let directory = root.appendingPathComponent("devices/pci0000:00/\(name)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("power"),
                                                withIntermediateDirectories: true)
        func hex(_ value: some BinaryInteger, _ width: Int) -> String {
            let digits = String(value, radix: 16)
            return "0x" + String(repeating: "0", count: max(0, width - digits.count)) + digits + "\n"
        }
        try write(hex(device.vendor, 4), to: "devices/pci0000:00/\(name)/vendor")
        try write(hex(device.device, 4), to: "devices/pci0000:00/\(name)/device")
        try write(hex(device.classCode, 6), to: "devices/pci0000:00/\(name)/class")
        try write(device.powerState + "\n", to: "devices/pci0000:00/\(name)/power_state")
        try write(device.d3coldAllowed ? "1\n" : "0\n", to: "devices/pci0000:00/\(name)/d3cold_allowed")
        try write(device.runtimeStatus + "\n", to: "devices/pci0000:00/\(name)/power/runtime_status")
        try write(device.powerControl + "\n", to: "devices/pci0000:00/\(name)/power/control")
        try write("1200\n", to: "devices/pci0000:00/\(name)/power/runtime_suspended_time")
        try write("300\n", to: "devices/pci0000:00/\(name)/power/runtime_active_time")
        try FileManager.default.createSymbolicLink(
            atPath: root.appendingPathComponent("bus/pci/devices/\(name)").path,
            withDestinationPath: "../../../devices/pci0000:00/\(name)")
        if let driver = device.driver { try bind(device.address, to: driver) }
        if let group = device.iommuGroup {
            let groupDevices = root.appendingPathComponent("kernel/iommu_groups/\(group)/devices")
            try FileManager.default.createDirectory(at: groupDevices, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(
                atPath: groupDevices.appendingPathComponent(name).path,
                withDestinationPath: directory.path)
            try FileManager.default.createSymbolicLink(
                atPath: directory.appendingPathComponent("iommu_group").path,
                withDestinationPath: root.appendingPathComponent("kernel/iommu_groups/\(group)").path)
        }
    }

    /// Points the device's `driver` link at `driver`, as binding does.
    public func bind(_ address: PCIAddress, to driver: String) throws {
        let driverFolder = root.appendingPathComponent("bus/pci/drivers/\(driver)")
        try FileManager.default.createDirectory(at: driverFolder, withIntermediateDirectories: true)
        let link = root.appendingPathComponent("devices/pci0000:00/\(address)/driver")
        try? FileManager.default.removeItem(at: link)
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: driverFolder.path)
    }

    /// Removes the device's `driver` link, as unbinding does.
    public func unbind(_ address: PCIAddress) throws {
        try FileManager.default.removeItem(at: root.appendingPathComponent("devices/pci0000:00/\(address)/driver"))
    }

    /// Overwrites one attribute of a device, e.g. `set("power/runtime_status", "active", on: address)`.
    public func set(_ attribute: String, _ value: String, on address: PCIAddress) throws {
        try write(value + "\n", to: "devices/pci0000:00/\(address)/\(attribute)")
    }

    private func write(_ text: String, to relativePath: String) throws {
        try Data(text.utf8).write(to: root.appendingPathComponent(relativePath))
    }
}
