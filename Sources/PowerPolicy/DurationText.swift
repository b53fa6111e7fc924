/// The duration syntax of the configuration: one or more `<number><unit>` parts, largest unit
/// first, each unit at most once: "30s", "2m", "1h30m", "500ms", "1m30s", "1d".
///
/// Units: `d` (24 h), `h`, `m`, `s`, `ms`. No spaces, no signs, no fractions ("1.5h" is
/// "1h30m"), so every duration has exactly one shortest spelling, which `format` produces:
/// `parse(format(d)) == d` for every whole number of milliseconds.
public enum DurationText {
    /// The longest duration the syntax accepts (a year); keeps arithmetic far from overflow.
    public static let maximum: Duration = .seconds(366 * 86_400)

    private static let units: [(name: String, milliseconds: Int64)] = [
        ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1),
    ]

    public static func parse(_ text: String) -> Result<Duration, DurationSyntaxError> {
        let fail = Result<Duration, DurationSyntaxError>.failure(DurationSyntaxError(text: text))
        let chars = Array(text.unicodeScalars)
        guard !chars.isEmpty else { return fail }
        var index = 0
        var total: Int64 = 0
        var lastUnitRank = -1
        // A well-formed duration past `maximum` is out of range, not junk: said apart.
        var tooLarge = false
        while index < chars.count {
            var digits: Int64 = 0
            var digitCount = 0
            while index < chars.count, let digit = asciiDigit(chars[index]) {
                digitCount += 1
                if digitCount > 12 { tooLarge = true } else { digits = digits * 10 + Int64(digit) }
                index += 1
            }
            guard digitCount > 0 else { return fail }
            var unitText = ""
            while index < chars.count, (97...122).contains(chars[index].value) {
                unitText.unicodeScalars.append(chars[index])
                index += 1
            }
            guard let rank = units.firstIndex(where: { $0.name == unitText }), rank > lastUnitRank else { return fail }
            lastUnitRank = rank
            let (product, overflow) = digits.multipliedReportingOverflow(by: units[rank].milliseconds)
            let (sum, overflow2) = total.addingReportingOverflow(product)
            if overflow || overflow2 { tooLarge = true } else { total = sum }
        }
        let duration = Duration.milliseconds(total)
        guard !tooLarge, duration <= maximum else {
            return .failure(DurationSyntaxError(text: text, outOfRange: true))
        }
        return .success(duration)
    }

    /// The shortest spelling: "1h30m", "500ms", "0s". Sub-millisecond parts are dropped unless
    /// `precise` (used for instants in debug output), which adds "us"/"ns" parts.
    public static func format(_ duration: Duration, precise: Bool = false) -> String {
        if duration < .zero { return "-" + format(.zero - duration, precise: precise) }
        let nanoseconds = duration.nanosecondsClamped
        var milliseconds = Int64(clamping: nanoseconds / 1_000_000)
        var text = ""
        for unit in units where milliseconds >= unit.milliseconds {
            text += "\(milliseconds / unit.milliseconds)\(unit.name)"
            milliseconds %= unit.milliseconds
        }
        if precise {
            let rest = nanoseconds % 1_000_000
            if rest >= 1000 { text += "\(rest / 1000)us" }
            if rest % 1000 != 0 { text += "\(rest % 1000)ns" }
        }
        return text.isEmpty ? "0s" : text
    }

    private static func asciiDigit(_ scalar: Unicode.Scalar) -> Int? {
        (48...57).contains(scalar.value) ? Int(scalar.value - 48) : nil
    }
}

/// Text that is not a duration in the configuration's syntax.
public struct DurationSyntaxError: Error, Equatable, Sendable, CustomStringConvertible {
    public let text: String
    /// Well formed, but longer than `DurationText.maximum`.
    public let outOfRange: Bool
    public init(text: String, outOfRange: Bool = false) {
        self.text = text
        self.outOfRange = outOfRange
    }
    public var description: String {
        if outOfRange {
            return "\"\(text)\" is out of range: a duration is at most \(DurationText.format(DurationText.maximum))"
        }
        return "\"\(text)\" is not a duration: write it like \"30s\", \"2m\", \"1h30m\" or \"500ms\" (units d, h, m, s, ms; largest first; whole numbers)"
    }
}

extension Duration {
    /// The configuration's spelling of this duration ("1h30m").
    public var configText: String { DurationText.format(self) }
}
