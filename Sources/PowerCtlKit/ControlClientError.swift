/// Why a vfio-powerctl call did not work, in words that say what to do, and the exit
/// status scripts can rely on (sysexits.h).
public enum ControlClientError: Error, Equatable, CustomStringConvertible {
    /// No socket, or nobody listening: the daemon is not running.
    case daemonNotRunning(socket: String)
    /// Connected, then the daemon closed the connection before answering.
    case disconnected(socket: String)
    /// The socket exists but this user may not connect (its mode is 0660).
    case cannotConnect(socket: String, group: String?)
    /// The daemon refused a change: root or admin_group only.
    case permissionDenied(method: String)
    case noSuchDevice(String)
    case invalidParameter(parameter: String, reason: String)
    /// Reload found errors; nothing changed.
    case configRejected([String])
    /// Anything else the daemon or the socket said.
    case failed(String)

    public var description: String {
        switch self {
        case .daemonNotRunning(let socket):
            return "vfio-powerd is not running (nothing listens on \(socket)). Start it with `systemctl start vfio-powerd`; `journalctl -u vfio-powerd` says why it stopped"
        case .disconnected(let socket):
            return "vfio-powerd closed the connection on \(socket) before answering: it is stopping or restarting, or it refused this client (at most 32 connections per user, 64 in all)"
        case .cannotConnect(let socket, let group):
            let who = group.map { "root and members of group \"\($0)\" (the daemon's socket_group)" } ?? "root"
            return "permission denied connecting to \(socket): only \(who) may. \(group.map { "Join it with `usermod -aG \($0) $USER` and log in again" } ?? "Set socket_group in /etc/vfio-powerd/vfio-powerd.conf to let a group read it")"
        case .permissionDenied(let method):
            return "the daemon refused \(method): only root and members of its admin_group may change devices (see admin_group in vfio-powerd.conf(5))"
        case .noSuchDevice(let address):
            return "vfio-powerd does not manage \(address). `vfio-powerctl status` lists the devices it manages"
        case .invalidParameter(let parameter, let reason):
            return "\(parameter): \(reason)"
        case .configRejected(let problems):
            return "the new configuration was rejected; the running one stays in force:\n" + problems.map { "  \($0)" }.joined(separator: "\n")
        case .failed(let text):
            return text
        }
    }

    /// 69 EX_UNAVAILABLE, 77 EX_NOPERM, 78 EX_CONFIG, 1 for a device the daemon does not
    /// have, 64 EX_USAGE for a bad parameter, 70 EX_SOFTWARE otherwise.
    public var exitStatus: Int32 {
        switch self {
        case .daemonNotRunning, .disconnected: 69
        case .cannotConnect, .permissionDenied: 77
        case .configRejected: 78
        case .noSuchDevice: 1
        case .invalidParameter: 64
        case .failed: 70
        }
    }
}
