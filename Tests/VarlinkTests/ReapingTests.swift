import Dispatch
import Foundation
import Varlink
import XCTest

/// Clients that leave are reaped, whatever they left behind, and idle or stalled ones time out.
final class ReapingTests: XCTestCase {
    func testClientsThatLeaveMidMessageAreReaped() throws {
        let harness = try ServerHarness()
        for _ in 0..<40 {
            let client = try harness.client()
            try client.writeRaw(Array(#"{"method":"org.example.test.Ech"#.utf8))
            client.close()
        }
        XCTAssertTrue(harness.eventually { harness.server.connectionCount == 0 }, "\(harness.onQueue { harness.server.connectionCount }) left")
    }

    func testAStreamingClientThatLeavesWithCallsQueuedIsReaped() throws {
        let harness = try ServerHarness()
        for _ in 0..<4 {
            let client = try harness.client()
            // A call that never ends, then more than a message's worth of calls behind it.
            var bytes = Array(#"{"method":"org.example.test.Hold","more":true}"#.utf8) + [0]
            let echo = Array(#"{"method":"org.example.test.Echo","parameters":{"value":"x"}}"#.utf8) + [0]
            while bytes.count < 70_000 { bytes += echo }
            try client.writeRaw(bytes)
            client.close()
        }
        XCTAssertTrue(harness.eventually { harness.server.connectionCount == 0 }, "\(harness.onQueue { harness.server.connectionCount }) left")
    }
}

extension ReapingTests {
    /// The disconnect reasons so far; read on the server's queue.
    private func reasons(_ recorder: Recorder) -> [VarlinkServer.DisconnectReason] {
        recorder.events.compactMap { if case .disconnected(_, let reason) = $0 { reason } else { nil } }
    }

    func testIdleAndStalledClientsTimeOutButAnOpenCallDoesNot() throws {
        var limits = VarlinkServer.Limits()
        limits.idleTimeout = .milliseconds(300)
        limits.stallTimeout = .milliseconds(300)
        let harness = try ServerHarness(limits: limits)
        let monitor = try harness.client()
        try monitor.writeRaw(Array(#"{"method":"org.example.test.Hold","more":true}"#.utf8) + [0])
        XCTAssertTrue(harness.eventually { harness.recorder.held.count == 1 })
        let idle = try harness.client()
        let half = try harness.client()
        try half.writeRaw(Array(#"{"method":"org.example.te"#.utf8))
        let recorder = harness.recorder
        XCTAssertTrue(harness.eventually { self.reasons(recorder).count == 2 })
        XCTAssertEqual(Set(harness.onQueue { reasons(recorder) }.map { "\($0)" }), ["idle", "stalled"])
        // Swept together with the two, the client with an open call was kept.
        XCTAssertEqual(harness.onQueue { harness.server.connectionCount }, 1)
        XCTAssertEqual(harness.onQueue { harness.recorder.cancelled }, [])
        _ = (monitor, idle)
    }

    func testRootKeepsARoomOfItsOwn() throws {
        var limits = VarlinkServer.Limits()
        limits.maxConnections = 6
        limits.reservedForRoot = 2
        let harness = try ServerHarness(limits: limits, mode: 0o666)
        guard getuid() == 0 else { throw XCTSkip("needs root, to connect as another user too") }
        chmod(harness.directory.path, 0o755)
        // Another user takes every connection it can get, and holds them.
        let other = Process()
        other.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        other.arguments = ["-c", """
            import os, socket, sys, time
            os.setgid(65534); os.setuid(65534)
            held = []
            for _ in range(10):
                s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); held.append(s)
            print("connected", flush=True); time.sleep(60)
            """, harness.socketPath]
        let output = Pipe()
        other.standardOutput = output
        try other.run()
        defer { other.terminate() }
        _ = output.fileHandleForReading.availableData
        XCTAssertTrue(harness.eventually { harness.server.connectionCount == 4 }, "the other user got maxConnections - reservedForRoot")
        XCTAssertEqual(try harness.client().call("org.example.test.Echo", ["value": "root"]), ["value": "root"], "root still gets in")
    }
}

/// A reply of any length is written as the client reads it: at max_devices (4096) records of
/// a device's size (about 600 bytes), a listing is 2.5 MB, past the 1 MiB a client may leave
/// unread, and arrives whole; and it never holds up another client.
final class LongReplyTests: XCTestCase {
    func testAListPastTheUnreadBoundArrivesWhole() throws {
        let harness = try ServerHarness()
        let reply = try harness.client().call("org.example.test.List", ["count": 4096, "size": 600], timeout: .seconds(60))
        XCTAssertEqual(reply.object?["records"]?.array?.count, 4096)
        XCTAssertEqual(reply.object?["records"]?.array?.last?.string?.count, 600)
    }

    func testManyContinuingRepliesArriveWholeAndInOrder() throws {
        let harness = try ServerHarness()
        var sizes: [Int] = []
        try harness.client().call("org.example.test.Each", ["count": 4096, "size": 600], more: true, timeout: .seconds(60)) {
            sizes.append($0.object?["record"]?.string?.count ?? -1)
        }
        XCTAssertEqual(sizes.count, 4097)
        XCTAssertEqual(Set(sizes.dropLast()), [600])
        XCTAssertEqual(sizes.last, 0, "the final reply comes after every continuing one")
    }

    func testAReaderThatDoesNotReadItsListingHoldsUpNobody() throws {
        let harness = try ServerHarness()
        let deaf = try harness.client()
        try deaf.writeRaw(Array(#"{"method":"org.example.test.List","parameters":{"count":100000,"size":600}}"#.utf8) + [0])
        for _ in 0..<20 {
            XCTAssertEqual(try harness.client().call("org.example.test.Echo", ["value": "x"], timeout: .seconds(10)), ["value": "x"])
        }
        _ = deaf
    }
}

/// The socket's file is never acted on by a path that could have been swapped.
final class SocketPathTests: XCTestCase {
    private func server(at path: String) -> VarlinkServer {
        VarlinkServer(socketPath: path, mode: 0o660, queue: DispatchQueue(label: "socket-path-test"),
                      info: (vendor: "v", product: "p", version: "1", url: "u"), interfaces: [:]) { _, _, reply in reply.send() }
    }

    func testADirectoryOthersCanWriteIsRefused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("open-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        chmod(directory.path, 0o777)
        let server = server(at: directory.appendingPathComponent("sock").path)
        XCTAssertThrowsError(try server.queue.sync { try server.start() }) { error in
            XCTAssertTrue("\(error)".contains("can be written by users other than its owner (mode 777"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory.appendingPathComponent("sock").path))
    }

    func testTheSocketIsMadeWithItsModeAndASymlinkInItsPlaceIsNeverFollowed() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("private-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        chmod(directory.path, 0o755)
        let path = directory.appendingPathComponent("sock").path
        let first = server(at: path)
        try first.queue.sync { try first.start() }
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(info.st_mode & 0o777, 0o660, "the mode comes with the bind")
        first.queue.sync { first.stop() }

        // A symlink where the socket goes, to a private file: refused, and the file untouched.
        let secret = directory.appendingPathComponent("secret").path
        FileManager.default.createFile(atPath: secret, contents: Data("x".utf8))
        chmod(secret, 0o600)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: secret)
        let second = server(at: path)
        XCTAssertThrowsError(try second.queue.sync { try second.start() })
        XCTAssertEqual(stat(secret, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)
    }
}
