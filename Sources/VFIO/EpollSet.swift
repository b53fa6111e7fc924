import Glibc
import CVFIO
import SystemPackage

/// An epoll instance: a set of descriptors watched for readability (level-triggered), each
/// named by a caller's token. Its own descriptor is readable while any member is, so one
/// Dispatch read source on it stands for the whole set, and one callout can take every ready
/// member in a batch.
///
/// Not thread-safe: the owner confines it to one queue.
public final class EpollSet: Sendable {
    public let descriptor: FileDescriptor

    /// The corresponding C function is `epoll_create1(EPOLL_CLOEXEC)`.
    public init() throws(Errno) {
        let fd = cvfio_epoll_create()
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        descriptor = FileDescriptor(rawValue: fd)
    }

    deinit { Syscalls.close(descriptor) }

    /// Watches `fd`; its readiness is reported as `token`. The corresponding C function is
    /// `epoll_ctl(EPOLL_CTL_ADD)` with EPOLLIN.
    public func add(_ fd: FileDescriptor, token: UInt64) throws(Errno) {
        if case .failure(let error) = retryingOnInterrupt({ cvfio_epoll_add(descriptor.rawValue, fd.rawValue, token) }) {
            throw error
        }
    }

    /// Stops watching `fd`. Call it before `fd` is closed: epoll forgets a descriptor only
    /// when every duplicate of its file is closed. The corresponding C function is
    /// `epoll_ctl(EPOLL_CTL_DEL)`.
    public func remove(_ fd: FileDescriptor) throws(Errno) {
        if case .failure(let error) = retryingOnInterrupt({ cvfio_epoll_remove(descriptor.rawValue, fd.rawValue) }) {
            throw error
        }
    }

    /// The tokens of up to `buffer.count` (at most 256) ready members, without waiting; the
    /// number written. The corresponding C function is `epoll_wait` with a zero timeout.
    public func ready(into buffer: UnsafeMutableBufferPointer<UInt64>) throws(Errno) -> Int {
        let result = retryingOnInterrupt {
            cvfio_epoll_ready(descriptor.rawValue, buffer.baseAddress, Int32(clamping: buffer.count))
        }
        switch result {
        case .success(let count): return Int(count)
        case .failure(let error): throw error
        }
    }
}
