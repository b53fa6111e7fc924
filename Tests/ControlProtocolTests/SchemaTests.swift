import ControlProtocol
import Foundation
import Testing
import Varlink

/// The records are the interface file's types in Swift: held against the file both ways, so
/// a field added, renamed or retyped on one side only fails here, by name.
@Suite struct SchemaTests {
    static let interface = ManagerInterface.definition

    /// Every optional field set, every enum at a value.
    static let full = DeviceRecord(
        address: "0000:01:00.0", name: "gpu0", driver: "vfio-pci", source: .vmm, holderPid: 4242,
        holderExecutable: "/usr/bin/qemu-system-x86_64", powerState: "D3hot", runtimeStatus: "suspended",
        runtimeSuspendedMs: 61_000, mode: .oneshot, state: .stuck, stuckCall: "arm", stuckUsec: 12_000_000,
        wakes: 2, selfWakes: 1, arms: 3, flapping: true, flapEpisodes: 1, lowPowerUsec: 5, managedUsec: 9,
        lastWakeRealtimeUsec: 1, nextArmRealtimeUsec: 2, lastError: "arm: EBUSY", configuredAt: "/etc/vfio-powerd/devices.d/gpu.toml:1")

    /// Every optional field left out.
    static let minimal = DeviceRecord(address: "0000:01:00.0", driver: nil, state: .idle)

    /// Every optional field set.
    static let statistics = StatisticsRecord(devices: 1, lowPower: 1, awake: 0, missing: 0, failing: 0, wakes: 2,
                                             selfWakes: 0, arms: 3, flapping: 0, status: "1 device: 1 in low power; 2 wakes",
                                             uptimeSeconds: 7, reloads: 1, lastReloadSucceeded: true,
                                             lastReloadRealtimeUsec: 1_700_000_000_000_000)

    /// Every optional field left out (no reload yet).
    static let statisticsMinimal = StatisticsRecord(devices: 0, lowPower: 0, awake: 0, missing: 0, failing: 0, wakes: 0,
                                                    selfWakes: 0, arms: 0, flapping: 0, status: "no devices configured",
                                                    uptimeSeconds: 0)

    @Test func deviceRecordIsTheDeviceType() throws {
        try expectMatches(Self.full, Self.minimal, type: "Device")
    }

    @Test func statisticsRecordIsTheStatisticsType() throws {
        try expectMatches(Self.statistics, Self.statisticsMinimal, type: "Statistics")
    }

    @Test func everyEnumHasTheFilesValuesInItsOrder() throws {
        let fields = try #require(structure(of: "Device"))
        #expect(enumValues(fields, "state") == DeviceRecord.State.allCases.map(\.rawValue))
        #expect(enumValues(fields, "mode") == DeviceRecord.Mode.allCases.map(\.rawValue))
        #expect(enumValues(fields, "source") == DeviceRecord.Source.allCases.map(\.rawValue))
    }

    @Test func everyErrorIsDeclared() {
        let declared = Set(Self.interface.errors.keys.map { "\(Self.interface.name).\($0)" })
        #expect(declared == Set(ManagerInterface.Error.allCases.map(\.rawValue)))
    }

    @Test func methodsReplyWithTheRecords() throws {
        let device = VarlinkInterface.Field(name: "device", type: .named("Device"))
        for method in ["GetDevice", "Arm", "Wake", "Adopt", "Handoff", "Release", "Monitor"] {
            #expect(Self.interface.methods[method]?.replies == [device], "\(method)")
        }
        #expect(Self.interface.methods["ListDevices"]?.replies == [.init(name: "devices", type: .array(.named("Device")))])
        #expect(Self.interface.methods["GetStatistics"]?.replies == [.init(name: "statistics", type: .named("Statistics"))])
    }

    @Test func everyStateHasWords() {
        let words = DeviceRecord.State.allCases.map(\.words)
        #expect(Set(words).count == words.count, "two states read the same")
        #expect(DeviceRecord.State.lowPower.words == "low power")
    }

    // MARK: Holding a record against a type

    /// `full` carries every field, `minimal` only the required ones: together they show the
    /// record's fields, which are optional, and the JSON kind of each.
    private func expectMatches(_ full: some Encodable, _ minimal: some Encodable, type name: String,
                               sourceLocation: SourceLocation = #_sourceLocation) throws {
        let fields = try #require(structure(of: name), "no type \(name) in the interface file")
        let encodedFull = try JSONValue(encoding: full).object ?? [:]
        let encodedMinimal = try JSONValue(encoding: minimal).object ?? [:]
        let declared = Dictionary(uniqueKeysWithValues: fields.map { ($0.name, $0.type) })
        #expect(Set(encodedFull.keys) == Set(declared.keys),
                "record has \(Set(encodedFull.keys).subtracting(declared.keys).sorted()) the file lacks; file has \(Set(declared.keys).subtracting(encodedFull.keys).sorted()) the record lacks",
                sourceLocation: sourceLocation)
        for (field, type) in declared {
            var required = type
            let optional: Bool
            if case .optional(let inner) = type { required = inner; optional = true } else { optional = false }
            #expect((encodedMinimal[field] != nil) == !optional,
                    "\(name).\(field) is \(type) in the file, but the record \(optional ? "requires" : "may omit") it",
                    sourceLocation: sourceLocation)
            guard let value = encodedFull[field] else { continue }
            #expect(kind(of: value, matches: required), "\(name).\(field): \(value) is not a \(required)", sourceLocation: sourceLocation)
        }
    }

    private func kind(of value: JSONValue, matches type: VarlinkInterface.TypeExpression) -> Bool {
        switch (type, value) {
        case (.string, .string), (.int, .integer), (.bool, .bool), (.float, .double), (.float, .integer): true
        case (.enumeration(let values), .string(let text)): values.contains(text)
        case (.array(let element), .array(let items)): items.allSatisfy { kind(of: $0, matches: element) }
        default: false
        }
    }

    private func structure(of name: String) -> [VarlinkInterface.Field]? {
        guard case .structure(let fields) = Self.interface.types[name] else { return nil }
        return fields
    }

    private func enumValues(_ fields: [VarlinkInterface.Field], _ name: String) -> [String]? {
        guard case .enumeration(let values) = fields.first(where: { $0.name == name })?.type else { return nil }
        return values
    }
}

@Suite struct InterfaceReaderTests {
    @Test func readsTypesMethodsAndErrors() throws {
        let interface = try VarlinkInterface(parsing: """
            # comment
            interface org.example.Test
            type T (a: ?string, b: []int, c: [string]bool, d: (x, y), e: (f: float), g: object, h: ?[]T)
            method M(a: string, b: ?int) -> ()
            method N() -> (t: T) # trailing comment
            error E ()
            """)
        #expect(interface.name == "org.example.Test")
        #expect(interface.types["T"] == .structure([
            .init(name: "a", type: .optional(.string)), .init(name: "b", type: .array(.int)),
            .init(name: "c", type: .map(.bool)), .init(name: "d", type: .enumeration(["x", "y"])),
            .init(name: "e", type: .structure([.init(name: "f", type: .float)])), .init(name: "g", type: .object),
            .init(name: "h", type: .optional(.array(.named("T")))),
        ]))
        #expect(interface.methods["M"] == .init(parameters: [.init(name: "a", type: .string), .init(name: "b", type: .optional(.int))], replies: []))
        #expect(interface.methods["N"]?.replies == [.init(name: "t", type: .named("T"))])
        #expect(interface.errors["E"] == [])
    }

    @Test(arguments: [
        ("interface x\nmethod M(a: string -> ()", "expected \",\" or \")\", found \"->\""),
        ("interface x\nbogus", "expected type, method or error, found \"bogus\""),
        ("type T ()", "expected \"interface\", found \"type\""),
        ("interface x\nmethod M(a) -> ()", "expected \"name: type\", found \"a\""),
    ])
    func refusesWhatItCannotRead(text: String, message: String) {
        #expect(throws: VarlinkInterface.ParseError(description: message)) { try VarlinkInterface(parsing: text) }
    }
}
