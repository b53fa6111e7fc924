import Glibc
import CVarlink
import Dispatch

/// One accepted client. Lives on the server's queue; owned by the server's table until closed.
///
/// Input: bytes are read into `input`; complete messages (NUL-terminated) are found as they
/// arrive, so an oversized one is caught before it is buffered whole. Calls are handled one at
/// a time, in order: the next message is parsed only once the current call is answered, which
/// keeps replies in call order without a queue of parsed calls. While a call is open, reading
/// goes on (so a client that leaves is noticed at once and its call cancelled) until a
/// message's worth of input waits behind it; then the read source is suspended and the
/// kernel's socket buffer holds the client back. While suspended, a departure is noticed only
/// when the next reply fails to send (EPIPE).
///
/// EOF with POLLHUP means the client is gone: close now. EOF alone means it shut down only its
/// writing half: answer what it sent, then close.
///
/// Output: replies go straight to the socket; what it does not take waits in `output`, and a
/// client whose backlog passes `maxPendingOutputBytes` is dropped.
final class VarlinkConnection: @unchecked Sendable {
    let credentials: PeerCredentials
    private let fd: Int32
    private let queue: DispatchQueue
    private let limits: VarlinkServer.Limits
    private weak var server: VarlinkServer?
    /// Shared by every connection of the server (they all run on one queue).
    private let scratch: ReadBuffer

    private enum State {
        case open
        /// The client shut down its writing half: answer what it sent, then close.
        case inputClosed
        case closed
    }
    private var state = State.open

    private var readSource: (any DispatchSourceRead)?
    private var readSuspended = false
    private var writeSource: (any DispatchSourceWrite)?
    private var writeResumed = false
    /// Sources whose cancel handler has not run yet; the fd is closed after the last one, so
    /// Dispatch never watches a descriptor number that was closed and reused.
    private var liveSources = 0
    private var fdClosed = false

    /// The last time the client sent bytes or took replies (for the server's timeouts).
    private(set) var lastProgress = DispatchTime.now()

    private var input: [UInt8] = []
    /// Next unhandled byte.
    private var inputStart = 0
    /// End of the last complete message found (just past its NUL).
    private var completeEnd = 0

    /// File descriptors passed with SCM_RIGHTS, each batch with the stream position of the
    /// first byte it came with: the kernel hands them over with the first byte of the
    /// sendmsg(2) that carried them, so they belong to the message that byte starts.
    private var fileBatches: [(position: Int, fds: [Int32])] = []
    /// Bytes dropped from the front of `input` so far: `input` index + this = stream position.
    private var dropped = 0
    /// At most this many descriptors wait for their call; more is a client to drop.
    static let maxPendingFiles = 4

    private var output: [UInt8] = []
    private var outputStart = 0
    private var closeWhenFlushed = false

    /// The call being answered; nil when idle.
    private var current: VarlinkReply?
    private var isProcessing = false
    private var processingScheduled = false

    /// Calls handled in one turn of the queue before yielding, so a client that pipelines
    /// thousands of calls in one write cannot hold the queue (and device wakes) for long.
    private static let callsPerTurn = 16
    static let readChunk = 64 * 1024

    init(fd: Int32, credentials: PeerCredentials, server: VarlinkServer, queue: DispatchQueue,
         limits: VarlinkServer.Limits, scratch: ReadBuffer) {
        self.fd = fd
        self.scratch = scratch
        self.credentials = credentials
        self.server = server
        self.queue = queue
        self.limits = limits
    }

    func start() {
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler { @Sendable [weak self] in self?.readable() }
        source.setCancelHandler { @Sendable [self] in self.sourceCancelled() }
        liveSources += 1
        readSource = source
        source.resume()
    }

    // MARK: Reading

    /// Reads until the socket has nothing more (or a few chunks, then yields): an end of
    /// input that arrives with the last bytes is seen now, not on a readiness event that
    /// Dispatch may never deliver once the data is gone (a client that sent half a message
    /// and closed was never reaped).
    private func readable() {
        for _ in 0..<4 {
            guard state == .open, !readSuspended, readSource != nil else { return }
            guard readOnce() else { return }
        }
    }

    /// One read; true when it took bytes (more may wait), false at EAGAIN, EOF or an error.
    private func readOnce() -> Bool {
        let oldCount = input.count
        var fds = [Int32](repeating: -1, count: Self.maxPendingFiles)
        var received: Int32 = 0
        var truncated: Int32 = 0
        let n = Socket.retryOnInterrupt {
            cvarlink_receive(fd, scratch.bytes.baseAddress, scratch.bytes.count, &fds, Int32(Self.maxPendingFiles),
                             &received, &truncated)
        }
        if received > 0 {
            fileBatches.append((dropped + oldCount, Array(fds[..<Int(received)])))
        }
        if truncated != 0 || fileBatches.reduce(0, { $0 + $1.fds.count }) > Self.maxPendingFiles {
            close(.tooManyFiles)
            return false
        }
        let result: Socket.IOResult = if n > 0 { .done(n) } else if n == 0 { .disconnected } else {
            switch errno {
            case EAGAIN, EWOULDBLOCK: .wouldBlock
            case ECONNRESET, EPIPE: .disconnected
            case let e: .failed(e)
            }
        }
        switch result {
        case let .done(n):
            input.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch.bytes[..<n]))
            lastProgress = .now()
            guard scanForMessages(from: oldCount) else { return false }
            processInput()
            return true
        case .wouldBlock:
            return false
        case .disconnected:
            endOfInput()
            return false
        case let .failed(errno):
            close(.socketError(errno))
            return false
        }
    }

    /// Finds the NULs in the bytes just read; false when a message broke the size limit (the
    /// connection is then closing).
    private func scanForMessages(from start: Int) -> Bool {
        var index = start
        let max = limits.maxMessageBytes
        while index < input.count {
            let nul = input.withUnsafeBufferPointer { buffer -> Int? in
                let base = buffer.baseAddress! + index
                guard let found = memchr(base, 0, buffer.count - index) else { return nil }
                return base.distance(to: found.assumingMemoryBound(to: UInt8.self)) + index
            }
            guard let nul else { break }
            if nul - completeEnd > max { return tooLarge() }
            completeEnd = nul + 1
            index = nul + 1
        }
        if input.count - completeEnd > max { return tooLarge() }
        return true
    }

    private func tooLarge() -> Bool {
        // If the oversized message is the next to answer, answer it with the reason so the
        // client learns why; then close without reading the rest (systemd just closes).
        if current == nil && inputStart == completeEnd {
            _ = enqueue(["error": .string(VarlinkErrorName.system),
                         "parameters": ["origin": "linux", "errno": .integer(Int64(EMSGSIZE)),
                                        "errnoName": "EMSGSIZE",
                                        "maxMessageBytes": .integer(Int64(limits.maxMessageBytes))]])
        }
        close(.messageTooLarge)
        return false
    }

    /// EOF: the client closed, or only shut down its writing half and still reads.
    private func endOfInput() {
        if Socket.peerHungUp(fd) {
            close(.peerClosed)
            return
        }
        state = .inputClosed
        cancelReadSource()
        processInput()
    }

    /// Handles complete messages while no call is open, at most `callsPerTurn` per turn.
    private func processInput() {
        guard !isProcessing else { return }  // a handler answered synchronously; the loop below goes on
        isProcessing = true
        defer { isProcessing = false }
        var handled = 0
        while state != .closed, current == nil, inputStart < completeEnd {
            if handled == Self.callsPerTurn {
                scheduleProcessing()
                break
            }
            let end = input[inputStart..<completeEnd].firstIndex(of: 0)!
            let message = Array(input[inputStart..<end])
            let files = takeFiles(upTo: dropped + end)
            inputStart = end + 1
            handled += 1
            handle(message, files: files)
        }
        guard state != .closed else { return }
        compactInput()
        if state == .inputClosed && current == nil && inputStart == completeEnd {
            closeAfterFlush()
            return
        }
        updateReadInterest()
    }

    private func scheduleProcessing() {
        guard !processingScheduled else { return }
        processingScheduled = true
        queue.async { @Sendable [weak self] in
            guard let self else { return }
            self.processingScheduled = false
            self.processInput()
        }
    }

    /// The descriptors that came with the bytes of the message ending at stream position `end`.
    private func takeFiles(upTo end: Int) -> ReceivedFiles? {
        guard let first = fileBatches.first, first.position <= end else { return nil }
        var fds: [Int32] = []
        while let batch = fileBatches.first, batch.position <= end {
            fds += batch.fds
            fileBatches.removeFirst()
        }
        return ReceivedFiles(fds)
    }

    private func compactInput() {
        if inputStart == input.count {
            dropped += input.count
            input.removeAll(keepingCapacity: input.count <= Self.readChunk)
            inputStart = 0
            completeEnd = 0
        } else if inputStart >= Self.readChunk {
            dropped += inputStart
            input.removeFirst(inputStart)
            completeEnd -= inputStart
            inputStart = 0
        }
    }

    /// Backpressure: stop reading while a message's worth waits behind an open call.
    private func updateReadInterest() {
        guard state == .open, let readSource else { return }
        // Only while something else must happen first (a call answered, or calls already
        // buffered handled): pausing on a lone partial message would never see its end.
        let buffered = input.count - inputStart
        let shouldPause = buffered >= limits.maxMessageBytes && (current != nil || inputStart < completeEnd)
        if shouldPause && !readSuspended {
            readSource.suspend()
            readSuspended = true
        } else if !shouldPause && readSuspended {
            readSource.resume()
            readSuspended = false
        }
    }

    // MARK: Calls

    private func handle(_ bytes: [UInt8], files: ReceivedFiles?) {
        guard var call = Self.parseCall(bytes, maxDepth: limits.maxJSONDepth) else {
            // Like systemd: a message that is not a well-formed call gets no reply; the stream
            // cannot be trusted after it, so the connection is closed.
            close(.protocolViolation)
            return
        }
        call.files = files
        let reply = VarlinkReply(call: call, connection: self, queue: queue)
        if !call.oneway { current = reply }
        server?.route(call, from: credentials, reply: reply)
    }

    /// A call object: "method" (string, required), "parameters" (object or null), "oneway" and
    /// "more" (booleans, not both true), "upgrade" (false only). Anything else is refused.
    static func parseCall(_ bytes: [UInt8], maxDepth: Int) -> VarlinkCall? {
        guard let value = try? JSONValue(parsing: bytes, maxDepth: maxDepth),
              case let .object(members) = value, JSONValue.duplicateKey(in: bytes) == nil else { return nil }
        var method: String?
        var parameters: JSONValue = [:]
        var oneway = false
        var more = false
        for (key, member) in members {
            switch (key, member) {
            case let ("method", .string(name)): method = name
            case ("parameters", .object): parameters = member
            case ("parameters", .null): break
            case let ("oneway", .bool(flag)): oneway = flag
            case let ("more", .bool(flag)): more = flag
            case ("upgrade", .bool(false)): break
            default: return nil
            }
        }
        guard let method, !method.isEmpty, !(oneway && more) else { return nil }
        return VarlinkCall(method: method, parameters: parameters, oneway: oneway, more: more)
    }

    /// The server's look, once a second: a departure that reading cannot see while it is
    /// paused, and the client's timeouts (`Limits.idleTimeout`, `Limits.stallTimeout`).
    func sweep(now: DispatchTime) {
        guard state != .closed else { return }
        if (readSuspended || state == .inputClosed || current != nil), Socket.peerHungUp(fd) {
            close(.peerClosed)
            return
        }
        let quiet = Duration.nanoseconds(Int64(clamping: now.uptimeNanoseconds &- lastProgress.uptimeNanoseconds))
        let unread = outputStart < output.count
        let halfMessage = input.count > completeEnd
        if unread && quiet > limits.stallTimeout { return close(.slowReader) }
        if halfMessage && current == nil && inputStart == completeEnd && quiet > limits.stallTimeout { return close(.stalled) }
        if current == nil && inputStart == input.count && !unread && quiet > limits.idleTimeout { close(.idle) }
    }

    /// The reply's final answer went out (or was dropped): the next call may be handled.
    func callAnswered(_ reply: VarlinkReply) {
        guard current === reply else { return }
        lastProgress = .now()
        current = nil
        guard state != .closed else { return }
        processInput()
    }

    // MARK: Writing

    /// A reply made in pieces as the client reads (`VarlinkReply.sendList`, `sendEach`).
    private struct Producer {
        let next: () -> [UInt8]?
        let end: [UInt8]
        let done: () -> Void
    }
    private var producers: [Producer] = []
    private var productionScheduled = false
    /// Produce only while less than this waits unread, and at most `piecesPerTurn` pieces per
    /// turn of the queue.
    static let productionLowWater = 64 * 1024
    static let piecesPerTurn = 32

    /// Writes what `next` makes until it returns nil, then `end`, then runs `done`.
    func enqueueProduced(_ next: @escaping () -> [UInt8]?, end: [UInt8], done: @escaping () -> Void) {
        guard state != .closed else { return }
        producers.append(Producer(next: next, end: end, done: done))
        if producers.count == 1 { produce() }
    }

    private func produce() {
        productionScheduled = false
        var made = 0
        while state != .closed, let producer = producers.first {
            guard output.count - outputStart < Self.productionLowWater else { return }  // writable() goes on
            guard made < Self.piecesPerTurn else {
                // Yield: other clients, and the daemon's events, go first.
                if !productionScheduled {
                    productionScheduled = true
                    queue.async { @Sendable [weak self] in self?.produce() }
                }
                return
            }
            made += 1
            if let piece = producer.next() {
                guard enqueue(bytes: piece) else { return }
            } else {
                producers.removeFirst()
                if !producer.end.isEmpty { guard enqueue(bytes: producer.end) else { return } }
                producer.done()
            }
        }
    }

    /// Queues one message; false when the connection is closed or closes because of it.
    @discardableResult
    func enqueue(_ message: JSONValue) -> Bool {
        guard state != .closed else { return false }
        var bytes = message.jsonBytes
        bytes.append(0)
        return enqueue(bytes: bytes)
    }

    /// Queues bytes: sent at once when the socket takes them, else kept for `writable`.
    private func enqueue(bytes: [UInt8]) -> Bool {
        guard state != .closed else { return false }
        if outputStart == output.count {
            let result = bytes.withUnsafeBytes { Socket.send(fd, $0) }
            switch result {
            case let .done(n) where n == bytes.count:
                return true
            case let .done(n):
                output = Array(bytes[n...])
                outputStart = 0
            case .wouldBlock:
                output = bytes
                outputStart = 0
            case .disconnected:
                close(.peerClosed)
                return false
            case let .failed(errno):
                close(.socketError(errno))
                return false
            }
        } else {
            output.append(contentsOf: bytes)
        }
        if output.count - outputStart > limits.maxPendingOutputBytes {
            close(.slowReader)
            return false
        }
        resumeWriting()
        return true
    }

    private func resumeWriting() {
        if writeSource == nil {
            let source = DispatchSource.makeWriteSource(fileDescriptor: fd, queue: queue)
            source.setEventHandler { @Sendable [weak self] in self?.writable() }
            source.setCancelHandler { @Sendable [self] in self.sourceCancelled() }
            liveSources += 1
            writeSource = source
        }
        if !writeResumed {
            writeSource!.resume()
            writeResumed = true
        }
    }

    private func writable() {
        guard state != .closed else { return }
        while outputStart < output.count {
            let result = output.withUnsafeBytes { raw in
                Socket.send(fd, UnsafeRawBufferPointer(rebasing: raw[outputStart...]))
            }
            switch result {
            case let .done(n):
                outputStart += n
                lastProgress = .now()
            case .wouldBlock:
                if outputStart >= Self.readChunk {
                    output.removeFirst(outputStart)
                    outputStart = 0
                }
                return
            case .disconnected:
                close(.peerClosed)
                return
            case let .failed(errno):
                close(.socketError(errno))
                return
            }
        }
        output = []
        outputStart = 0
        if writeResumed {
            writeSource?.suspend()
            writeResumed = false
        }
        if !producers.isEmpty { produce() }
        if closeWhenFlushed && producers.isEmpty && outputStart == output.count { close(.finished) }
    }

    private func closeAfterFlush() {
        if outputStart == output.count {
            close(.finished)
        } else {
            closeWhenFlushed = true
        }
    }

    // MARK: Closing

    /// Closes the connection now: sources cancelled (the fd follows when they are gone), the
    /// server's table updated, and the open call, if any, cancelled.
    func close(_ reason: VarlinkServer.DisconnectReason) {
        guard state != .closed else { return }
        state = .closed
        cancelReadSource()
        if let writeSource {
            if !writeResumed { writeSource.resume() }  // a suspended source never runs its cancel handler
            writeResumed = true
            writeSource.cancel()
        }
        if liveSources == 0 { closeDescriptor() }
        input = []
        output = []
        producers = []
        for batch in fileBatches { batch.fds.forEach { _ = Glibc.close($0) } }
        fileBatches = []
        server?.connectionClosed(self, reason: reason)
        if let reply = current {
            current = nil
            reply.cancel()
        }
    }

    private func cancelReadSource() {
        guard let readSource else { return }
        if readSuspended { readSource.resume() }
        readSuspended = false
        readSource.cancel()
        self.readSource = nil
    }

    private func sourceCancelled() {
        liveSources -= 1
        if liveSources == 0 && state == .closed { closeDescriptor() }
    }

    private func closeDescriptor() {
        guard !fdClosed else { return }
        fdClosed = true
        _ = Glibc.close(fd)
    }
}

/// A read buffer one queue's connections take turns with, instead of one each.
final class ReadBuffer: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer

    init(size: Int) {
        bytes = .allocate(byteCount: size, alignment: 1)
    }

    deinit { bytes.deallocate() }
}
