import Foundation
import Varlink
import XCTest

/// The independent client: PyPI's `varlink` package (`pip install varlink`) against our server.
/// It parses our interface descriptions with its own IDL scanner and frames messages itself,
/// so agreement here means the wire format is real varlink, not just our client's dialect.
final class PythonInteropTests: XCTestCase {
    private func python(_ script: String, socketPath: String) throws -> (status: Int32, output: String, errors: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, socketPath]
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errors, as: UTF8.self))
    }

    private func requirePythonVarlink() throws {
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["python3", "-c", "import varlink"]
        check.standardOutput = FileHandle.nullDevice
        check.standardError = FileHandle.nullDevice
        do { try check.run() } catch { throw XCTSkip("python3 is not installed") }
        check.waitUntilExit()
        if check.terminationStatus != 0 {
            throw XCTSkip("python3 lacks the varlink module (make deps installs it in .build/venv; make unit-tests puts it on PATH)")
        }
    }

    func testPythonVarlinkClientTalksToOurServer() throws {
        try requirePythonVarlink()
        let harness = try ServerHarness()
        let script = """
            import json, sys, varlink
            address = "unix:" + sys.argv[1]
            out = {}
            with varlink.Client(address=address) as client:
                out["interfaces"] = client.get_interfaces()
                with client.open("org.varlink.service") as service:
                    info = service.GetInfo()
                    out["info"] = {k: info[k] for k in ("vendor", "product", "version", "url")}
                    description = service.GetInterfaceDescription("org.varlink.service")["description"]
                    out["serviceInterface"] = varlink.Interface(description).name
                with client.open("org.example.test") as test:
                    out["echo"] = test.Echo("from python")
                    out["stream"] = [reply["index"] for reply in test.Stream(3, _more=True)]
                    out["whoami"] = test.WhoAmI()
                    try:
                        test.Echo()
                        out["missing"] = "no error"
                    except varlink.VarlinkError as e:
                        out["missing"] = [e.error(), e.parameters()]
                    test.Ping(_oneway=True)
                    out["after_oneway"] = test.Echo("still in step")
            print(json.dumps(out))
            """
        let result = try python(script, socketPath: harness.socketPath)
        XCTAssertEqual(result.status, 0, result.errors)
        let output = try JSONValue(parsing: result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        XCTAssertEqual(output["interfaces"], ["org.example.test", "org.varlink.service"])
        XCTAssertEqual(output["info"], ["vendor": "vfio-powerd project", "product": "varlink tests",
                                        "version": "1.0", "url": "https://example.org/"])
        XCTAssertEqual(output["serviceInterface"], "org.varlink.service")
        XCTAssertEqual(output["echo"], ["value": "from python"])
        XCTAssertEqual(output["stream"], [0, 1, 2, 3])
        XCTAssertEqual(output["whoami"]?["uid"]?.int, Int(getuid()))
        XCTAssertEqual(output["missing"], [.string(VarlinkErrorName.invalidParameter), ["parameter": "value"]])
        XCTAssertEqual(output["after_oneway"], ["value": "still in step"])
        XCTAssertEqual(harness.onQueue { harness.recorder.pings }, 1)
    }
}
