import ControlProtocol
import PowerPolicy

// The daemon's states and policy as io.vfiopowerd.Manager names them. A new phase or
// source fails to compile here until the interface has a value for it.

extension DeviceRecord.State {
    public init(_ phase: DevicePhase) {
        self = switch phase {
        case .unconfigured: .unconfigured
        case .disabled: .disabled
        case .opening: .opening
        case .arming: .arming
        case .lowPower: .lowPower
        case .keptAwake: .keptAwake
        case .waitingToRearm: .waitingToRearm
        case .backingOff: .backingOff
        case .heldAwake: .heldAwake
        case .exiting: .exiting
        case .failed: .failed
        case .gone: .gone
        case .unsupported: .unsupported
        case .stopped: .stopped
        case .idle: .idle
        case .adopting: .adopting
        case .notAdopted: .notAdopted
        case .guestActive: .guestActive
        }
    }
}

extension DeviceRecord.Source {
    public init(_ source: DevicePolicy.Source) {
        self = switch source {
        case .vmm: .vmm
        case .own: .own
        }
    }
}

extension DeviceRecord.Mode {
    public init(_ mode: DevicePolicy.Mode) {
        self = switch mode {
        case .oneShot: .oneshot
        case .reentrant: .reentrant
        case .off: .off
        }
    }
}
