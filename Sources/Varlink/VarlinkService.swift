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

    /// The names of the methods an interface description declares: every `method Name(`.
    /// Comments are skipped; the rest of the IDL is not checked here.
    static func methodNames(inDescription text: String) -> Set<String> {
        var names = Set<String>()
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: true) {
            var line = rawLine[...]
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "(" })
            guard words.count >= 2, words[0] == "method" else { continue }
            names.insert(String(words[1]))
        }
        return names
    }

    /// The interface name a description declares on its `interface` line.
    static func interfaceName(inDescription text: String) -> String? {
        for rawLine in text.split(separator: "\n") {
            var line = rawLine[...]
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.count >= 2, words[0] == "interface" { return String(words[1]) }
        }
        return nil
    }
}
