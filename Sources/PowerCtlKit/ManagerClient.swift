import Glibc
import ControlProtocol
import Varlink

/// io.vfiopowerd.Manager as vfio-powerctl calls it: one connection, typed records, and every
/// failure turned into a `ControlClientError` that says what to do.
public final class ManagerClient {
    static let interface = ManagerInterface.name
    /// A call that takes longer than this means the daemon is stuck (the watchdog will act).
    public static let defaultTimeout: Duration = .seconds(10)

    private let client: VarlinkClient
    public let socketPath: String
    /// How long one call may take (Monitor's stream excepted). The exporter asks for less
    /// than a scrape's timeout.
    public let timeout: Duration

    public init(socketPath: String = ManagerInterface.defaultSocketPath,
                timeout: Duration = ManagerClient.defaultTimeout) throws(ControlClientError) {
        self.socketPath = socketPath
        self.timeout = timeout
        do {
            client = try VarlinkClient(socketPath: socketPath)
        } catch let error as VarlinkClientError {
            switch error.errno {
            case ENOENT, ECONNREFUSED:
                throw .daemonNotRunning(socket: socketPath)
            case EACCES, EPERM:
                throw .cannotConnect(socket: socketPath, group: Self.groupOwning(socketPath))
            default:
                throw .failed("cannot connect to \(socketPath): \(error)")
            }
        } catch {
            throw .failed("cannot connect to \(socketPath): \(error)")
        }
    }

    public func listDevices() throws(ControlClientError) -> [DeviceRecord] {
        try decode(call("ListDevices"), "devices")
    }

    public func device(_ address: String) throws(ControlClientError) -> DeviceRecord {
        try decode(call("GetDevice", ["address": .string(address)]), "device")
    }

    public func arm(_ address: String) throws(ControlClientError) -> DeviceRecord {
        try decode(call("Arm", ["address": .string(address)]), "device")
    }

    public func wake(_ address: String, seconds: Int64?) throws(ControlClientError) -> DeviceRecord {
        var parameters: [String: JSONValue] = ["address": .string(address)]
        if let seconds { parameters["seconds"] = .integer(seconds) }
        return try decode(call("Wake", .object(parameters)), "device")
    }

    public func adopt(_ address: String, pid: Int32?) throws(ControlClientError) -> DeviceRecord {
        var parameters: [String: JSONValue] = ["address": .string(address)]
        if let pid { parameters["pid"] = .integer(Int64(pid)) }
        return try decode(call("Adopt", .object(parameters)), "device")
    }

    public func reload() throws(ControlClientError) {
        _ = try call("Reload")
    }

    public func statistics() throws(ControlClientError) -> StatisticsRecord {
        try decode(call("GetStatistics"), "statistics")
    }

    /// Calls Monitor and hands each device record to `body` as it arrives; returns when the
    /// daemon ends the stream.
    public func monitor(_ body: (DeviceRecord) -> Void) throws(ControlClientError) {
        do {
            try client.call("\(Self.interface).Monitor", [:], more: true) { parameters in
                body(try Self.decode(parameters, "device"))
            }
        } catch {
            throw translate(error)
        }
    }

    // MARK: Plumbing

    private func call(_ method: String, _ parameters: JSONValue = [:]) throws(ControlClientError) -> JSONValue {
        do {
            return try client.call("\(Self.interface).\(method)", parameters, timeout: timeout)
        } catch {
            throw translate(error)
        }
    }

    private func decode<T: Decodable>(_ parameters: JSONValue, _ key: String) throws(ControlClientError) -> T {
        do {
            return try Self.decode(parameters, key)
        } catch {
            throw .failed("the daemon's reply did not have the expected form: \(error)")
        }
    }

    private static func decode<T: Decodable>(_ parameters: JSONValue, _ key: String) throws -> T {
        guard let value = parameters.object?[key] else {
            throw ControlClientError.failed("the daemon's reply has no \"\(key)\"")
        }
        return try value.decode(T.self)
    }

    private func translate(_ error: any Error) -> ControlClientError {
        if let error = error as? ControlClientError { return error }
        if let error = error as? VarlinkError {
            let parameters = error.parameters.object ?? [:]
            switch ManagerInterface.Error(rawValue: error.name) {
            case .noSuchDevice:
                return .noSuchDevice(parameters["address"]?.string ?? "?")
            case .permissionDenied:
                return .permissionDenied(method: parameters["method"]?.string ?? "this call")
            case .invalidParameter:
                return .invalidParameter(parameter: parameters["parameter"]?.string ?? "?", reason: parameters["reason"]?.string ?? "invalid")
            case .configRejected:
                return .configRejected(parameters["problems"]?.array?.compactMap(\.string) ?? [])
            case .stopping:
                return .disconnected(socket: socketPath)
            case .handoffRefused, nil:
                return .failed("the daemon answered \(error.name) \(error.parameters)")
            }
        }
        if let error = error as? VarlinkClientError {
            if error.code == .disconnected { return .disconnected(socket: socketPath) }
            return .failed("\(socketPath): \(error)")
        }
        return .failed("\(error)")
    }

    /// The group that owns the socket, to name it in "permission denied".
    static func groupOwning(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0, info.st_gid != 0, let entry = getgrgid(info.st_gid), let name = entry.pointee.gr_name else {
            return nil
        }
        return String(cString: name)
    }
}
