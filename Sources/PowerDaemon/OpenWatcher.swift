import Glibc
import CVFIO
import Dispatch
import SystemPackage
import VFIO

/// Tells the daemon when a process opens a `vmm` device's group node (/dev/vfio/N), or its
/// cdev: the moment a VMM takes the device, without scanning /proc in a loop. One inotify
/// descriptor for every node, behind one Dispatch read source on the daemon's queue.
///
/// It sees opens of the host's node only: libvirt gives QEMU a private /dev whose nodes are
/// other inodes, so its opens are not seen here (the fallback scan and start hooks cover it).
/// Confined to the daemon's queue: `@DaemonActor`.
@DaemonActor
final class OpenWatcher {
    private let descriptor: FileDescriptor
    private var source: OwnedSource?
    /// inotify watch descriptor → the node and the devices it announces (a group can hold
    /// several devices).
    private var watches: [Int32: (node: FilePath, addresses: Set<PCIAddress>)] = [:]
    private var byNode: [FilePath: Int32] = [:]
    private let storage = OwnedBuffer<UInt64>(capacity: 16 * 1024 / 8)
    private var buffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(storage.pointer) }
    /// Called with the devices whose node was opened (all of them when the kernel's queue
    /// overflowed and opens may have been missed).
    private let onOpen: (Set<PCIAddress>) -> Void

    init(onOpen: @escaping (Set<PCIAddress>) -> Void) throws(Errno) {
        let fd = cvfio_inotify_init()
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        descriptor = FileDescriptor(rawValue: fd)
        self.onOpen = onOpen
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: DaemonActor.queue)
        source.setEventHandler { [weak self] in DaemonActor.assumeIsolated { self?.drain() } }
        source.setCancelHandler { [descriptor] in try? descriptor.close() }
        source.activate()
        self.source = OwnedSource(source)
    }

    /// Watches `nodes` for opens on behalf of `address`. A node that does not exist yet (the
    /// device is not bound) is skipped: call again when the device returns.
    func watch(_ nodes: [FilePath], for address: PCIAddress) {
        for node in nodes {
            if let wd = byNode[node] {
                watches[wd]?.addresses.insert(address)
                watched.insert(address)
                continue
            }
            let wd = node.withPlatformString { inotify_add_watch(descriptor.rawValue, $0, CVFIO_IN_OPEN) }
            guard wd >= 0 else { continue }
            // The same inode under another name returns the same watch descriptor.
            if var existing = watches[wd] {
                existing.addresses.insert(address)
                watches[wd] = existing
            } else {
                watches[wd] = (node, [address])
            }
            byNode[node] = wd
            watched.insert(address)
        }
    }

    /// Whether any node announces `address`.
    func isWatching(_ address: PCIAddress) -> Bool { watched.contains(address) }
    private var watched = Set<PCIAddress>()

    /// Stops watching for `address`; a node nobody needs any more leaves the set.
    func unwatch(_ address: PCIAddress) {
        guard watched.remove(address) != nil else { return }
        for (wd, watch) in watches where watch.addresses.contains(address) {
            var remaining = watch.addresses
            remaining.remove(address)
            if remaining.isEmpty {
                _ = inotify_rm_watch(descriptor.rawValue, wd)
                watches[wd] = nil
                byNode[watch.node] = nil
            } else {
                watches[wd] = (watch.node, remaining)
            }
        }
    }

    func cancel() {
        source?.cancel()
        source = nil
    }

    private func drain() {
        var opened = Set<PCIAddress>()
        while true {
            let count = read(descriptor.rawValue, buffer.baseAddress, buffer.count)
            guard count > 0 else { break }
            var offset = 0
            let bytes = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
            while offset + Int(CVFIO_INOTIFY_EVENT_SIZE) <= count {
                var wd: Int32 = 0
                var mask: UInt32 = 0
                offset = Int(cvfio_inotify_event_at(bytes, offset, &wd, &mask))
                if mask & CVFIO_IN_Q_OVERFLOW != 0 {
                    watches.values.forEach { opened.formUnion($0.addresses) }
                } else if mask & CVFIO_IN_IGNORED != 0 {
                    // The node is gone (its device was unbound): watched again when it returns.
                    if let watch = watches.removeValue(forKey: wd) {
                        byNode[watch.node] = nil
                        watched.subtract(watch.addresses)
                    }
                } else if mask & CVFIO_IN_OPEN != 0, let watch = watches[wd] {
                    opened.formUnion(watch.addresses)
                }
            }
        }
        if !opened.isEmpty { onOpen(opened) }
    }
}
