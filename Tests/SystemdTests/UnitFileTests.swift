import Foundation
import XCTest

/// systemd/vfio-powerd.service against its targets: `systemd-analyze verify` clean, and an
/// exposure of at most 2.0 from `systemd-analyze security --offline=true`. A change that
/// weakens the sandbox fails here. (That the sandboxed daemon still works is proven in the
/// lab, under real systemd: lab/tests/daemon_under_systemd.py.)
final class UnitFileTests: XCTestCase {
    private var unit: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("systemd/vfio-powerd.service")
    }

    private func systemdAnalyze(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let path = "/usr/bin/systemd-analyze"
        guard FileManager.default.isExecutableFile(atPath: path) else { throw XCTSkip("no systemd-analyze on this host") }
        return try runProcess(path, arguments)
    }

    func testExposureIsAtMostTwo() throws {
        let (status, output) = try systemdAnalyze(["security", "--offline=true", "--no-pager", unit.path])
        XCTAssertEqual(status, 0, output)
        let line = try XCTUnwrap(output.split(separator: "\n").first { $0.contains("Overall exposure level") }, output)
        let number = try XCTUnwrap(line.split(separator: " ").compactMap { Double($0) }.first, String(line))
        XCTAssertLessThanOrEqual(number, 2.0, String(line))
    }

    func testVerifyIsClean() throws {
        // verify wants ExecStart= to exist; the installed binary is not there in a build tree.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("unit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let text = try String(contentsOf: unit, encoding: .utf8)
            .replacingOccurrences(of: "ExecStart=/usr/sbin/vfio-powerd", with: "ExecStart=/bin/true")
        XCTAssertTrue(text.contains("ExecStart=/bin/true"), "the unit's ExecStart moved: update this test")
        let copy = directory.appendingPathComponent("vfio-powerd.service")
        try text.write(to: copy, atomically: true, encoding: .utf8)
        // The service requires its socket unit: verify both, side by side.
        let socket = directory.appendingPathComponent("vfio-powerd.socket")
        try FileManager.default.copyItem(at: unit.deletingLastPathComponent().appendingPathComponent("vfio-powerd.socket"), to: socket)
        let (status, output) = try systemdAnalyze(["verify", "--man=no", copy.path, socket.path])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output.trimmingCharacters(in: .whitespacesAndNewlines), "", "systemd-analyze verify complains")
    }
}
