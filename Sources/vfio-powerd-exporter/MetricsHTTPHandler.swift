import NIOCore
import NIOHTTP1
import PowerMetrics

/// One HTTP connection: GET /metrics answers the daemon's metrics (read for this request);
/// / says where they are; anything else is 404 (405 for a method other than GET or HEAD).
///
/// NIOHTTP1's pipelining helper holds a connection's next request until this one's answer is
/// written, so one request is in flight per connection.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let scraper: Scraper
    private var head: HTTPRequestHead?

    init(scraper: Scraper) {
        self.scraper = scraper
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break  // a body means nothing here
        case .end:
            guard let head else { return }
            self.head = nil
            answer(head, context: context)
        }
    }

    private func answer(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard head.method == .GET || head.method == .HEAD else {
            return respond(head, .methodNotAllowed, "only GET and HEAD\n", extra: [("Allow", "GET, HEAD")], context: context)
        }
        switch path {
        case "/metrics":
            scraper.scrape(on: context.eventLoop).assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success(let text):
                    respond(head, .ok, text, contentType: DaemonMetrics.contentType, context: context)
                case .failure:
                    // The thread pool is shutting down: the exporter is stopping.
                    respond(head, .serviceUnavailable, "stopping\n", context: context)
                }
            }
        case "/":
            respond(head, .ok, "vfio-powerd-exporter: the metrics are at /metrics\n", context: context)
        default:
            respond(head, .notFound, "not found: the metrics are at /metrics\n", context: context)
        }
    }

    private func respond(_ request: HTTPRequestHead, _ status: HTTPResponseStatus, _ text: String,
                         contentType: String = "text/plain; charset=utf-8", extra: [(String, String)] = [],
                         context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count)
        buffer.writeString(text)
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", "\(buffer.readableBytes)")] + extra)
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: written)
        if !keepAlive {
            let channel = context.channel
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // IdleStateHandler: a connection quiet this long is closed (Prometheus reconnects).
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
