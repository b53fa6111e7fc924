import Foundation
@testable import PowerConfig
import PowerPolicy
import Testing

/// vfio-powerd.conf(5) against the key tables (PolicyKey.definition, DaemonKey.definition):
/// its two key tables are the tables, rendered; every key has its paragraph in its section
/// and no paragraph names a key the table lacks. Set VFIO_POWERD_WRITE_GOLDEN=1 to write the
/// rendered tables into the page instead of comparing.
// Serialized: with VFIO_POWERD_WRITE_GOLDEN each table test rewrites the same page.
@Suite(.serialized) struct KeyTableTests {
    static let manPage = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("docs/man/vfio-powerd.conf.5.scd")

    /// A table as scdoc writes one: key, values, default, meaning; then the blank line that
    /// ends it.
    static func rendered(_ rows: [(key: String, values: String, default: String, summary: String)]) -> String {
        var lines = ["[[ *Key*", ":[ *Values*", ":[ *Default*", ":< *Meaning*"]
        // A '*' in a cell is a glob's, not scdoc's bold.
        func cell(_ text: String) -> String { text.replacingOccurrences(of: "*", with: "\\*") }
        for row in rows {
            lines += ["|  *\(row.key)*", ":  \(cell(row.values))", ":  \(cell(row.default))", ":  \(cell(row.summary))"]
        }
        return lines.joined(separator: "\n") + "\n\n"
    }

    static let tables: [(name: String, section: String, keys: [String], rendered: String)] = [
        ("policy key table", "# POLICY KEYS", PolicyKey.allCases.map(\.rawValue),
         rendered(PolicyKey.allCases.map { ($0.rawValue, $0.definition.valuesText, $0.defaultText, $0.definition.summary) })),
        ("daemon key table", "# [daemon]", DaemonKey.allCases.map(\.rawValue),
         rendered(DaemonKey.allCases.map { ($0.rawValue, $0.definition.valuesText, $0.definition.defaultText, $0.definition.summary) })),
    ]

    @Test(arguments: tables.indices)
    func theManPageKeyTableIsTheTable(_ index: Int) throws {
        let table = Self.tables[index]
        let begin = "; BEGIN \(table.name): generated (KeyTableTests)\n", end = "; END \(table.name)"
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        let start = try #require(page.range(of: begin), "the page has no `\(begin)` line")
        let stop = try #require(page.range(of: end, range: start.upperBound..<page.endIndex),
                                "the page has no `\(end)` line after the table")
        if ProcessInfo.processInfo.environment["VFIO_POWERD_WRITE_GOLDEN"] != nil {
            try page.replacingCharacters(in: start.upperBound..<stop.lowerBound, with: table.rendered)
                .write(to: Self.manPage, atomically: true, encoding: .utf8)
            return
        }
        #expect(String(page[start.upperBound..<stop.lowerBound]) == table.rendered,
                "regenerate with VFIO_POWERD_WRITE_GOLDEN=1 swift test --filter KeyTableTests")
    }

    /// A paragraph starts `*key* = ...`, or names several keys on one line:
    /// `*flap_max_wakes* = _integer_, *flap_window* = _duration_`.
    @Test(arguments: tables.indices)
    func everyKeyHasItsParagraphAndNoParagraphIsAStranger(_ index: Int) throws {
        let table = Self.tables[index]
        let page = try String(contentsOf: Self.manPage, encoding: .utf8)
        let section = try #require(page.components(separatedBy: "\n" + table.section).dropFirst().first?
            .components(separatedBy: "\n# ").first)
        var described: [String] = []
        for line in section.split(separator: "\n") where line.hasPrefix("*") {
            for match in line.matches(of: /\*([a-z0-9_]+)\* =/) { described.append(String(match.1)) }
        }
        #expect(described == table.keys)
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
