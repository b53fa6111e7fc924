import Glibc
import CVFIO
import SystemPackage

/// A Linux eventfd: the kernel's counter that a one-shot low-power entry signals on wake.
///
/// Always non-blocking and close-on-exec. The descriptor is closed when the object goes
/// away, so whoever watches it (a Dispatch read source) keeps a reference until its cancel
/// handler has run.
public final class EventFD: Sendable {
    public let descriptor: FileDescriptor

    /// The corresponding C function is `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`.
    public init() throws(Errno) {
        let fd = cvfio_eventfd(0, CVFIO_EFD_CLOEXEC | CVFIO_EFD_NONBLOCK)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        descriptor = FileDescriptor(rawValue: fd)
    }

    /// Takes over an eventfd opened elsewhere (one systemd kept in the service's fd store).
    public init(adopting descriptor: FileDescriptor) {
        self.descriptor = descriptor
    }

    deinit { Syscalls.close(descriptor) }

    /// Reads and resets the counter: the number of signals since the last read (coalesced),
    /// or nil when nothing has been signalled yet (EAGAIN).
    public func read() throws(Errno) -> UInt64? {
        var value: UInt64 = 0
        let result = retryingOnInterrupt {
            withUnsafeMutableBytes(of: &value) { Glibc.read(descriptor.rawValue, $0.baseAddress, 8) }
        }
        switch result {
        case .success: return value
        case .failure(.resourceTemporarilyUnavailable): return nil
        case .failure(let error): throw error
        }
    }

    /// Adds `value` to the counter, as the kernel does on a wake (tests and the simulator).
    public func signal(_ value: UInt64 = 1) throws(Errno) {
        var value = value
        let result = retryingOnInterrupt {
            withUnsafeBytes(of: &value) { Glibc.write(descriptor.rawValue, $0.baseAddress, 8) }
        }
        if case .failure(let error) = result { throw error }
    }

    /// Waits until the counter is non-zero or `timeout` passes; true when readable.
    /// For diagnostics and tests; the daemon waits on its Dispatch source instead.
    public func waitUntilSignalled(timeout: Duration) throws(Errno) -> Bool {
        var entry = pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(clamping: timeout.components.seconds * 1000
                                 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let result = retryingOnInterrupt { poll(&entry, 1, milliseconds) }
        switch result {
        case .success(let ready): return ready > 0
        case .failure(let error): throw error
        }
    }
}
