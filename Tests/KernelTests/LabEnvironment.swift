import Glibc
import Foundation
import SystemPackage
import VFIO
import XCTest

/// What the VM lab tells a test about its guest (lab/lab.sh exports these).
/// These tests only make sense on a real kernel with real vfio-pci devices: outside the lab
/// they are not run at all (`make check` runs them through lab/lab.sh, and skips them on the
/// host with `swift test --skip KernelTests`).
enum Lab {
    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    static func requireGuest() throws {
        guard environment["LAB"] == "1" else {
            throw XCTSkip("real-kernel test: runs inside the VM lab (lab/lab.sh), not on the host")
        }
    }

    /// The devices bound to vfio-pci, e1000e first, then nvme.
    static var devices: [PCIAddress] {
        (environment["LAB_VFIO_DEVICES"] ?? "").split(separator: " ").compactMap { PCIAddress($0) }
    }

    static var first: PCIAddress { devices[0] }
    static var second: PCIAddress { devices[1] }

    /// A present device bound to no driver.
    static var spare: PCIAddress? { environment["LAB_SPARE_DEVICE"].flatMap { PCIAddress($0) } }

    static var kernelRelease: String {
        environment["LAB_KERNEL_RELEASE"] ?? {
            var name = utsname()
            uname(&name)
            return withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }()
    }

    /// (major, minor) of the running kernel.
    static var kernelVersion: (Int, Int) {
        let parts = kernelRelease.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        return (parts.first ?? 0, parts.dropFirst().first ?? 0)
    }
}

/// Waits for a sysfs condition: there is no event for runtime PM transitions, so tests poll
/// every 2 ms up to a deadline generous enough for QEMU without KVM.
func waitFor(_ what: String, timeout: Duration = .seconds(3),
             file: StaticString = #filePath, line: UInt = #line,
             _ condition: () -> Bool) -> Duration? {
    let clock = ContinuousClock()
    let start = clock.now
    while clock.now - start < timeout {
        if condition() { return clock.now - start }
        usleep(2000)
    }
    return nil
}

func sleep(_ duration: Duration) {
    usleep(UInt32(duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000))
}

extension SysfsPCIDevice {
    var status: RuntimeStatus? { try? runtimeStatus() }
    var state: PCIPowerState? { try? powerState() }
}

extension Errno {
    static let EINVAL = Errno(rawValue: Glibc.EINVAL)
    static let EBADF = Errno(rawValue: Glibc.EBADF)
    static let ENOTTY = Errno(rawValue: Glibc.ENOTTY)
}

/// A child process started with posix_spawn. (Foundation's Process needs a run-loop wakeup
/// socket pair that the guest's chroot could not create, and then hung in waitUntilExit.)
final class Child {
    let pid: pid_t
    private var status: Int32?

    /// Runs `/bin/sh -c script`.
    init(shell script: String) throws {
        var pid: pid_t = 0
        let words: [String] = ["/bin/sh", "-c", script]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let result = posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ)
        guard result == 0 else { throw Errno(rawValue: result) }
        self.pid = pid
    }

    /// True while the child runs (reaps it once it has exited).
    var isRunning: Bool {
        guard status == nil else { return false }
        var raw: Int32 = 0
        if waitpid(pid, &raw, WNOHANG) == pid { status = raw }
        return status == nil
    }

    /// The exit status once it has exited normally, else nil.
    var exitStatus: Int32? {
        guard !isRunning, let status, status & 0x7f == 0 else { return nil }
        return (status >> 8) & 0xff
    }

    func kill() {
        guard isRunning else { return }
        Glibc.kill(pid, SIGKILL)
        _ = waitFor("child \(pid) to die") { !isRunning }
    }
}
