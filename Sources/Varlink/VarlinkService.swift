/// The names of the errors every varlink service may answer with (interface org.varlink.service,
/// plus the two systemd added), and of the interface itself.
public enum VarlinkErrorName {
    public static let interfaceNotFound = "org.varlink.service.InterfaceNotFound"
    public static let methodNotFound = "org.varlink.service.MethodNotFound"
    public static let methodNotImplemented = "org.varlink.service.MethodNotImplemented"
    public static let invalidParameter = "org.varlink.service.InvalidParameter"
    public static let permissionDenied = "org.varlink.service.PermissionDenied"
    /// A method that only streams was called without `more` (systemd's name).
    public static let expectedMore = "org.varlink.service.ExpectedMore"
    /// systemd's carrier for an errno; the server uses it with EMSGSIZE for an oversized message.
    public static let system = "io.systemd.System"
}

/// org.varlink.service, which the server implements itself.
enum VarlinkService {
    static let name = "org.varlink.service"

    static let description = """
        # The interface every varlink service provides: what the service is, and which
        # interfaces it implements.
        interface org.varlink.service

        # The service's vendor, product, version and URL, and the interfaces it provides.
        method GetInfo() -> (
          vendor: string,
          product: string,
          version: string,
          url: string,
          interfaces: []string
        )

        # The description of one interface the service provides, in the varlink IDL.
        method GetInterfaceDescription(interface: string) -> (description: string)

        # No interface of that name is provided.
        error InterfaceNotFound (interface: string)

        # The interface has no method of that name.
        error MethodNotFound (method: string)

        # The interface declares the method, but the service does not implement it.
        error MethodNotImplemented (method: string)

        # A parameter is missing or has a wrong value.
        error InvalidParameter (parameter: string)

        # The caller may not call this method.
        error PermissionDenied ()

        # The method streams its replies and must be called with "more".
        error ExpectedMore ()

        """
}
