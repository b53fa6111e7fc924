import Foundation
@testable import PowerConfig
import PowerPolicy
import Testing

/// vfio-powerd.conf(5) against the policy-key table (PolicyKey.definition): its key table is
/// the table, rendered; every key has its paragraph in POLICY KEYS and no paragraph names a
/// key the table lacks. Set VFIO_POWERD_WRITE_GOLDEN=1 to write the rendered table into the
/// page instead of comparing.
@Suite struct PolicyKeyTableTests {
    static let manPage = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("docs/man/vfio-powerd.conf.5.scd")
    static let begin = "; BEGIN policy key table: generated from PolicyKey.definition (PolicyKeyTableTests)"
    static let end = "; END policy key table"

    /// The table as scdoc writes one: key, values, default, meaning.
    static func rendered() -> String {
        var lines = ["[[ *Key*", ":[ *Values*", ":[ *Default*", ":< *Meaning*"]
        for key in PolicyKey.allCases {
            let definition = key.definition
            lines += ["|  *\(key.rawValue)*", ":  \(definition.valuesText)", ":  \(key.defaultText)", ":  \(definition.summary)"]
        }
        return lines.joined(separator: "\n")
    }

    @Test func theManPageKeyTableIsTheTable() throws {
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        let start = try #require(page.range(of: Self.begin + "\n"), "the page has no `\(Self.begin)` line")
        let stop = try #require(page.range(of: Self.end, range: start.upperBound..<page.endIndex),
                                "the page has no `\(Self.end)` line after the table")
        let written = String(page[start.upperBound..<stop.lowerBound])
        if ProcessInfo.processInfo.environment["VFIO_POWERD_WRITE_GOLDEN"] != nil {
            try page.replacingCharacters(in: start.upperBound..<stop.lowerBound, with: Self.rendered() + "\n\n")
                .write(to: Self.manPage, atomically: true, encoding: .utf8)
            return
        }
        #expect(written == Self.rendered() + "\n\n", "regenerate with VFIO_POWERD_WRITE_GOLDEN=1 swift test --filter PolicyKeyTableTests")
    }

    /// A paragraph starts `*key* = ...`, or names several keys on one line:
    /// `*flap_max_wakes* = _integer_, *flap_window* = _duration_`.
    @Test func everyKeyHasItsParagraphAndNoParagraphIsAStranger() throws {
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        let section = try #require(page.components(separatedBy: "\n# POLICY KEYS").dropFirst().first?
            .components(separatedBy: "\n# ").first)
        var described: [String] = []
        for line in section.split(separator: "\n") where line.hasPrefix("*") {
            for match in line.matches(of: /\*([a-z0-9_]+)\* =/) { described.append(String(match.1)) }
        }
        #expect(described == PolicyKey.allCases.map(\.rawValue))
    }

    @Test func defaultsThatFollowTheSourceSaySo() {
        #expect(PolicyKey.trigger.defaultText == #""guest-d3" (vmm), "immediate" (own)"#)
        #expect(PolicyKey.source.defaultText == #""vmm""#)
        #expect(PolicyKey.flapMaxWakes.defaultText == "10")
        #expect(PolicyKey.rearmDelay.defaultText == #""30s""#)
    }

    @Test func aReloadSaysWhichKeysChanged() {
        var new = DevicePolicy()
        new.rearmDelay = .seconds(60)
        new.flapGuard.maxWakes = 3
        #expect(PolicyKey.changes(from: DevicePolicy(), to: new).map(\.description)
                == ["rearm_delay 30s → 1m", "flap_max_wakes 10 → 3"])
        #expect(PolicyKey.changes(from: new, to: new).isEmpty)
    }

    /// Each key's value lands in its own field of the policy, and only there: no two rows of
    /// the table share a field.
    @Test(arguments: PolicyKey.allCases)
    func aValueReachesItsFieldAndNoOther(_ key: PolicyKey) {
        let definition = key.definition
        let before = DevicePolicy()
        let value: PolicyValue = switch definition.type {
        case .choice(let names): .choice(names.first { $0 != definition.text(before) }!)
        case .duration(let range): .duration(range.upperBound)
        case .integer(let range): .integer(range.upperBound)
        }
        var after = before
        definition.assign(&after, value)
        #expect(PolicyKey.changes(from: before, to: after).map(\.key) == [key])
    }
}
