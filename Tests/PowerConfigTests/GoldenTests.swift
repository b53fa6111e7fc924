import Foundation
import PowerConfig
import Testing

/// Each Fixtures/NAME.conf is loaded as the only main file (main-*) or the only devices.d file
/// (devices-*); every problem, exactly as printed (root prefix removed), must equal NAME.expected.
/// Set VFIO_POWERD_WRITE_GOLDEN=1 to print the actual text instead of comparing.
@Suite struct GoldenConfigErrorTests {
    static let fixtureNames = (try? Fixtures.names(withSuffix: ".conf")) ?? []

    @Test(arguments: fixtureNames)
    func problemsMatchTheGoldenFile(_ name: String) throws {
        let root = try TempConfigRoot()
        let relative = name.hasPrefix("main-") ? "etc/vfio-powerd/vfio-powerd.conf" : "etc/vfio-powerd/devices.d/\(name)"
        try root.write(relative, try Fixtures.text(name))
        let result = ConfigLoader.load(root.options())
        let actual = root.render(result.problems)
        if ProcessInfo.processInfo.environment["VFIO_POWERD_WRITE_GOLDEN"] != nil {
            print("=== \(name)\n\(actual)\n===")
            return
        }
        let expected = try Fixtures.text(name.replacingOccurrences(of: ".conf", with: ".expected"))
        #expect(actual == expected.trimmingCharacters(in: .newlines))
        #expect(result.hasErrors)
    }

    @Test func everyFixtureHasAGoldenFile() throws {
        #expect(Self.fixtureNames.count >= 7)
        for name in Self.fixtureNames {
            #expect(throws: Never.self) { try Fixtures.text(name.replacingOccurrences(of: ".conf", with: ".expected")) }
        }
    }
}
