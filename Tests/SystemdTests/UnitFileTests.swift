import Foundation
import SystemdTesting
import XCTest

/// systemd/vfio-powerd.service and vfio-powerd-exporter.service against their targets:
/// `systemd-analyze verify` clean, and an exposure of at most 2.0 from `systemd-analyze
/// security --offline=true`. A change that weakens a sandbox fails here. (That the sandboxed
/// services still work is proven in the lab, under real systemd:
/// lab/tests/daemon_under_systemd.py.)
final class UnitFileTests: XCTestCase {
    private static let services = ["vfio-powerd", "vfio-powerd-exporter"]

    private func unit(_ name: String) -> URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("systemd/\(name)")
    }

    private func systemdAnalyze(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let path = "/usr/bin/systemd-analyze"
        guard FileManager.default.isExecutableFile(atPath: path) else { throw XCTSkip("no systemd-analyze on this host") }
        return try runProcess(path, arguments)
    }

    func testExposureIsAtMostTwo() throws {
        for service in Self.services {
            let (status, output) = try systemdAnalyze(["security", "--offline=true", "--no-pager", unit("\(service).service").path])
            XCTAssertEqual(status, 0, output)
            let line = try XCTUnwrap(output.split(separator: "\n").first { $0.contains("Overall exposure level") }, output)
            let number = try XCTUnwrap(line.split(separator: " ").compactMap { Double($0) }.first, String(line))
            XCTAssertLessThanOrEqual(number, 2.0, String(line))
        }
    }

    func testVerifyIsClean() throws {
        for service in Self.services {
            // verify wants ExecStart= to exist; the installed binary is not there in a build tree.
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("unit-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let text = try String(contentsOf: unit("\(service).service"), encoding: .utf8)
                .replacingOccurrences(of: "ExecStart=/usr/sbin/\(service)\n", with: "ExecStart=/bin/true\n")
            XCTAssertTrue(text.contains("ExecStart=/bin/true"), "\(service)'s ExecStart moved: update this test")
            let copy = directory.appendingPathComponent("\(service).service")
            try text.write(to: copy, atomically: true, encoding: .utf8)
            // The service requires its socket unit: verify both, side by side.
            let socket = directory.appendingPathComponent("\(service).socket")
            try FileManager.default.copyItem(at: unit("\(service).socket"), to: socket)
            let (status, output) = try systemdAnalyze(["verify", "--man=no", copy.path, socket.path])
            XCTAssertEqual(status, 0, output)
            XCTAssertEqual(output.trimmingCharacters(in: .whitespacesAndNewlines), "", "systemd-analyze verify complains about \(service)")
        }
    }
}
