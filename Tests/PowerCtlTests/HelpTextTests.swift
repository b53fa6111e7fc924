import Foundation
import XCTest

/// vfio-powerctl's help, against stored copies (swift-argument-parser's own practice): a
/// change to what operators read shows up in review as a change to these files.
/// Regenerate one with `COLUMNS=80 .build/debug/vfio-powerctl [status|wake] --help`.
final class HelpTextTests: XCTestCase {
    private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    private var powerctl: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vfio-powerctl")
    }

    private func help(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = powerctl
        process.arguments = arguments + ["--help"]
        process.environment = ["COLUMNS": "80"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    func testHelpTexts() throws {
        for (arguments, file) in [([], "help-main.txt"), (["status"], "help-status.txt"), (["wake"], "help-wake.txt")] {
            let expected = try String(contentsOf: fixtures.appendingPathComponent(file), encoding: .utf8)
            XCTAssertEqual(try help(arguments), expected, file)
        }
    }
}
