import Glibc
import ArgumentParser
import ControlProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Systemd

/// The default port. Prometheus' list of default exporter ports is full (9100-9999 are all
/// claimed); 9843 is used by none of the common exporters. The socket unit and --listen
/// change it.
let defaultPort = 9843

@main
struct VFIOPowerdExporter: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfio-powerd-exporter",
        abstract: "Serve vfio-powerd's devices and counters as Prometheus metrics (GET /metrics).",
        discussion: """
            Under systemd, vfio-powerd-exporter.socket listens and passes its sockets; --listen is \
            then ignored. Each scrape reads the daemon over its control socket (ListDevices and \
            GetStatistics); a daemon that cannot be read gives vfio_powerd_up 0, not an HTTP error.
            """)

    @Option(name: .long, help: ArgumentHelp("Where to listen when systemd passes no socket: ADDRESS:PORT ([ADDRESS]:PORT for IPv6).",
                                            valueName: "address:port"))
    var listen = "127.0.0.1:\(defaultPort)"

    @Option(name: .long, help: ArgumentHelp("vfio-powerd's control socket.", valueName: "path"))
    var socket = ManagerInterface.defaultSocketPath

    @Option(name: .long, help: ArgumentHelp("How long each call to the daemon may take, in seconds.", valueName: "seconds"))
    var timeout = 3.0

    @Option(name: .long, help: ArgumentHelp("Connections served at once; more are closed at once.", valueName: "count"))
    var maxConnections = 32

    func validate() throws {
        guard timeout > 0, timeout <= 60 else { throw ValidationError("--timeout must be above 0 and at most 60 seconds") }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be at least 1") }
        _ = try Self.address(listen)
    }

    func run() throws {
        let scraper = Scraper(socketPath: socket, timeout: .milliseconds(Int64(timeout * 1000)))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let open = NIOLockedValueBox(0)
        let limit = maxConnections
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let admitted = open.withLockedValue { count -> Bool in
                    guard count < limit else { return false }
                    count += 1
                    return true
                }
                guard admitted else { return channel.close() }
                channel.closeFuture.whenComplete { _ in open.withLockedValue { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(IdleStateHandler(allTimeout: .minutes(5)))
                    try sync.addHandler(MetricsHTTPHandler(scraper: scraper))
                }
            }

        // systemd's sockets (vfio-powerd-exporter.socket), else one of our own.
        let passed = SystemdNotifier.storedDescriptors().map(\.descriptor)
        var channels: [any Channel] = []
        do {
            if passed.isEmpty {
                channels = [try bootstrap.bind(to: Self.address(listen)).wait()]
            } else {
                for descriptor in passed {
                    guard SystemdNotifier.isListeningStreamSocket(descriptor) else {
                        printError("vfio-powerd-exporter: systemd passed descriptor \(descriptor), which is not a listening stream socket: use ListenStream= only")
                        throw ExitCode.failure
                    }
                    channels.append(try bootstrap.withBoundSocket(descriptor).wait())
                }
            }
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("vfio-powerd-exporter: cannot listen on \(passed.isEmpty ? listen : "the sockets systemd passed"): \(error)")
            throw ExitCode.failure
        }
        let addresses = channels.compactMap { $0.localAddress.flatMap { address in address.port.map { "\(address.ipAddress ?? "?"):\($0)" } } }.joined(separator: ", ")
        printError("vfio-powerd-exporter: serving /metrics on \(addresses), reading \(socket)")
        SystemdNotifier().ready()
        for channel in channels { try channel.closeFuture.wait() }
    }

    /// ADDRESS:PORT, [IPV6]:PORT, or a host name that resolves.
    static func address(_ text: String) throws -> SocketAddress {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            throw ValidationError("--listen \"\(text)\": give ADDRESS:PORT, e.g. 127.0.0.1:\(defaultPort) or [::]:\(defaultPort)")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty { host = "0.0.0.0" }
        do {
            return try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw ValidationError("--listen \"\(text)\": \"\(host)\" is not an address this host has a name for: \(error)")
        }
    }
}
