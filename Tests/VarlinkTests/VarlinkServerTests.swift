import Dispatch
import Foundation
import Varlink
import XCTest

final class VarlinkServerTests: XCTestCase {

    // MARK: org.varlink.service

    func testGetInfoListsEveryInterface() throws {
        let harness = try ServerHarness()
        let info = try harness.client().call("org.varlink.service.GetInfo")
        XCTAssertEqual(info, [
            "vendor": "vfio-powerd project", "product": "varlink tests", "version": "1.0",
            "url": "https://example.org/", "interfaces": ["org.example.test", "org.varlink.service"],
        ])
    }

    func testGetInfoRefusesParameters() throws {
        let harness = try ServerHarness()
        XCTAssertThrowsError(try harness.client().call("org.varlink.service.GetInfo", ["bogus": 1])) {
            XCTAssertEqual($0 as? VarlinkError,
                           VarlinkError(name: VarlinkErrorName.invalidParameter, parameters: ["parameter": "bogus"]))
        }
    }

    func testGetInterfaceDescriptionOfKnownAndUnknownInterfaces() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        let known = try client.call("org.varlink.service.GetInterfaceDescription", ["interface": "org.example.test"])
        XCTAssertEqual(known, ["description": .string(testInterface)])
        let own = try client.call("org.varlink.service.GetInterfaceDescription", ["interface": "org.varlink.service"])
        XCTAssertTrue(own["description"]?.string?.contains("method GetInterfaceDescription(interface: string)") == true)
        XCTAssertThrowsError(try client.call("org.varlink.service.GetInterfaceDescription", ["interface": "org.example.nope"])) {
            XCTAssertEqual($0 as? VarlinkError,
                           VarlinkError(name: VarlinkErrorName.interfaceNotFound, parameters: ["interface": "org.example.nope"]))
        }
        XCTAssertThrowsError(try client.call("org.varlink.service.GetInterfaceDescription")) {
            XCTAssertEqual($0 as? VarlinkError,
                           VarlinkError(name: VarlinkErrorName.invalidParameter, parameters: ["parameter": "interface"]))
        }
        // The connection is still good after error replies.
        XCTAssertEqual(try client.call("org.example.test.Echo", ["value": "still here"]), ["value": "still here"])
    }

    // MARK: Routing

    func testHandlerMethodAnswers() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        XCTAssertEqual(try client.call("org.example.test.Echo", ["value": "héllo \"wörld\"\n\u{1}"]),
                       ["value": "héllo \"wörld\"\n\u{1}"])
        XCTAssertThrowsError(try client.call("org.example.test.Echo")) {
            XCTAssertEqual($0 as? VarlinkError,
                           VarlinkError(name: VarlinkErrorName.invalidParameter, parameters: ["parameter": "value"]))
        }
    }

    func testUnknownMethodAndInterface() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        XCTAssertThrowsError(try client.call("org.example.test.Nope")) {
            XCTAssertEqual($0 as? VarlinkError,
                           VarlinkError(name: VarlinkErrorName.methodNotFound, parameters: ["method": "org.example.test.Nope"]))
        }
        XCTAssertThrowsError(try client.call("org.varlink.service.Nope")) {
            XCTAssertEqual(($0 as? VarlinkError)?.name, VarlinkErrorName.methodNotFound)
        }
        XCTAssertThrowsError(try client.call("org.example.other.Echo", ["value": "x"])) {
            XCTAssertEqual($0 as? VarlinkError,
                           VarlinkError(name: VarlinkErrorName.interfaceNotFound, parameters: ["interface": "org.example.other"]))
        }
        XCTAssertThrowsError(try client.call("org.example.test.Unimplemented")) {
            XCTAssertEqual(($0 as? VarlinkError)?.name, VarlinkErrorName.methodNotImplemented)
        }
    }

    func testOnewayGetsNoReply() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        try client.callOneway("org.example.test.Ping")
        try client.callOneway("org.example.test.Nope")  // unknown, and still no reply
        // The next message on the wire is Echo's reply, not an answer to the pings.
        XCTAssertEqual(try client.call("org.example.test.Echo", ["value": "after"]), ["value": "after"])
        XCTAssertEqual(harness.onQueue { harness.recorder.pings }, 1)
    }

    func testStreamingSendsContinuesThenFinal() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        try client.writeRaw(message(["method": "org.example.test.Stream", "parameters": ["count": 3], "more": true]))
        var replies: [JSONValue] = []
        for _ in 0..<4 { replies.append(try client.readMessage(deadline: .now + .seconds(5))) }
        XCTAssertEqual(replies, [
            ["parameters": ["index": 0], "continues": true],
            ["parameters": ["index": 1], "continues": true],
            ["parameters": ["index": 2], "continues": true],
            ["parameters": ["index": 3]],
        ])
        // Through the client's collecting call too.
        XCTAssertEqual(try client.collect("org.example.test.Stream", ["count": 3]),
                       [["index": 0], ["index": 1], ["index": 2], ["index": 3]])
    }

    func testContinuesWithoutMoreIsExpectedMore() throws {
        let harness = try ServerHarness()
        XCTAssertThrowsError(try harness.client().call("org.example.test.Stream", ["count": 2])) {
            XCTAssertEqual(($0 as? VarlinkError)?.name, VarlinkErrorName.expectedMore)
        }
    }

    // MARK: Framing

    func testByteByByteDelivery() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        let bytes = message(["method": "org.example.test.Echo", "parameters": ["value": "slow"]])
        for byte in bytes {
            try client.writeRaw([byte])
            usleep(500)
        }
        XCTAssertEqual(try client.readMessage(deadline: .now + .seconds(5)), ["parameters": ["value": "slow"]])
    }

    func testTwoCallsInOneWriteAreAnsweredInOrder() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        // The first is answered later from a timer; the second could be answered at once, but
        // replies keep call order.
        try client.writeRaw(
            message(["method": "org.example.test.Delay", "parameters": ["milliseconds": 100, "tag": "first"]])
                + message(["method": "org.example.test.Echo", "parameters": ["value": "second"]])
                + message(["method": "org.example.test.Echo", "parameters": ["value": "third"]]))
        XCTAssertEqual(try client.readMessage(deadline: .now + .seconds(5)), ["parameters": ["tag": "first"]])
        XCTAssertEqual(try client.readMessage(deadline: .now + .seconds(5)), ["parameters": ["value": "second"]])
        XCTAssertEqual(try client.readMessage(deadline: .now + .seconds(5)), ["parameters": ["value": "third"]])
    }

    func testManyPipelinedCallsAllAnswered() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        var bytes: [UInt8] = []
        for i in 0..<500 { bytes += message(["method": "org.example.test.Echo", "parameters": ["value": .string("\(i)")]]) }
        try client.writeRaw(bytes)
        for i in 0..<500 {
            XCTAssertEqual(try client.readMessage(deadline: .now + .seconds(5)), ["parameters": ["value": .string("\(i)")]])
        }
    }

    func testPipelinedMegabyteBehindSlowCallsIsReadWithBackpressure() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        // 20 000 calls (over 1 MiB), every 2000th answered late: the server stops reading while
        // a message's worth waits behind an open call, and starts again once it is answered.
        var bytes: [UInt8] = []
        for i in 0..<20_000 {
            if i % 2000 == 0 {
                bytes += message(["method": "org.example.test.Delay", "parameters": ["milliseconds": 20, "tag": .string("\(i)")]])
            } else {
                bytes += message(["method": "org.example.test.Echo", "parameters": ["value": .string("\(i)")]])
            }
        }
        XCTAssertGreaterThan(bytes.count, 1 << 20)
        // The queue must stay responsive meanwhile (a device wake waits on it): a timer on it
        // every 2 ms records the longest gap between its firings.
        let gaps = GapMeter(queue: harness.queue, interval: .milliseconds(2))
        let writer = dup(try rawDescriptor(of: client))
        let payload = bytes
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var offset = 0
            while offset < payload.count {
                var entry = pollfd(fd: writer, events: Int16(POLLOUT), revents: 0)
                _ = poll(&entry, 1, 5000)
                let n = payload.withUnsafeBytes { send(writer, $0.baseAddress! + offset, payload.count - offset, Int32(MSG_NOSIGNAL)) }
                if n > 0 { offset += n } else if errno != EAGAIN && errno != EINTR { break }
            }
            close(writer)
            done.signal()
        }
        for i in 0..<20_000 {
            let reply = try client.readMessage(deadline: .now + .seconds(10))
            let expected: JSONValue = i % 2000 == 0 ? ["tag": .string("\(i)")] : ["value": .string("\(i)")]
            guard reply["parameters"] == expected else {
                XCTFail("reply \(i): \(reply)")
                break
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        let longestGap = gaps.stop()
        XCTAssertLessThan(longestGap, .milliseconds(100), "the server held its queue for \(longestGap)")
        XCTAssertTrue(harness.onQueue { harness.recorder.events.allSatisfy { if case .disconnected = $0 { false } else { true } } })
    }

    func testHalfClosedClientStillGetsItsAnswers() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        try client.writeRaw(message(["method": "org.example.test.Delay", "parameters": ["milliseconds": 50, "tag": "a"]])
                            + message(["method": "org.example.test.Echo", "parameters": ["value": "b"]]))
        XCTAssertEqual(shutdown(try rawDescriptor(of: client), Int32(SHUT_WR)), 0)
        XCTAssertEqual(try client.messagesUntilClose(), [["parameters": ["tag": "a"]], ["parameters": ["value": "b"]]])
    }

    // MARK: Hostile clients

    func testOversizedMessageClosesOnlyThatClient() throws {
        var limits = VarlinkServer.Limits()
        limits.maxMessageBytes = 4096
        let harness = try ServerHarness(limits: limits)
        let good = try harness.client()
        let bad = try harness.client()
        XCTAssertEqual(try good.call("org.example.test.Echo", ["value": "before"]), ["value": "before"])
        let huge = String(repeating: "y", count: 10_000)
        try? bad.writeRaw(message(["method": "org.example.test.Echo", "parameters": ["value": .string(huge)]]))
        let answers = try bad.messagesUntilClose()
        XCTAssertEqual(answers.count, 1)
        XCTAssertEqual(answers.first?["error"], .string(VarlinkErrorName.system))
        XCTAssertEqual(answers.first?["parameters"]?["errnoName"], "EMSGSIZE")
        XCTAssertEqual(try good.call("org.example.test.Echo", ["value": "after"]), ["value": "after"])
        XCTAssertTrue(harness.eventually { harness.recorder.events.contains { if case .disconnected(_, .messageTooLarge) = $0 { true } else { false } } })

        // A message just at the limit is fine.
        let exact = try harness.client()
        let prefix = message(["method": "org.example.test.Echo", "parameters": ["value": ""]]).count - 1
        let fits = String(repeating: "z", count: 4096 - prefix)
        XCTAssertEqual(try exact.call("org.example.test.Echo", ["value": .string(fits)]), ["value": .string(fits)])
    }

    func testEndlessMessageWithoutTerminatorIsCutOff() throws {
        var limits = VarlinkServer.Limits()
        limits.maxMessageBytes = 4096
        let harness = try ServerHarness(limits: limits)
        let bad = try harness.client()
        // No NUL ever: the server must not buffer it all.
        try? bad.writeRaw([UInt8](repeating: UInt8(ascii: " "), count: 64 * 1024))
        let answers = try bad.messagesUntilClose()
        XCTAssertEqual(answers.first?["parameters"]?["errno"]?.int, Int(EMSGSIZE))
        XCTAssertEqual(try harness.client().call("org.example.test.Echo", ["value": "ok"]), ["value": "ok"])
    }

    func testMalformedMessagesCloseTheConnectionWithoutReply() throws {
        let harness = try ServerHarness()
        let broken: [[UInt8]] = [
            Array("{not json}".utf8) + [0],
            Array("[1, 2, 3]".utf8) + [0],
            Array(#"{"parameters": {}}"#.utf8) + [0],
            Array(#"{"method": 42}"#.utf8) + [0],
            Array(#"{"method": "org.example.test.Echo", "parameters": [1]}"#.utf8) + [0],
            Array(#"{"method": "org.example.test.Echo", "oneway": true, "more": true}"#.utf8) + [0],
            Array(#"{"method": "org.example.test.Echo", "surprise": 1}"#.utf8) + [0],
            Array(#"{"method": "org.example.test.Echo", "parameters": {"value": "\ud800"}}"#.utf8) + [0],
            [0xFF, 0xFE, 0],
            [0],
            Array(repeating: UInt8(ascii: "["), count: 1000) + Array(repeating: UInt8(ascii: "]"), count: 1000) + [0],
            // A key twice: JSONDecoder would keep the last one silently.
            Array(#"{"method": "org.example.test.Echo", "method": "org.example.test.Other"}"#.utf8) + [0],
            Array(#"{"method": "org.example.test.Echo", "method": "org.example.test.Other"}"#.utf8) + [0],
            Array(#"{"method": "org.example.test.Echo", "parameters": {"value": "a", "value": "b"}}"#.utf8) + [0],
        ]
        for bytes in broken {
            let client = try harness.client()
            try client.writeRaw(bytes)
            XCTAssertEqual(try client.messagesUntilClose(), [], "\(String(decoding: bytes, as: UTF8.self))")
        }
        XCTAssertEqual(try harness.client().call("org.example.test.Echo", ["value": "fine"]), ["value": "fine"])
        XCTAssertEqual(harness.onQueue {
            harness.recorder.events.filter { if case .disconnected(_, .protocolViolation) = $0 { true } else { false } }.count
        }, broken.count)
    }

    func testValidCallBeforeGarbageIsAnsweredFirst() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        try client.writeRaw(message(["method": "org.example.test.Echo", "parameters": ["value": "ok"]]) + Array("garbage".utf8) + [0])
        XCTAssertEqual(try client.messagesUntilClose(), [["parameters": ["value": "ok"]]])
    }

    func testConnectionLimitRefusesTheExtraClient() throws {
        var limits = VarlinkServer.Limits()
        limits.maxConnections = 2
        let harness = try ServerHarness(limits: limits)
        var first: VarlinkClient? = try harness.client()
        let second = try harness.client()
        XCTAssertEqual(try first?.call("org.example.test.Echo", ["value": "1"]), ["value": "1"])
        XCTAssertEqual(try second.call("org.example.test.Echo", ["value": "2"]), ["value": "2"])
        let third = try harness.client()
        XCTAssertThrowsError(try third.call("org.example.test.Echo", ["value": "3"], timeout: .seconds(5))) {
            XCTAssertEqual(($0 as? VarlinkClientError)?.code, .disconnected)
        }
        XCTAssertEqual(harness.onQueue { harness.server.connectionCount }, 2)
        XCTAssertTrue(harness.onQueue { harness.recorder.events.contains { if case .refused = $0 { true } else { false } } })
        // A slot frees when a client leaves.
        first = nil
        XCTAssertTrue(harness.eventually { harness.server.connectionCount == 1 })
        XCTAssertEqual(try harness.client().call("org.example.test.Echo", ["value": "4"]), ["value": "4"])
        _ = first
    }

    func testPerUserLimitRefusesTheExtraClient() throws {
        var limits = VarlinkServer.Limits()
        limits.maxConnectionsPerUser = 1
        let harness = try ServerHarness(limits: limits)
        let first = try harness.client()
        XCTAssertEqual(try first.call("org.example.test.Echo", ["value": "1"]), ["value": "1"])
        XCTAssertThrowsError(try harness.client().call("org.example.test.Echo", ["value": "2"], timeout: .seconds(5))) {
            XCTAssertEqual(($0 as? VarlinkClientError)?.code, .disconnected)
        }
        XCTAssertEqual(try first.call("org.example.test.Echo", ["value": "3"]), ["value": "3"])
    }

    func testClientThatNeverReadsIsDroppedAndOthersStayServed() throws {
        var limits = VarlinkServer.Limits()
        limits.maxPendingOutputBytes = 256 * 1024
        let harness = try ServerHarness(limits: limits)
        let reader = try harness.client()
        let sleeper = try harness.client()
        // 4 MiB of replies to a client that reads none of them.
        try sleeper.writeRaw(message(["method": "org.example.test.Flood", "parameters": ["count": 256, "size": 16384], "more": true]))
        XCTAssertTrue(harness.eventually { harness.recorder.cancelled.contains("Flood") })
        let (sent, accepted) = harness.onQueue { (harness.recorder.floodSent, harness.recorder.floodAccepted) }
        XCTAssertLessThan(accepted, 256, "the flood stopped early")
        XCTAssertEqual(sent, accepted + 1, "the send that passed the bound was refused")
        XCTAssertTrue(harness.onQueue {
            harness.recorder.events.contains { if case .disconnected(_, .slowReader) = $0 { true } else { false } }
        })
        // The other client is still served (a blocked server would time out here).
        XCTAssertEqual(try reader.call("org.example.test.Echo", ["value": "quick"], timeout: .seconds(5)), ["value": "quick"])
        // The dropped client finds its connection closed after whatever was already sent.
        XCTAssertThrowsError(try {
            while true { _ = try sleeper.readMessage(deadline: .now + .seconds(5)) }
        }()) { XCTAssertEqual(($0 as? VarlinkClientError)?.code, .disconnected) }
    }

    func testDisconnectMidStreamRunsOnCancel() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        try client.writeRaw(message(["method": "org.example.test.Hold", "more": true]))
        XCTAssertEqual(try client.readMessage(deadline: .now + .seconds(5)), ["parameters": ["held": true], "continues": true])
        XCTAssertEqual(harness.onQueue { harness.recorder.held.count }, 1)
        client.close()
        XCTAssertTrue(harness.eventually { harness.recorder.cancelled == ["Hold"] })
        XCTAssertEqual(harness.onQueue { harness.recorder.held.count }, 0)
        XCTAssertTrue(harness.eventually { harness.server.connectionCount == 0 })
    }

    func testReplyToAGoneClientIsDropped() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        try client.writeRaw(message(["method": "org.example.test.Hold", "more": true]))
        _ = try client.readMessage(deadline: .now + .seconds(5))
        let reply = try XCTUnwrap(harness.onQueue { harness.recorder.held.first })
        client.close()
        XCTAssertTrue(harness.eventually { reply.isCancelled })
        XCTAssertFalse(harness.onQueue { reply.send(["held": false]) })
        // onCancel set after the fact still runs, so nothing is left registered.
        let ran = harness.onQueue { () -> Bool in
            nonisolated(unsafe) var ran = false
            reply.onCancel = { ran = true }
            return ran
        }
        XCTAssertTrue(ran)
    }

    func testStopCancelsOpenCallsAndRemovesTheSocket() throws {
        let harness = try ServerHarness()
        let client = try harness.client()
        try client.writeRaw(message(["method": "org.example.test.Hold", "more": true]))
        _ = try client.readMessage(deadline: .now + .seconds(5))
        harness.onQueue { harness.server.stop() }
        XCTAssertEqual(harness.onQueue { harness.recorder.cancelled }, ["Hold"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: harness.socketPath))
        XCTAssertNil(try client.nextMessageOrClose())
        XCTAssertThrowsError(try VarlinkClient(socketPath: harness.socketPath)) {
            XCTAssertEqual(($0 as? VarlinkClientError)?.errno, ENOENT)
        }
    }

    func testNoDescriptorLeaksWhateverWayClientsLeave() throws {
        var limits = VarlinkServer.Limits()
        limits.maxMessageBytes = 4096
        limits.maxPendingOutputBytes = 64 * 1024
        let harness = try ServerHarness(limits: limits)
        _ = try harness.client().call("org.example.test.Echo", ["value": "warm up"])
        XCTAssertTrue(harness.eventually { harness.server.connectionCount == 0 })
        let before = try openDescriptors()
        for round in 0..<20 {
            // Answered and closed.
            _ = try harness.client().call("org.example.test.Echo", ["value": .string("\(round)")])
            // Gone mid-stream, and gone before a late answer.
            let holder = try harness.client()
            try holder.writeRaw(message(["method": "org.example.test.Hold", "more": true]))
            _ = try holder.readMessage(deadline: .now + .seconds(5))
            holder.close()
            let late = try harness.client()
            try late.writeRaw(message(["method": "org.example.test.Delay", "parameters": ["milliseconds": 5, "tag": "x"]]))
            late.close()
            // Garbage, oversized, and never reading.
            let garbage = try harness.client()
            try garbage.writeRaw(Array("nonsense".utf8) + [0])
            _ = try garbage.messagesUntilClose()
            let huge = try harness.client()
            try? huge.writeRaw([UInt8](repeating: UInt8(ascii: "a"), count: 8192))
            _ = try huge.messagesUntilClose()
            let sleeper = try harness.client()
            try sleeper.writeRaw(message(["method": "org.example.test.Flood", "parameters": ["count": 64, "size": 4096], "more": true]))
            XCTAssertTrue(harness.eventually { harness.recorder.cancelled.filter { $0 == "Flood" }.count == round + 1 })
            sleeper.close()
        }
        XCTAssertTrue(harness.eventually { harness.server.connectionCount == 0 })
        XCTAssertTrue(harness.eventually { harness.recorder.held.isEmpty })
        // Descriptors close when the last Dispatch source of a connection is gone; give the
        // cancel handlers a moment, then count.
        var after = try openDescriptors()
        for _ in 0..<100 where after > before {
            usleep(10_000)
            after = try openDescriptors()
        }
        // A leak leaves more; fewer means the warm-up client's descriptor was still closing
        // when `before` was counted.
        XCTAssertLessThanOrEqual(after, before)
    }

    // MARK: The socket

    func testPeerCredentialsAreTheCaller() throws {
        let harness = try ServerHarness()
        let me = try harness.client().call("org.example.test.WhoAmI")
        XCTAssertEqual(me, ["pid": .integer(Int64(getpid())), "uid": .integer(Int64(getuid())), "gid": .integer(Int64(getgid()))])
    }

    func testSocketFileMode() throws {
        let harness = try ServerHarness()
        var st = stat()
        XCTAssertEqual(stat(harness.socketPath, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
    }

    func testSocketFileGroup() throws {
        // Root may give the socket any group; anyone else only one of their own.
        let group: gid_t = getuid() == 0 ? 4242 : getgid()
        let queue = DispatchQueue(label: "group")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("varlink-group-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("socket").path
        let server = VarlinkServer(socketPath: path, mode: 0o600, group: group, queue: queue,
                                   info: (vendor: "v", product: "p", version: "1", url: "u"), interfaces: [:]) { _, _, reply in
            reply.send()
        }
        try queue.sync { try server.start() }
        defer { queue.sync { server.stop() } }
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertEqual(st.st_gid, group)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }

    func testStaleSocketIsReplacedButALiveOneIsNot() throws {
        let harness = try ServerHarness()
        // A second server on the same path while the first is alive: refused.
        let queue = DispatchQueue(label: "second")
        let second = VarlinkServer(socketPath: harness.socketPath, queue: queue,
                                   info: (vendor: "v", product: "p", version: "1", url: "u"), interfaces: [:]) { _, _, reply in
            reply.send()
        }
        XCTAssertThrowsError(try queue.sync { try second.start() }) {
            XCTAssertEqual(($0 as? VarlinkSocketError)?.errno, EADDRINUSE)
        }
        XCTAssertEqual(try harness.client().call("org.example.test.Echo", ["value": "first"]), ["value": "first"])

        // A socket file nobody listens on: taken over.
        let stalePath = harness.directory.appendingPathComponent("stale").path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let bound = try UnixSocketAddress.with(stalePath) { bind(fd, $0, $1) }
        XCTAssertEqual(bound, 0)
        close(fd)
        let third = VarlinkServer(socketPath: stalePath, queue: queue,
                                  info: (vendor: "v", product: "p", version: "1", url: "u"), interfaces: [:]) { _, _, reply in
            reply.send()
        }
        try queue.sync { try third.start() }
        XCTAssertEqual(try VarlinkClient(socketPath: stalePath).call("org.varlink.service.GetInfo")["product"], "p")
        queue.sync { third.stop() }
    }
}

/// Fires a timer on a queue and keeps the longest time between two firings.
final class GapMeter: @unchecked Sendable {
    private let queue: DispatchQueue
    private let timer: any DispatchSourceTimer
    private var last = ContinuousClock.now
    private var longest = Duration.zero

    init(queue: DispatchQueue, interval: DispatchTimeInterval) {
        self.queue = queue
        timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + interval, repeating: interval)
        timer.setEventHandler { @Sendable [unowned self] in
            let now = ContinuousClock.now
            self.longest = max(self.longest, now - self.last)
            self.last = now
        }
        queue.sync { last = .now }
        timer.resume()
    }

    /// Stops the timer; the longest gap seen.
    func stop() -> Duration {
        queue.sync {
            timer.cancel()
            return longest
        }
    }
}

/// The client's descriptor, for tests that need a raw socket call (shutdown).
func rawDescriptor(of client: VarlinkClient) throws -> Int32 {
    let mirror = Mirror(reflecting: client)
    return try XCTUnwrap(mirror.children.first { $0.label == "fd" }?.value as? Int32)
}

/// How many descriptors this process has open.
func openDescriptors() throws -> Int {
    try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
}
