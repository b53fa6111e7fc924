/// A PCI device address as the kernel names it in sysfs and in VFIO_GROUP_GET_DEVICE_FD:
/// `DDDD:BB:DD.F` (domain, bus, device, function), all hexadecimal.
///
/// Parsing accepts the long form ("0000:01:00.0") and the short form lspci prints
/// ("01:00.0", domain 0000). The description is always the long, lower-case form, which is
/// the only spelling the kernel accepts.
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let domain: UInt16
    public let bus: UInt8
    public let device: UInt8    // 0...31
    public let function: UInt8  // 0...7

    public init?(domain: UInt16 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        guard device < 32, function < 8 else { return nil }
        self.domain = domain
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// Parses "DDDD:BB:DD.F" or "BB:DD.F". Returns nil for anything else; `parse` says why.
    public init?(_ text: some StringProtocol) {
        guard case .success(let address) = PCIAddress.parse(text) else { return nil }
        self = address
    }

    /// Parses an address, or explains what is wrong with it in words an operator can act on.
    public static func parse(_ text: some StringProtocol) -> Result<PCIAddress, PCIAddressError> {
        let text = String(text)
        let fail = Result<PCIAddress, PCIAddressError>.failure(PCIAddressError(text: text))
        let colonParts = text.split(separator: ":", omittingEmptySubsequences: false)
        let domainText: Substring
        let busText: Substring
        let slotText: Substring
        switch colonParts.count {
        case 2: (domainText, busText, slotText) = ("0000", colonParts[0], colonParts[1])
        case 3: (domainText, busText, slotText) = (colonParts[0], colonParts[1], colonParts[2])
        default: return fail
        }
        let dotParts = slotText.split(separator: ".", omittingEmptySubsequences: false)
        guard dotParts.count == 2,
              domainText.count == 4, busText.count == 2,
              dotParts[0].count == 2, dotParts[1].count == 1,
              let domain = UInt16(hex: domainText), let bus = UInt8(hex: busText),
              let device = UInt8(hex: dotParts[0]), let function = UInt8(hex: dotParts[1]),
              let address = PCIAddress(domain: domain, bus: bus, device: device, function: function)
        else { return fail }
        return .success(address)
    }

    public var description: String {
        hex(domain, width: 4) + ":" + hex(bus, width: 2) + ":" + hex(device, width: 2) + "." + String(function)
    }

    public static func < (a: PCIAddress, b: PCIAddress) -> Bool {
        (a.domain, a.bus, a.device, a.function) < (b.domain, b.bus, b.device, b.function)
    }
}

/// A string that is not a PCI address (VFIOWords says so in words).
public struct PCIAddressError: Error, Equatable, Sendable {
    public let text: String
}

private func hex<T: BinaryInteger>(_ value: T, width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}

private extension FixedWidthInteger {
    /// Strict hexadecimal: digits only, no sign, no "0x".
    init?(hex text: Substring) {
        guard !text.isEmpty, text.allSatisfy(\.isHexDigit) else { return nil }
        self.init(text, radix: 16)
    }
}
