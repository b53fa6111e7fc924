import PowerPolicy
import VFIO

/// What a reload does to each device, decided without touching one: pure, so that the rule
/// "a device whose policy did not change gets no call" is tested without Dispatch.
///
/// The Manager runs the steps in order: retirements first (addresses no longer configured,
/// in address order), then each wanted device in the configuration's order.
struct ReloadPlan: Equatable {
    enum Step: Equatable {
        /// No longer configured: left as `enabled = false` leaves it.
        case retire(PCIAddress)
        /// Its source changed (`own` ↔ `vmm`): the old way of holding it is let go first.
        /// The index is into the wanted devices.
        case replace(Int)
        /// Still configured: its policy is handed over (`changed` says whether it differs; an
        /// unchanged policy makes no call on the device).
        case update(Int, changed: Bool)
        /// Newly configured.
        case add(Int)
    }

    var steps: [Step] = []
    var added = 0, removed = 0, changed = 0, unchanged = 0

    /// - Parameters:
    ///   - running: the addresses managed now, and each one's policy.
    ///   - wanted: the new configuration's devices, in its order.
    init(running addresses: some Sequence<PCIAddress>, policy: (PCIAddress) -> DevicePolicy?,
         wanted: some RandomAccessCollection<(address: PCIAddress, policy: DevicePolicy)>) {
        // Addresses only: a second copy of every resolved device would add to a reload's peak.
        let wantedAddresses = Set(wanted.lazy.map(\.address))
        for address in addresses.sorted() where !wantedAddresses.contains(address) {
            steps.append(.retire(address))
            removed += 1
        }
        for (index, device) in wanted.enumerated() {
            guard let current = policy(device.address) else {
                steps.append(.add(index))
                added += 1
                continue
            }
            if current.source != device.policy.source {
                steps.append(.replace(index))
                changed += 1
            } else {
                let differs = current != device.policy
                steps.append(.update(index, changed: differs))
                if differs { changed += 1 } else { unchanged += 1 }
            }
        }
    }
}
