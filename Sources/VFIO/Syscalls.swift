// The few syscalls the VFIO layer makes, each wrapped once, swift-system style:
// EINTR is retried in one place, errors come back as `Errno`, and close is never retried.
import Glibc
import CVFIO
import Synchronization
import SystemPackage

/// Runs `body` until it stops failing with EINTR; any other failure becomes the current errno.
@inline(__always)
internal func retryingOnInterrupt<T: BinaryInteger>(_ body: () -> T) -> Result<T, Errno> {
    while true {
        let result = body()
        if result >= 0 { return .success(result) }
        let error = Errno(rawValue: errno)
        if error != .interrupted { return .failure(error) }
    }
}

internal enum Syscalls {
    /// Closes a descriptor its one owner is done with. Never retried (Linux frees the number
    /// even when close fails with EINTR). EBADF means a second owner closed a number that
    /// was already closed, which could have closed another device's file that reused it:
    /// a bug, counted so that tests can catch it.
    static func close(_ fd: FileDescriptor) {
        if Glibc.close(fd.rawValue) != 0 && errno == EBADF {
            closesOfClosedDescriptors.add(1, ordering: .relaxed)
        }
    }

    static let closesOfClosedDescriptors = Atomic<Int>(0)

    /// The corresponding C function is `ioctl` with a pointer argument.
    static func ioctl(_ fd: FileDescriptor, _ request: UInt, _ argument: UnsafeMutableRawPointer) -> Result<CInt, Errno> {
        retryingOnInterrupt { cvfio_ioctl_pointer(fd.rawValue, request, argument) }
    }

    /// The corresponding C function is `ioctl` with an integer argument (or none).
    static func ioctl(_ fd: FileDescriptor, _ request: UInt, value: UInt = 0) -> Result<CInt, Errno> {
        retryingOnInterrupt { cvfio_ioctl_value(fd.rawValue, request, value) }
    }

    /// VFIO_DEVICE_FEATURE, laid out by the C shim from the kernel's own struct.
    static func deviceFeature(_ fd: FileDescriptor, argsz: UInt32, flags: UInt32,
                              payload: UnsafeRawBufferPointer?) -> Result<CInt, Errno> {
        retryingOnInterrupt {
            cvfio_device_feature(fd.rawValue, argsz, flags, payload?.baseAddress, payload?.count ?? 0)
        }
    }

    /// The corresponding C function is `readlink`. Returns the link's target.
    static func readlink(_ path: FilePath) -> Result<String, Errno> {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = path.withPlatformString { cPath in
            buffer.withUnsafeMutableBufferPointer { Glibc.readlink(cPath, $0.baseAddress!, $0.count - 1) }
        }
        guard count >= 0 else { return .failure(Errno(rawValue: errno)) }
        return .success(String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// The corresponding C function is `access(path, F_OK)`.
    static func exists(_ path: FilePath) -> Bool {
        path.withPlatformString { access($0, F_OK) } == 0
    }

    /// Names in a directory, without "." and "..". The corresponding C function is `readdir`.
    static func listDirectory(_ path: FilePath) -> Result<[String], Errno> {
        guard let dir = path.withPlatformString({ opendir($0) }) else { return .failure(Errno(rawValue: errno)) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return .success(names)
    }

    /// Reads a small file whole (sysfs attributes are at most a page).
    static func readSmallFile(_ path: FilePath) -> Result<String, Errno> {
        do {
            let fd = try FileDescriptor.open(path, .readOnly, options: [.closeOnExec])
            defer { close(fd) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
                if count == 0 { break }
                bytes += chunk[..<count]
                if bytes.count > 1 << 20 { break }  // a sysfs attribute is never this large
            }
            return .success(String(decoding: bytes, as: UTF8.self))
        } catch let error as Errno {
            return .failure(error)
        } catch {
            return .failure(.ioError)
        }
    }

    /// Writes a small value into an existing file (a sysfs attribute).
    static func writeSmallFile(_ path: FilePath, _ text: String) -> Result<Void, Errno> {
        do {
            let fd = try FileDescriptor.open(path, .writeOnly, options: [.closeOnExec])
            defer { close(fd) }
            _ = try fd.writeAll(Array(text.utf8))
            return .success(())
        } catch let error as Errno {
            return .failure(error)
        } catch {
            return .failure(.ioError)
        }
    }
}
