import PowerPolicy
import PropertyBased
import Testing

@Suite struct DurationTextTests {
    @Test(arguments: [
        ("30s", Duration.seconds(30)), ("2m", .seconds(120)), ("1h30m", .seconds(5400)),
        ("500ms", .milliseconds(500)), ("1m30s", .seconds(90)), ("1d", .seconds(86_400)),
        ("1s500ms", .milliseconds(1500)), ("0s", .zero), ("90s", .seconds(90)),
    ])
    func parsesExamples(_ text: String, _ expected: Duration) {
        #expect(DurationText.parse(text) == .success(expected))
    }

    @Test(arguments: ["", "30", "s", "1.5h", "30 s", "-5s", "1m1h", "1s1s", "5sec", "1H", "+1s", "1h 30m",
                      "1ms1s", "0x10s", "３s", "9999999999999x"])
    func rejectsJunk(_ text: String) {
        #expect(DurationText.parse(text) == .failure(DurationSyntaxError(text: text)))
    }

    @Test func formatsTheShortestSpelling() {
        #expect(DurationText.format(.seconds(90)) == "1m30s")
        #expect(DurationText.format(.seconds(5400)) == "1h30m")
        #expect(DurationText.format(.milliseconds(500)) == "500ms")
        #expect(DurationText.format(.zero) == "0s")
        #expect(DurationText.format(.seconds(86_400 + 1)) == "1d1s")
    }

    @Test(arguments: ["999999999999h", "9999999999999d", "367d", "366d1ms", "99999999999999999999999s"])
    func saysAWellFormedDurationPastTheMaximumIsOutOfRange(_ text: String) {
        #expect(DurationText.parse(text) == .failure(DurationSyntaxError(text: text, outOfRange: true)))
        #expect(DurationSyntaxError(text: text, outOfRange: true).description == "\"\(text)\" is out of range: a duration is at most 366d")
    }

    @Test func errorMessageGivesExamples() {
        #expect(DurationSyntaxError(text: "1.5h").description ==
            "\"1.5h\" is not a duration: write it like \"30s\", \"2m\", \"1h30m\" or \"500ms\" (units d, h, m, s, ms; largest first; whole numbers)")
    }

    @Test func roundTripsEveryWholeMillisecondDuration() async {
        await propertyCheck(count: 500, input: Gen.int(in: 0...(366 * 86_400_000))) { milliseconds in
            let duration = Duration.milliseconds(milliseconds)
            #expect(DurationText.parse(DurationText.format(duration)) == .success(duration))
        }
    }

    @Test func formatIsCanonicalForParsedText() async {
        // Any valid spelling, e.g. "90s", parses to a duration whose formatted text parses back to it.
        await propertyCheck(count: 300, input: Gen.int(in: 0...500), Gen.int(in: 0...59), Gen.int(in: 0...999)) { m, s, ms in
            let text = "\(m)m\(s)s\(ms)ms"
            guard case .success(let duration) = DurationText.parse(text) else {
                Issue.record("\(text) did not parse")
                return
            }
            #expect(duration == .milliseconds(m * 60_000 + s * 1000 + ms))
            #expect(DurationText.parse(DurationText.format(duration)) == .success(duration))
        }
    }

    @Test func rejectsRandomJunkWithoutADigitUnitShape() async {
        // Strings of letters only, or with characters outside the syntax, never parse.
        await propertyCheck(count: 300, input: Gen.letterOrNumber.string(of: 1...8)) { text in
            let valid = isValidShape(text)
            let parsed = (try? DurationText.parse(text).get()) != nil
            if !valid { #expect(!parsed, "\(text) parsed") }
        }
    }
}

/// An independent, simpler statement of the grammar: (digits unit)+ with units in d,h,m,s,ms order.
private func isValidShape(_ text: String) -> Bool {
    let units = ["d", "h", "m", "s", "ms"]
    var rest = Substring(text)
    var lastRank = -1
    if rest.isEmpty { return false }
    while !rest.isEmpty {
        let digits = rest.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, digits.count <= 12 else { return false }
        rest = rest.dropFirst(digits.count)
        let unit = rest.prefix { $0.isASCII && $0.isLowercase }
        guard let rank = units.firstIndex(of: String(unit)), rank > lastRank else { return false }
        lastRank = rank
        rest = rest.dropFirst(unit.count)
    }
    return true
}
