import Glibc
import ControlProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PowerCtlKit
import PowerMetrics

/// Reads the daemon once per scrape, over its control socket, and renders what it read.
///
/// The varlink client blocks, so reads run on a thread pool of one thread, never on the
/// event loop: scrapes are served one after the other, and the daemon sees at most one
/// exporter connection at a time.
final class Scraper: Sendable {
    let socketPath: String
    /// Each of the two calls may take this long; a daemon slower than that counts as down.
    let timeout: Duration
    private let pool: NIOThreadPool
    /// Whether the last scrape reached the daemon: a change is said once on stderr (the
    /// journal), not every scrape.
    private let wasUp = NIOLockedValueBox<Bool?>(nil)

    init(socketPath: String, timeout: Duration) {
        self.socketPath = socketPath
        self.timeout = timeout
        pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
    }

    /// The metrics text, on `eventLoop`; it never fails for an unreachable daemon.
    func scrape(on eventLoop: any EventLoop) -> EventLoopFuture<String> {
        pool.runIfActive(eventLoop: eventLoop) { [self] in DaemonMetrics.render(read()) }
    }

    func read() -> DaemonReading {
        do {
            let client = try ManagerClient(socketPath: socketPath, timeout: timeout)
            let devices = try client.listDevices()
            let statistics = try client.statistics()
            report(up: true, nil)
            return .reached(devices: devices, statistics: statistics, realtimeSeconds: Int64(time(nil)))
        } catch {
            report(up: false, error)
            return .unreachable
        }
    }

    private func report(up: Bool, _ error: ControlClientError?) {
        let changed = wasUp.withLockedValue { last in
            defer { last = up }
            return last != up
        }
        guard changed else { return }
        if up {
            printError("vfio-powerd-exporter: reading vfio-powerd on \(socketPath)")
        } else {
            printError("vfio-powerd-exporter: vfio-powerd cannot be read, vfio_powerd_up is 0 until it can: \(error.map { "\($0)" } ?? "unknown error")")
        }
    }
}

/// One line on stderr: the journal's, under systemd.
func printError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
