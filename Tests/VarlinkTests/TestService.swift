import Dispatch
import Foundation
import Varlink
import XCTest

/// The interface the tests serve: one method per behaviour under test.
let testInterface = """
    # Methods for testing the varlink server.
    interface org.example.test

    # Answers with what it was given.
    method Echo(value: string) -> (value: string)

    # Streams `count` replies with continues, then a final one with index = count.
    method Stream(count: int) -> (index: int)

    # Answers after `milliseconds`, from a timer on the server's queue.
    method Delay(milliseconds: int, tag: string) -> (tag: string)

    # Sends one reply with continues, then keeps the call open until the client leaves.
    method Hold() -> (held: bool)

    # Sends `count` replies of `size` bytes each at once, to a client that may not read them.
    method Flood(count: int, size: int) -> (data: string)

    # A list of `count` records of `size` bytes, written as the client reads (sendList).
    method List(count: int, size: int) -> (records: []string)

    # `count` replies with continues, written as the client reads (sendEach), then a final one.
    method Each(count: int, size: int) -> (record: string)

    # Counts the calls (called oneway).
    method Ping() -> ()

    # The caller's credentials as the server saw them.
    method WhoAmI() -> (pid: int, uid: int, gid: int)

    # Declared, never implemented.
    method Unimplemented() -> ()

    error Failed (reason: string)

    """

/// What the handler saw, confined to the server's queue (read it with `harness.onQueue`).
final class Recorder: @unchecked Sendable {
    var pings = 0
    var cancelled: [String] = []
    var events: [VarlinkServer.Event] = []
    var floodSent = 0
    var floodAccepted = 0
    var held: [VarlinkReply] = []
}

/// A real server on a socket in a temporary folder, on its own serial queue.
final class ServerHarness {
    let directory: URL
    let socketPath: String
    let queue = DispatchQueue(label: "varlink-test-server")
    let recorder = Recorder()
    let server: VarlinkServer

    init(limits: VarlinkServer.Limits = VarlinkServer.Limits(), mode: mode_t = 0o660) throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("varlink-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        socketPath = directory.appendingPathComponent("io.example.test").path
        let recorder = self.recorder
        let queue = self.queue
        server = VarlinkServer(
            socketPath: socketPath, mode: mode, queue: queue, limits: limits,
            info: (vendor: "vfio-powerd project", product: "varlink tests", version: "1.0", url: "https://example.org/"),
            interfaces: ["org.example.test": testInterface],
            handler: { call, credentials, reply in
                ServerHarness.handle(call, credentials, reply, recorder: recorder, queue: queue)
            })
        server.onEvent = { event in recorder.events.append(event) }
        let server = self.server
        try queue.sync { try server.start() }
    }

    deinit {
        let server = self.server
        queue.sync { server.stop() }
        try? FileManager.default.removeItem(at: directory)
    }

    func onQueue<T>(_ body: () -> T) -> T { queue.sync(execute: body) }

    func client() throws -> VarlinkClient { try VarlinkClient(socketPath: socketPath) }

    /// Waits (bounded) until `condition`, read on the server's queue, holds.
    func eventually(timeout: TimeInterval = 5, _ condition: @escaping () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if queue.sync(execute: condition) { return true }
            usleep(5_000)
        }
        return false
    }

    static func handle(_ call: VarlinkCall, _ credentials: PeerCredentials, _ reply: VarlinkReply,
                       recorder: Recorder, queue: DispatchQueue) {
        let p = call.parameters
        switch call.member {
        case "Echo":
            guard let value = p["value"]?.string else {
                reply.error(VarlinkErrorName.invalidParameter, parameters: ["parameter": "value"])
                return
            }
            reply.send(["value": .string(value)])
        case "Stream":
            let count = p["count"]?.int ?? 0
            for index in 0..<count where !reply.send(["index": .integer(Int64(index))], continues: true) {
                return
            }
            reply.send(["index": .integer(Int64(count))])
        case "Delay":
            let ms = p["milliseconds"]?.int ?? 0
            let tag = p["tag"] ?? ""
            queue.asyncAfter(deadline: .now() + .milliseconds(ms)) { @Sendable in
                reply.send(["tag": tag])
            }
        case "Hold":
            reply.send(["held": true], continues: true)
            recorder.held.append(reply)
            reply.onCancel = { @Sendable in
                recorder.cancelled.append(call.member)
                recorder.held.removeAll { $0 === reply }
            }
        case "Flood":
            let count = p["count"]?.int ?? 0
            let data = JSONValue.string(String(repeating: "x", count: p["size"]?.int ?? 0))
            reply.onCancel = { @Sendable in recorder.cancelled.append(call.member) }
            for _ in 0..<count {
                recorder.floodSent += 1
                guard reply.send(["data": data], continues: true) else { return }
                recorder.floodAccepted += 1
            }
            reply.send(["data": ""])
        case "List":
            let record = JSONValue.string(String(repeating: "x", count: p["size"]?.int ?? 0))
            reply.sendList("records", count: p["count"]?.int ?? 0) { _ in record }
        case "Each":
            let record = JSONValue.string(String(repeating: "x", count: p["size"]?.int ?? 0))
            reply.sendEach(count: p["count"]?.int ?? 0, parameters: { _ in ["record": record] }) {
                reply.send(["record": ""])
            }
        case "Ping":
            recorder.pings += 1
            reply.send()
        case "WhoAmI":
            reply.send(["pid": .integer(Int64(credentials.pid)), "uid": .integer(Int64(credentials.uid)),
                        "gid": .integer(Int64(credentials.gid))])
        default:
            reply.error(VarlinkErrorName.methodNotImplemented, parameters: ["method": .string(call.method)])
        }
    }
}

extension VarlinkClient {
    /// The next message, or nil when the server closed the connection; fails on a timeout.
    func nextMessageOrClose(timeout: Duration = .seconds(5)) throws -> JSONValue? {
        do {
            return try readMessage(deadline: .now + timeout)
        } catch let error as VarlinkClientError where error.code == .disconnected {
            return nil
        }
    }

    /// Reads until the server closes the connection; returns the messages read before that.
    func messagesUntilClose(timeout: Duration = .seconds(5)) throws -> [JSONValue] {
        var messages: [JSONValue] = []
        let deadline = ContinuousClock.now + timeout
        while let message = try nextMessageOrClose(timeout: deadline - .now) {
            messages.append(message)
        }
        return messages
    }
}

func message(_ value: JSONValue) -> [UInt8] { value.jsonBytes + [0] }
