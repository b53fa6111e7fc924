import SystemPackage
import VFIO

// The one place the VFIO layer's reasons become words. A module of its own, above VFIO,
// because both the daemon (EventReporter, the status) and vfio-powerctl (probe) print these
// errors, and vfio-powerctl does not link the daemon; VFIO itself stays free of sentences.
// The conformance lives here too, so `"\(error)"` reads the same in every binary linking this.

extension VFIOError: CustomStringConvertible {
    /// The one line an operator reads: device, what was being done, why, errno, what to do.
    public var description: String {
        var line = device.map { "\($0): " } ?? ""
        line += "cannot \(operationWords): \(explanation)"
        if let errno { line += " (\(errno.symbolicName))" }
        if let advice { line += ". \(advice)" }
        return line
    }

    /// What was being done, as the sentence's verb phrase.
    public var operationWords: String {
        switch operation {
        case .openDevice: "open the device"
        case .openGroup(let name): "open IOMMU group \(name)"
        case .readDeviceInfo: "read the device's info (VFIO_DEVICE_GET_INFO)"
        case .arm(let feature): "arm \(feature == .oneShotEntry ? "one-shot" : "re-entrant") low power"
        case .exitLowPower: "exit low power"
        case .accessDevice: "access the device"
        case .accessDeviceInfo: "access the device (VFIO_DEVICE_GET_INFO)"
        case .readConfigSpace: "read config space"
        case .writeConfigSpace: "write config space"
        case .lookForVMM: "look for its VMM"
        case .followVMM(let pid): "follow its VMM (pid \(pid))"
        case .createEventFD: "create an eventfd"
        case .manageLowPower: "manage low power"
        }
    }

    /// What happened, in the domain's words.
    public var explanation: String {
        switch reason {
        case .deviceNotFound(let searched):
            "there is no such PCI device in \(searched)"
        case .notBoundToVFIO(let driver):
            driver.map { "it is bound to \($0), not vfio-pci" } ?? "it is bound to no driver, not vfio-pci"
        case .noIOMMUGroup where operation == .lookForVMM:
            "the device has no IOMMU group (not present, or no IOMMU)"
        case .noIOMMUGroup:
            "it has no IOMMU group, so VFIO cannot isolate it"
        case .groupMemberOnHostDriver(let group, let member, let driver):
            "its IOMMU group \(group) also holds \(member), which is bound to \(driver)"
        case .groupNotViable(let group):
            "the kernel says group \(group) is not viable: a device in it is bound to a host driver"
        case .groupBusy(let node, let holders):
            "\(node) is held by " + (holders.isEmpty
                ? "another process (could not tell which from /proc)"
                : holders.map(\.description).joined(separator: ", "))
        case .deviceBusy:
            "the device is held by another user"
        case .noVFIO(let missing):
            "\(missing) does not exist"
        case .noGroupNode(let node):
            "\(node), the node of its IOMMU group, does not exist"
        case .cdevOnly:
            "this kernel offers only the VFIO device cdev (/dev/vfio/devices/vfioN with iommufd), which vfio-powerd does not support yet; it uses the group interface"
        case .groupStepRefused(let step, _):
            "\(Self.words(step)) was refused"
        case .groupStepFailed(let step):
            "\(Self.words(step)) failed"
        case .unknownAPIVersion:
            "the VFIO container speaks an unknown API version"
        case .permissionRefused, .kernelRefused:
            "the kernel refused"
        case .alreadyEngaged:
            "low power is already engaged on this device (a re-entrant entry, or a one-shot entry that has not woken yet)"
        case .featureAbsent(let feature):
            "the kernel does not offer \(feature.map { "\($0)" } ?? "this feature") for this device"
        case .deviceGone:
            "the device is gone (removed or unbound)"
        case .resumeFailed:
            "the device failed to resume from low power (it may be stuck in D3cold)"
        case .badEventFD:
            "the wakeup eventfd is not an open file descriptor"
        case .closed:
            "the device was closed"
        case .released:
            "the device was released"
        case .noConfigRegion:
            "the device has no config region"
        case .systemCallFailed(.eventfd):
            "eventfd failed"
        case .systemCallFailed(.pidfdOpen):
            "pidfd_open failed"
        }
    }

    /// What to do about it; nil when there is nothing to do.
    public var advice: String? {
        switch reason {
        case .deviceNotFound:
            "Check the address with `lspci -D`"
        case .notBoundToVFIO(let driver):
            device.map { Self.bindAdvice($0, currentDriver: driver) }
        case .noIOMMUGroup where operation == .lookForVMM:
            nil
        case .noIOMMUGroup:
            "Turn the IOMMU on (VT-d or AMD-Vi in the firmware, intel_iommu=on or amd_iommu=on on the kernel command line)"
        case .groupMemberOnHostDriver(let group, let member, let driver):
            "Bind every device of group \(group) to vfio-pci, or unbind \(member) from \(driver)"
        case .groupNotViable(let group):
            "Bind every device of /sys/kernel/iommu_groups/\(group.split(separator: "-").last ?? "")/devices to vfio-pci"
        case .groupBusy:
            "A VFIO group can be open in one process at a time: stop that process, or leave this device to it"
        case .noVFIO:
            "Load VFIO with `modprobe vfio-pci`"
        case .noGroupNode:
            "Check that vfio-pci finished binding the device (`dmesg | grep vfio`)"
        case .cdevOnly:
            "Use a kernel built with CONFIG_VFIO_GROUP=y and CONFIG_VFIO_CONTAINER=y (every Debian kernel is)"
        case .groupStepRefused(_, let node):
            node.lastComponent?.string.hasPrefix("noiommu") == true
                ? "noiommu groups need CAP_SYS_RAWIO: run as root"
                : "Run as root, or give this user read-write access to \(node)"
        case .permissionRefused:
            "Run as root"
        case .alreadyEngaged:
            "Exit low power first"
        case .featureAbsent:
            "Low-power features need Linux 6.1 or later and the vfio-pci driver"
        case .deviceGone:
            "Close it so the kernel can finish removing it"
        case .resumeFailed:
            "Set `d3cold = \"forbid\"` for this device, and check `dmesg`"
        case .deviceBusy, .groupStepFailed, .unknownAPIVersion, .kernelRefused, .badEventFD, .closed, .released,
             .noConfigRegion, .systemCallFailed:
            nil
        }
    }

    private static func words(_ step: GroupStep) -> String {
        switch step {
        case .openContainer(let path), .openGroup(let path): "opening \(path)"
        case .getStatus: "VFIO_GROUP_GET_STATUS"
        case .setContainer: "VFIO_GROUP_SET_CONTAINER"
        case .setIOMMU: "VFIO_SET_IOMMU (type1v2)"
        }
    }

    private static func bindAdvice(_ address: PCIAddress, currentDriver: String?) -> String {
        let unbind = currentDriver.map { "echo \(address) > /sys/bus/pci/drivers/\($0)/unbind; " } ?? ""
        return "Bind it to vfio-pci: \(unbind)echo vfio-pci > /sys/bus/pci/devices/\(address)/driver_override; echo \(address) > /sys/bus/pci/drivers_probe (or `driverctl set-override \(address) vfio-pci`)"
    }
}

extension PCIAddressError: CustomStringConvertible {
    public var description: String {
        "\"\(text)\" is not a PCI address: write it as DDDD:BB:DD.F (for example \"0000:01:00.0\") or BB:DD.F as lspci prints it"
    }
}

extension SysfsError: CustomStringConvertible {
    public var description: String {
        if let errno { return "cannot read \(path): \(errno)" }
        return "unexpected content in \(path): \"\(unexpected ?? "")\""
    }
}
