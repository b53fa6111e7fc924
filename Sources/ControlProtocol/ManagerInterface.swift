import Varlink

/// io.vfiopowerd.Manager: where it listens, its description, and the names of its errors,
/// for the daemon that serves it and the clients that call it.
public enum ManagerInterface {
    public static let name = "io.vfiopowerd.Manager"
    public static let defaultSocketPath = "/run/vfio-powerd/io.vfiopowerd.Manager"

    /// Sources/ControlProtocol/io.vfiopowerd.Manager.varlink, compiled in: served by
    /// GetInterfaceDescription, and the one place each method's parameters are written.
    public static let description = String(decoding: PackageResources.io_vfiopowerd_Manager_varlink, as: UTF8.self)

    /// The description, read. It is part of the program: a mistake in it fails every test.
    public static let definition: VarlinkInterface = {
        do { return try VarlinkInterface(parsing: description) } catch { preconditionFailure("io.vfiopowerd.Manager.varlink: \(error)") }
    }()

    /// The interface's own errors, by their full names.
    public enum Error: String, CaseIterable, Sendable {
        case noSuchDevice = "io.vfiopowerd.Manager.NoSuchDevice"
        case permissionDenied = "io.vfiopowerd.Manager.PermissionDenied"
        case invalidParameter = "io.vfiopowerd.Manager.InvalidParameter"
        case configRejected = "io.vfiopowerd.Manager.ConfigRejected"
        case handoffRefused = "io.vfiopowerd.Manager.HandoffRefused"
        /// Monitor streams end with it when the daemon stops (not declared: a varlink
        /// client treats any error as the stream's end).
        case stopping = "io.vfiopowerd.Manager.Stopping"
    }
}
