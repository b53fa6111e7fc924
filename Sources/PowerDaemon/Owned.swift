import Dispatch

// What a `@DaemonActor` class lets go of in its deinit. Its deinit is nonisolated (it runs
// wherever the last reference goes) and may not touch non-Sendable stored properties, such
// as a Dispatch source or a buffer pointer; these wrappers do the work in their own deinit,
// which runs when the owner's stored properties are released.

/// A Dispatch source that is cancelled when released (or when `cancel()` is called first).
public final class OwnedSource {
    private let source: any DispatchSourceProtocol

    public init(_ source: any DispatchSourceProtocol) { self.source = source }

    public func cancel() { source.cancel() }

    deinit { source.cancel() }
}

/// Memory that is freed when released.
final class OwnedBuffer<Element> {
    let pointer: UnsafeMutableBufferPointer<Element>

    init(capacity: Int) { pointer = .allocate(capacity: capacity) }

    deinit { pointer.deallocate() }
}
