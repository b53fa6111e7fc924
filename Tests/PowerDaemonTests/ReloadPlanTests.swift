@testable import PowerDaemon
import PowerPolicy
import Testing
import VFIO

/// The reload's plan alone, without Dispatch: which devices are retired, replaced, updated
/// or added, and that an unchanged policy is said to be unchanged.
@Suite struct ReloadPlanTests {
    let a = PCIAddress("0000:00:02.0")!, b = PCIAddress("0000:00:03.0")!
    let c = PCIAddress("0000:00:04.0")!, d = PCIAddress("0000:00:05.0")!
    let own = DevicePolicy(source: .own), vmm = DevicePolicy(source: .vmm)

    func plan(_ running: [PCIAddress: DevicePolicy], _ wanted: [(address: PCIAddress, policy: DevicePolicy)]) -> ReloadPlan {
        ReloadPlan(running: running.keys, policy: { running[$0] }, wanted: wanted)
    }

    @Test func eachDeviceGetsTheStepItsDifferenceNeeds() {
        var slower = own
        slower.rearmDelay = .seconds(90)
        let result = plan([a: own, b: own, c: own], [(b, own), (c, vmm), (d, own), (a, slower)])
        #expect(result.steps == [.update(0, changed: false), .replace(1), .add(2), .update(3, changed: true)])
        #expect([result.added, result.removed, result.changed, result.unchanged] == [1, 0, 2, 1])
    }

    @Test func devicesNoLongerConfiguredAreRetiredFirstInAddressOrder() {
        let result = plan([c: own, a: own, b: own], [(b, own)])
        #expect(result.steps == [.retire(a), .retire(c), .update(0, changed: false)])
        #expect([result.added, result.removed, result.changed, result.unchanged] == [0, 2, 0, 1])
    }

    @Test func anUnchangedConfigurationChangesNothing() {
        let result = plan([a: own, b: vmm], [(a, own), (b, vmm)])
        #expect(result.steps == [.update(0, changed: false), .update(1, changed: false)])
        #expect(result.changed == 0 && result.unchanged == 2)
    }
}
