import Glibc
import CVFIO
import SystemPackage

/// A process that holds a device's VFIO group, and a pidfd on it: the pidfd becomes readable
/// when the process exits, which is the event that releases an adopted device.
public final class VMMProcess: @unchecked Sendable {
    public let pid: Int32
    /// `/proc/PID/exe` as the kernel shows it (" (deleted)" stripped).
    public let executable: String
    /// Readable once the process has exited (pidfd_open(2)); a test double may hand any file
    /// that becomes readable instead.
    public let exitNotifier: FileDescriptor

    public init(pid: Int32, executable: String, exitNotifier: FileDescriptor) {
        self.pid = pid
        self.executable = executable
        self.exitNotifier = exitNotifier
    }

    deinit { Syscalls.close(exitNotifier) }

    /// Follows a running process: a pidfd on it (pidfd_open(2)). Nil when it has already
    /// exited (ESRCH) or the kernel refuses (EPERM under a filter, ENOSYS before 5.3).
    public static func follow(pid: Int32, executable: String) -> Result<VMMProcess, Errno> {
        let pidfd = cvfio_pidfd_open(pid)
        guard pidfd >= 0 else { return .failure(Errno(rawValue: errno)) }
        return .success(VMMProcess(pid: pid, executable: executable, exitNotifier: FileDescriptor(rawValue: pidfd)))
    }
}

/// Which processes may be adopted from: glob patterns (fnmatch(3)) over the executable's
/// file name, or over its whole path when the pattern has a '/'.
public struct ExecutableAllowList: Hashable, Sendable {
    public var patterns: [String]

    /// QEMU under every name Debian, Proxmox and RHEL give it, crosvm, cloud-hypervisor.
    public static let defaultPatterns = ["qemu-system-*", "qemu-kvm", "kvm", "crosvm", "cloud-hypervisor"]

    public init(_ patterns: [String] = ExecutableAllowList.defaultPatterns) { self.patterns = patterns }

    public func allows(_ executable: String) -> Bool {
        let name = executable.split(separator: "/").last.map(String.init) ?? executable
        return patterns.contains { pattern in
            let subject = pattern.contains("/") ? executable : name
            return fnmatch(pattern, subject, 0) == 0
        }
    }
}

/// What looking for a device's VMM found.
public enum AdoptionOutcome: Sendable {
    /// No process holds the device's group (or it exited while being looked at).
    case noHolder
    /// A duplicate of the VMM's device file, ready to arm.
    case adopted(any LowPowerDevice, VMMProcess, method: AdoptionBasis)
    /// A holder that is left alone; its pidfd is watched for its exit.
    case refused(VMMProcess, AdoptionProblem)
    /// The device cannot be looked at (not present, not bound to vfio-pci, no group).
    case failed(VFIOError)
}

/// How the device file was identified.
public enum AdoptionBasis: Sendable {
    /// fdinfo's `vfio-device-syspath` names the device (Linux >= 6.18).
    case fdinfo
    /// The holder has exactly one VFIO group and one VFIO device file, and the group has one
    /// device: the file can only be this device's.
    case unambiguous
    /// Sent over the control socket and checked by fdinfo.
    case handoff
}

/// Why a device file sent over the control socket was not taken.
public enum HandoffRefusal: Error, Equatable, Sendable {
    /// It is not a VFIO device file; what /proc/self/fd says it is.
    case notAVFIODeviceFile(String)
    /// The kernel names another device as its device.
    case otherDevice(String)
    /// The kernel (before Linux 6.18) does not say which device the file belongs to.
    case cannotCheck
    /// The process whose exit was to release it has already exited.
    case senderGone
    /// The daemon already holds a file of this device.
    case alreadyHeld
    /// The device is not a `vmm` device of the daemon's configuration.
    case notVMMDevice
}

public enum AdoptionProblem: Equatable, Sendable {
    case executableNotAllowed
    case ambiguous(deviceFiles: Int)
    case noDeviceFile
    case notPermitted(Errno)
}

/// A duplicate of a VMM's open device file (pidfd_getfd): the same open file, so the same
/// low-power state as the VMM's own. Only arming and exiting touch it: every ioctl resumes
/// the device, and the daemon never probes or queries a device its VMM holds.
public final class AdoptedDevice: LowPowerDevice, @unchecked Sendable {
    public let address: PCIAddress
    /// Not probed (a probe is an ioctl, and would wake the guest's device): an arm's ENOTTY
    /// tells instead.
    public let lowPowerSupport = LowPowerSupport(refusals: [:])
    /// The VMM registered the kernel's request channel itself; the daemon learns of a removal
    /// from the VMM letting go of the device.
    public let removalRequest: EventFD? = nil
    /// The VMM's pid and its descriptor number of the device file, to check it still holds it
    /// (nil for a file handed over: its sender's numbers are unknown).
    public let vmmPID: Int32
    public let vmmDescriptor: Int32?
    private let procRoot: FilePath
    private var descriptor: FileDescriptor?
    /// The device's sysfs `power_state`, open for sampling (nil if sysfs refused it).
    public let powerState: PowerStateFile?
    /// /proc/PID/fd/N of the VMM's own file, built once for the per-sample check.
    private let vmmLink: String?

    init(address: PCIAddress, descriptor: FileDescriptor, vmmPID: Int32, vmmDescriptor: Int32?, procRoot: FilePath,
         sysfsRoot: FilePath) {
        self.address = address
        self.descriptor = descriptor
        self.vmmPID = vmmPID
        self.vmmDescriptor = vmmDescriptor
        self.procRoot = procRoot
        self.powerState = PowerStateFile(address: address, sysfsRoot: sysfsRoot)
        self.vmmLink = vmmDescriptor.map { procRoot.appending("\(vmmPID)/fd/\($0)").string }
    }

    deinit { close() }

    public func arm(_ entry: LowPowerEntry) throws(VFIOError) {
        try VFIODevice.arm(try open(.arm(entry.feature)), entry, device: address)
    }

    public func exitLowPower() throws(VFIOError) {
        try VFIODevice.exitLowPower(try open(.exitLowPower), device: address)
    }

    private func open(_ operation: VFIOError.Operation) throws(VFIOError) -> FileDescriptor {
        guard let descriptor else {
            throw VFIOError(.released, device: address, operation: operation)
        }
        return descriptor
    }

    public func noteWoke() {}

    /// Closes the duplicate; the VMM's own file, and the device's low power, stay as they are.
    public func close() {
        guard let fd = descriptor else { return }
        descriptor = nil
        Syscalls.close(fd)
    }

    /// Whether the VMM still has the device file open under the descriptor number it was
    /// duplicated from (a guest hot-unplug closes it while the VMM runs on). Reads /proc only.
    public func vmmStillHoldsDevice() -> Bool {
        guard let vmmLink else { return true }
        // One readlink into a stack buffer: this runs every guest_d3_interval per device.
        let expected = VMMFinder.deviceFileLink.utf8
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buffer in
            let count = readlink(vmmLink, buffer.baseAddress!, buffer.count)
            return count == expected.count && zip(buffer[..<count], expected).allSatisfy { UInt8(bitPattern: $0) == $1 }
        }
    }
}

/// Finds the process that holds a device's VFIO group and duplicates its device file.
/// Reads sysfs and /proc only; opens no VFIO node; makes no ioctl.
public struct VMMFinder: Sendable {
    public var sysfsRoot: FilePath
    public var devRoot: FilePath
    public var procRoot: FilePath

    /// What /proc/PID/fd/N links to for a VFIO device file of the group path.
    static let deviceFileLink = "anon_inode:[vfio-device]"

    public init(sysfsRoot: FilePath = "/sys", devRoot: FilePath = "/dev", procRoot: FilePath = "/proc") {
        self.sysfsRoot = sysfsRoot
        self.devRoot = devRoot
        self.procRoot = procRoot
    }

    /// The device nodes whose open announces a VMM: the group node, and the device's cdev
    /// where the kernel has one (iommufd).
    public func announcingNodes(_ address: PCIAddress) -> [FilePath] {
        let sysfs = SysfsPCIDevice(address: address, sysfsRoot: sysfsRoot)
        var nodes: [FilePath] = []
        if let group = sysfs.iommuGroup() { nodes.append(devRoot.appending("vfio").appending(group)) }
        if case .success(let names) = Syscalls.listDirectory(sysfs.directory.appending("vfio-dev")), let cdev = names.first {
            nodes.append(devRoot.appending("vfio").appending("devices").appending(cdev))
        }
        return nodes
    }

    /// Looks for the process holding `address`'s group (among `candidates` when given) and,
    /// if its executable is allowed, duplicates its device file.
    public func adopt(_ address: PCIAddress, candidates: [Int32]? = nil, allowed: ExecutableAllowList) -> AdoptionOutcome {
        let sysfs = SysfsPCIDevice(address: address, sysfsRoot: sysfsRoot)
        guard let group = sysfs.iommuGroup() else {
            return .failed(VFIOError(.noIOMMUGroup, device: address, operation: .lookForVMM))
        }
        let groupNode = devRoot.appending("vfio").appending(group)
        let cdevNames = (try? Syscalls.listDirectory(sysfs.directory.appending("vfio-dev")).get()) ?? []
        guard let groupDevice = Self.deviceNumber(groupNode) else { return .noHolder }

        let me = getpid()
        let entries = candidates.map { $0.map(String.init) }
            ?? (try? Syscalls.listDirectory(procRoot).get())?.filter { Int32($0).map { $0 != me } ?? false } ?? []
        // Allowed VMMs first: one readlink of /proc/PID/exe per process, and the open files of
        // the VMMs only. Only if none holds the device are the other processes' files read,
        // to name a holder that is not a VMM.
        var others: [(pid: Int32, directory: FilePath, executable: String?)] = []
        for entry in entries {
            guard let pid = Int32(entry) else { continue }
            let directory = procRoot.appending(entry)
            let executable = Self.executable(directory)
            if let executable, allowed.allows(executable) {
                if let found = holding(pid, directory, executable) { return found }
            } else {
                others.append((pid, directory, executable))
            }
        }
        for other in others {
            if let found = holding(other.pid, other.directory, other.executable) { return found }
        }
        return .noHolder

        func holding(_ pid: Int32, _ processDirectory: FilePath, _ executable: String?) -> AdoptionOutcome? {
            guard let files = Self.openFiles(processDirectory) else { return nil }
            let holdsGroup = files.contains { Self.isNode($0.target, deviceNumber: groupDevice, link: processDirectory.appending("fd").appending($0.fd)) }
            let cdevFile = files.first { file in cdevNames.contains { file.target == devRoot.appending("vfio/devices/\($0)").string } }
            guard holdsGroup || cdevFile != nil else { return nil }
            return adopt(address, from: pid, processDirectory: processDirectory, executable: executable ?? "?",
                         files: files, cdevFile: cdevFile, groupDevice: groupDevice, sysfs: sysfs, allowed: allowed)
        }
    }

    private func adopt(_ address: PCIAddress, from pid: Int32, processDirectory: FilePath, executable: String,
                       files: [(fd: String, target: String)], cdevFile: (fd: String, target: String)?,
                       groupDevice: UInt, sysfs: SysfsPCIDevice, allowed: ExecutableAllowList) -> AdoptionOutcome {
        let pidfd = cvfio_pidfd_open(pid)
        guard pidfd >= 0 else {
            // ESRCH: it exited while we looked.
            return errno == ESRCH ? .noHolder
                : .failed(VFIOError(.systemCallFailed(.pidfdOpen), device: address, operation: .followVMM(pid: pid),
                                    errno: Errno(rawValue: errno)))
        }
        let process = VMMProcess(pid: pid, executable: executable, exitNotifier: FileDescriptor(rawValue: pidfd))
        guard allowed.allows(executable) else { return .refused(process, .executableNotAllowed) }

        // Which of its files is this device's?
        let target: (fd: Int32, basis: AdoptionBasis)
        if let cdevFile, let fd = Int32(cdevFile.fd) {
            // A cdev names its device by itself (iommufd kernels).
            target = (fd, .fdinfo)
        } else {
            let deviceFiles = files.filter { $0.target == Self.deviceFileLink }
            let named = deviceFiles.map { ($0.fd, Self.syspath(processDirectory.appending("fdinfo").appending($0.fd))) }
            if named.contains(where: { $0.1 != nil }) {
                // The kernel names every device file: pick ours exactly, or wait for it.
                guard let mine = named.first(where: { $0.1.map { Self.names($0, address) } ?? false }),
                      let fd = Int32(mine.0) else { return .refused(process, .noDeviceFile) }
                target = (fd, .fdinfo)
            } else {
                // No names (before 6.18): only an unambiguous holder will do.
                let groups = Set(files.compactMap { file -> String? in
                    file.target.hasPrefix(devRoot.appending("vfio").string + "/") && !file.target.hasSuffix("/vfio")
                        && !file.target.contains("/devices/") ? file.target : nil
                })
                let members = (try? sysfs.iommuGroupMembers()) ?? []
                if deviceFiles.isEmpty { return .refused(process, .noDeviceFile) }
                guard deviceFiles.count == 1, groups.count <= 1, members.count == 1, let fd = Int32(deviceFiles[0].fd) else {
                    return .refused(process, .ambiguous(deviceFiles: deviceFiles.count))
                }
                target = (fd, .unambiguous)
            }
        }

        let duplicate = cvfio_pidfd_getfd(pidfd, target.fd)
        guard duplicate >= 0 else {
            let error = Errno(rawValue: errno)
            // EBADF: the VMM closed that file meanwhile (it is still starting or stopping).
            if error == .badFileDescriptor { return .refused(process, .noDeviceFile) }
            if error == .noSuchProcess { return .noHolder }
            return .refused(process, .notPermitted(error))
        }
        let descriptor = FileDescriptor(rawValue: duplicate)
        // The number may have been reused between the look and the duplicate: check the copy.
        let ownLink = procRoot.appending("self/fd/\(duplicate)")
        let ownInfo = procRoot.appending("self/fdinfo/\(duplicate)")
        let copyTarget = try? Syscalls.readlink(ownLink).get()
        let isDevice = copyTarget == Self.deviceFileLink || cdevFile.map { $0.target == copyTarget } == true
        let copyNamesOther = Self.syspath(ownInfo).map { !Self.names($0, address) } ?? false
        guard isDevice, !copyNamesOther else {
            Syscalls.close(descriptor)
            return .refused(process, .noDeviceFile)
        }
        return .adopted(AdoptedDevice(address: address, descriptor: descriptor, vmmPID: pid, vmmDescriptor: target.fd,
                                      procRoot: procRoot, sysfsRoot: sysfsRoot), process, method: target.basis)
    }

    /// The running processes whose executable is allowed (one readlink of /proc/PID/exe
    /// each; their files are not looked at).
    public func runningVMMs(allowed: ExecutableAllowList) -> [Int32] {
        guard case .success(let entries) = Syscalls.listDirectory(procRoot) else { return [] }
        return entries.compactMap { entry in
            guard let pid = Int32(entry), let executable = Self.executable(procRoot.appending(entry)),
                  allowed.allows(executable) else { return nil }
            return pid
        }
    }

    /// Checks a device file sent over the control socket and takes it over: it must be a
    /// VFIO device file (a cdev, or the group path's anonymous file), and the kernel must name
    /// `address` as its device. Before Linux 6.18 the kernel names none, and a file that
    /// cannot be checked is refused: arming the wrong device of a running guest can kill it.
    /// `sender` is the process whose exit releases the device. Closes `fd` when it refuses.
    public func takeHandedOver(_ fd: Int32, for address: PCIAddress, sender: Int32) -> Result<(any LowPowerDevice, VMMProcess), HandoffRefusal> {
        let descriptor = FileDescriptor(rawValue: fd)
        func refuse(_ reason: HandoffRefusal) -> Result<(any LowPowerDevice, VMMProcess), HandoffRefusal> {
            Syscalls.close(descriptor)
            return .failure(reason)
        }
        let target = (try? Syscalls.readlink(procRoot.appending("self/fd/\(fd)")).get()) ?? "?"
        let sysfs = SysfsPCIDevice(address: address, sysfsRoot: sysfsRoot)
        let cdevs = (try? Syscalls.listDirectory(sysfs.directory.appending("vfio-dev")).get()) ?? []
        let isCdev = cdevs.contains { target == devRoot.appending("vfio/devices/\($0)").string }
        guard target == Self.deviceFileLink || isCdev else { return refuse(.notAVFIODeviceFile(target)) }
        if !isCdev {
            guard let syspath = Self.syspath(procRoot.appending("self/fdinfo/\(fd)")) else { return refuse(.cannotCheck) }
            guard Self.names(syspath, address) else {
                return refuse(.otherDevice(String(syspath.split(separator: "/").last ?? "?")))
            }
        }
        let pidfd = cvfio_pidfd_open(sender)
        guard pidfd >= 0 else { return refuse(.senderGone) }
        let process = VMMProcess(pid: sender, executable: Self.executable(procRoot.appending("\(sender)")) ?? "?",
                                 exitNotifier: FileDescriptor(rawValue: pidfd))
        return .success((AdoptedDevice(address: address, descriptor: descriptor, vmmPID: sender, vmmDescriptor: nil,
                                       procRoot: procRoot, sysfsRoot: sysfsRoot), process))
    }

    // MARK: /proc

    private static func executable(_ processDirectory: FilePath) -> String? {
        guard case .success(var path) = Syscalls.readlink(processDirectory.appending("exe")) else { return nil }
        if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
        return path
    }

    private static func openFiles(_ processDirectory: FilePath) -> [(fd: String, target: String)]? {
        let directory = processDirectory.appending("fd")
        guard case .success(let fds) = Syscalls.listDirectory(directory) else { return nil }
        return fds.compactMap { fd in (try? Syscalls.readlink(directory.appending(fd)).get()).map { (fd, $0) } }
    }

    /// Whether an fd whose link reads `target` is the node with `deviceNumber`. libvirt gives
    /// QEMU a private /dev, so the name alone proves nothing: compare the device numbers
    /// (stat follows the fd's link to the open file itself).
    private static func isNode(_ target: String, deviceNumber: UInt, link: FilePath) -> Bool {
        guard target.hasPrefix("/dev/vfio/"), !target.hasSuffix("/vfio") else { return false }
        return Self.deviceNumber(link) == deviceNumber
    }

    static func deviceNumber(_ path: FilePath) -> UInt? {
        var status = stat()
        guard path.withPlatformString({ stat($0, &status) }) == 0, status.st_mode & S_IFMT == S_IFCHR else { return nil }
        return UInt(status.st_rdev)
    }

    /// fdinfo's `vfio-device-syspath:` value, where the kernel writes one (>= 6.18).
    static func syspath(_ fdinfo: FilePath) -> String? {
        guard case .success(let text) = Syscalls.readSmallFile(fdinfo) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("vfio-device-syspath:") {
            return line.dropFirst("vfio-device-syspath:".count).trimmingCharacters(in: " \t")
        }
        return nil
    }

    /// Whether a syspath (/sys/devices/pci0000:00/0000:00:02.0) names `address`.
    static func names(_ syspath: String, _ address: PCIAddress) -> Bool {
        syspath.split(separator: "/").last.map(String.init) == address.description
    }
}

private extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var text = self
        while let first = text.first, set.contains(first) { text = text.dropFirst() }
        while let last = text.last, set.contains(last) { text = text.dropLast() }
        return String(text)
    }
}
