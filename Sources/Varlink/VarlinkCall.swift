import Glibc
import Dispatch

/// File descriptors a client passed with a call (SCM_RIGHTS). Whatever the handler does not
/// `take` is closed when the call is done with, so a refused call leaks nothing.
public final class ReceivedFiles: @unchecked Sendable {
    private var fds: [Int32]

    init(_ fds: [Int32]) { self.fds = fds }

    /// How many came with the call.
    public var count: Int { fds.count }

    /// Hands the descriptors over to the caller, who closes them from now on.
    public func take() -> [Int32] {
        defer { fds = [] }
        return fds
    }

    deinit { fds.forEach { _ = close($0) } }
}

/// One method call as the client sent it.
public struct VarlinkCall: Sendable, Equatable {
    /// Descriptors passed with the call (SCM_RIGHTS); nil when none came.
    public var files: ReceivedFiles?

    public static func == (a: VarlinkCall, b: VarlinkCall) -> Bool {
        a.method == b.method && a.parameters == b.parameters && a.oneway == b.oneway && a.more == b.more && a.files === b.files
    }

    /// The fully qualified method name, e.g. `io.vfiopowerd.Manager.GetDevice`.
    public let method: String
    /// Always an object (an absent or null `parameters` arrives as `{}`).
    public let parameters: JSONValue
    /// The client wants no reply: whatever is sent on the reply is dropped.
    public let oneway: Bool
    /// The client accepts several replies (`continues: true` on all but the last).
    public let more: Bool

    public init(method: String, parameters: JSONValue = [:], oneway: Bool = false, more: Bool = false) {
        self.method = method
        self.parameters = parameters
        self.oneway = oneway
        self.more = more
    }

    /// The interface part of `method`: everything before the last dot.
    public var interface: String {
        guard let dot = method.lastIndex(of: ".") else { return "" }
        return String(method[..<dot])
    }

    /// The method's own name: everything after the last dot.
    public var member: String {
        guard let dot = method.lastIndex(of: ".") else { return method }
        return String(method[method.index(after: dot)...])
    }
}

/// The answer side of one call. Confined to the server's queue: call every method there.
///
/// A call is open until its final reply (`send` with `continues: false`, or `error`) or until it
/// is cancelled because the connection went away (client gone, dropped for a limit, or the
/// server stopped). Replies to an answered or cancelled call are dropped and `send` returns
/// false. The next call on the same connection is read only after this one is answered, so a
/// handler that never answers a non-oneway call stalls that client (and only that client).
public final class VarlinkReply: @unchecked Sendable {
    public let call: VarlinkCall
    private let queue: DispatchQueue
    private weak var connection: VarlinkConnection?
    private var state: State
    private var cancelHandler: (@Sendable () -> Void)?

    private enum State { case open, answered, cancelled }

    init(call: VarlinkCall, connection: VarlinkConnection?, queue: DispatchQueue) {
        self.call = call
        self.connection = connection
        self.queue = queue
        // A oneway call is answered by definition: nobody waits for a reply.
        self.state = call.oneway ? .answered : .open
    }

    /// The client went away (or the server stopped) before the final reply.
    public var isCancelled: Bool {
        dispatchPrecondition(condition: .onQueue(queue))
        return state == .cancelled
    }

    /// Runs once, on the queue, when the call is cancelled (not when it is answered). Set it
    /// on a call you keep (a `more` subscription) to forget it. Setting it on a call that is
    /// already cancelled runs it at once, so a subscription is never left behind.
    public var onCancel: (@Sendable () -> Void)? {
        get {
            dispatchPrecondition(condition: .onQueue(queue))
            return cancelHandler
        }
        set {
            dispatchPrecondition(condition: .onQueue(queue))
            switch state {
            case .open: cancelHandler = newValue
            case .answered: cancelHandler = nil
            case .cancelled: newValue?()
            }
        }
    }

    /// Sends a reply. `parameters` must be an object. With `continues: true` (only for a call
    /// made with `more`) the call stays open for further replies; otherwise this is the final
    /// one. `continues: true` on a call without `more` answers the error ExpectedMore instead.
    /// Returns false when the reply was dropped: the call is oneway, answered or cancelled.
    @discardableResult
    public func send(_ parameters: JSONValue = [:], continues: Bool = false) -> Bool {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state == .open else { return false }
        if continues && !call.more {
            error(VarlinkErrorName.expectedMore)
            return false
        }
        var message: [String: JSONValue] = ["parameters": Self.object(parameters)]
        if continues { message["continues"] = true }
        return deliver(.object(message), final: !continues)
    }

    /// The final reply `{key: [element(0), element(1), ...]}`, written as the client reads it:
    /// elements are made on the queue a few at a time, only while little of the reply waits
    /// unread, so a reply of any length costs bounded memory and bounded time per turn of
    /// the queue (other clients and the daemon's own events go between). An element that is
    /// nil (gone meanwhile) is left out.
    public func sendList(_ key: String, count: Int, element: @escaping (Int) -> JSONValue?) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state == .open else { return }
        state = .answered
        cancelHandler = nil
        guard let connection else { return }
        var next = 0
        var opened = false
        var first = true
        connection.enqueueProduced({
            if !opened {
                opened = true
                return Array(#"{"parameters":{"#.utf8) + JSONValue.string(key).jsonBytes + Array(#":["#.utf8)
            }
            while next < count {
                defer { next += 1 }
                if let value = element(next) {
                    defer { first = false }
                    return (first ? [] : [UInt8(ascii: ",")]) + value.jsonBytes
                }
            }
            return nil
        }, end: Array("]}}".utf8) + [0]) { [weak self, weak connection] in
            if let self { connection?.callAnswered(self) }
        }
    }

    /// `count` replies that continue the call (`more`), `parameters(i)` each, written as the
    /// client reads them, like `sendList`; then `then` runs. Nil parameters are left out.
    public func sendEach(count: Int, parameters: @escaping (Int) -> JSONValue?, then: @escaping () -> Void) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state == .open, let connection else { return }
        guard call.more else {
            error(VarlinkErrorName.expectedMore)
            return
        }
        var next = 0
        connection.enqueueProduced({
            while next < count {
                defer { next += 1 }
                if let value = parameters(next) {
                    return JSONValue.object(["continues": true, "parameters": Self.object(value)]).jsonBytes + [0]
                }
            }
            return nil
        }, end: [], done: then)
    }

    /// `send` with an `Encodable` value as the parameters (it must encode to an object).
    @discardableResult
    public func send(encoding value: some Encodable, continues: Bool = false) throws -> Bool {
        send(try JSONValue(encoding: value), continues: continues)
    }

    /// Answers with an error: the final reply. `name` is fully qualified, e.g.
    /// `io.vfiopowerd.Manager.NoSuchDevice` or `VarlinkErrorName.invalidParameter`.
    @discardableResult
    public func error(_ name: String, parameters: JSONValue = [:]) -> Bool {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state == .open else { return false }
        let message: JSONValue = ["error": .string(name), "parameters": Self.object(parameters)]
        return deliver(message, final: true)
    }

    private func deliver(_ message: JSONValue, final: Bool) -> Bool {
        if final {
            state = .answered
            cancelHandler = nil
        }
        guard let connection else { return false }
        let sent = connection.enqueue(message)
        if final { connection.callAnswered(self) }
        return sent
    }

    /// Called by the connection when it closes with this call still open.
    func cancel() {
        guard state == .open else { return }
        state = .cancelled
        let handler = cancelHandler
        cancelHandler = nil
        handler?()
    }

    private static func object(_ parameters: JSONValue) -> JSONValue {
        if case .object = parameters { return parameters }
        if case .null = parameters { return [:] }
        assertionFailure("varlink reply parameters must be an object, not \(parameters)")
        return [:]
    }
}
