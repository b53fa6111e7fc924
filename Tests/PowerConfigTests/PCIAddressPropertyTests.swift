import PropertyBased
import Testing
import VFIO

@Suite struct PCIAddressPropertyTests {
    static let addresses = zip(Gen.int(in: 0...0xFFFF), Gen.int(in: 0...0xFF), Gen.int(in: 0...31), Gen.int(in: 0...7))

    @Test func longFormRoundTrips() async {
        await propertyCheck(count: 500, input: Self.addresses) { domain, bus, device, function in
            let address = PCIAddress(domain: UInt16(domain), bus: UInt8(bus), device: UInt8(device), function: UInt8(function))!
            #expect(PCIAddress.parse(address.description) == .success(address))
            #expect(address.description.count == 12)
        }
    }

    @Test func shortFormMeansDomainZero() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...0xFF), Gen.int(in: 0...31), Gen.int(in: 0...7)) { bus, device, function in
            let address = PCIAddress(bus: UInt8(bus), device: UInt8(device), function: UInt8(function))!
            let short = String(address.description.dropFirst(5))
            #expect(PCIAddress(short) == address)
        }
    }

    @Test func junkIsRejectedWithAnExplanation() async {
        await propertyCheck(count: 500, input: Gen.letterOrNumber.string(of: 0...14)) { text in
            // Letters and digits only: no colon, never an address.
            #expect(PCIAddress(text) == nil)
        }
        for junk in ["0000:01:00", "01:00.8", "01:20.0", "0000:01:00.0.0", "1:00.0", "0000:1:00.0", "00000:01:00.0", "0x01:00.0", " 01:00.0", "01:00.0 "] {
            guard case .failure(let error) = PCIAddress.parse(junk) else {
                Issue.record("\(junk) parsed")
                continue
            }
            #expect(error.text == junk)
            #expect(error.description.contains("write it as DDDD:BB:DD.F"))
        }
        // device 0x20 and function 8 are out of range even though hex-shaped.
        #expect(PCIAddress("0000:00:20.0") == nil)
    }
}
