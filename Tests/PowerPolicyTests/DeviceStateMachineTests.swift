import PowerPolicy
import SystemPackage
import Testing

/// An event as a value, so the tables below can list them.
enum Event: CustomStringConvertible, Sendable {
    case configured, opened, openFailed(CallFailure), armed, armFailed(CallFailure)
    case exited(UInt64), exitFailed(CallFailure), d3coldWriteFailed(CallFailure)
    case woke(UInt64), timerFired, removed, returned, policyChanged(DevicePolicy), stopRequested
    /// The operator's calls: wake until second N (nil: until the next arm), arm now.
    case wakeRequested(Int?), armRequested

    var description: String {
        switch self {
        case .configured: "configured"
        case .opened: "opened"
        case .openFailed(let e): "openFailed(\(e))"
        case .armed: "armed"
        case .armFailed(let e): "armFailed(\(e))"
        case .exited(let n): "exited(\(n))"
        case .exitFailed(let e): "exitFailed(\(e))"
        case .d3coldWriteFailed(let e): "d3coldWriteFailed(\(e))"
        case .woke(let n): "woke(\(n))"
        case .timerFired: "timerFired"
        case .removed: "removed"
        case .returned: "returned"
        case .policyChanged: "policyChanged"
        case .stopRequested: "stopRequested"
        case .wakeRequested(let until): "wakeRequested(until: \(until.map(String.init) ?? "next arm"))"
        case .armRequested: "armRequested"
        }
    }
}

/// A manual clock: events happen at whole seconds the test names.
func at(_ seconds: Int) -> MonotonicInstant { MonotonicInstant(.seconds(seconds)) }

extension DeviceStateMachine {
    @discardableResult
    mutating func handle(_ event: Event, at seconds: Int) -> [DeviceAction] {
        let now = at(seconds)
        switch event {
        case .configured: return configured(now: now)
        case .opened: return opened(now: now)
        case .openFailed(let e): return openFailed(e, now: now)
        case .armed: return armed(now: now)
        case .armFailed(let e): return armFailed(e, now: now)
        case .exited(let n): return exited(drainedWakes: n, now: now)
        case .exitFailed(let e): return exitFailed(e, now: now)
        case .d3coldWriteFailed(let e): return d3coldWriteFailed(e, now: now)
        case .woke(let n): return woke(count: n, now: now)
        case .timerFired: return timerFired(now: now)
        case .removed: return removed(now: now)
        case .returned: return returned(now: now)
        case .policyChanged(let p): return policyChanged(p, now: now)
        case .stopRequested: return stopRequested(now: now)
        case .wakeRequested(let until): return wakeRequested(until: until.map(at), now: now)
        case .armRequested: return armRequested(now: now)
        }
    }
}

let oneShot = DevicePolicy(source: .own)                                            // rearm 30s, 10 wakes / 10m, cap 1h
let reentrant = DevicePolicy(source: .own, mode: .reentrant)
let forbidD3cold = DevicePolicy(source: .own, d3cold: .forbid)
let keepOnStop = DevicePolicy(source: .own, onStop: .keep)
let flappy = DevicePolicy(source: .own, rearmDelay: .seconds(10), flapGuard: .init(maxWakes: 2, window: .seconds(600), backoffCap: .seconds(60)))
let disabled = DevicePolicy(enabled: false, source: .own)

/// Named starting states, each reached through the real protocol from a fresh machine at t=0..
enum Start: String, CaseIterable, Sendable {
    case unconfigured, disabled, opening, arming, lowPower, waitingToRearm, backingOff, heldAwake, exiting, failed, gone, unsupported, stopped

    var policy: DevicePolicy {
        switch self {
        case .disabled: DevicePolicy(enabled: false, source: .own)
        case .backingOff: flappy
        default: oneShot
        }
    }

    /// Events (at seconds) that lead here; the last one happens at or before t=100.
    var path: [(Int, Event)] {
        switch self {
        case .unconfigured: []
        case .disabled: [(0, .configured)]
        case .opening: [(0, .configured)]
        case .arming: [(0, .configured), (1, .opened)]
        case .lowPower: [(0, .configured), (1, .opened), (2, .armed)]
        case .waitingToRearm: [(0, .configured), (1, .opened), (2, .armed), (100, .woke(1))]
        case .backingOff: [(0, .configured), (1, .opened), (2, .armed), (20, .woke(1)), (30, .timerFired), (30, .armed),
                           (40, .woke(1)), (50, .timerFired), (50, .armed), (100, .woke(1))]
        case .heldAwake: [(0, .configured), (1, .opened), (2, .armed), (100, .wakeRequested(nil)), (100, .exited(1))]
        case .exiting: [(0, .configured), (1, .opened), (2, .armed), (100, .stopRequested)]
        case .failed: [(0, .configured), (1, .openFailed(.init(errno: .resourceBusy)))]
        case .gone: [(0, .configured), (1, .opened), (2, .armed), (100, .removed)]
        case .unsupported: [(0, .configured), (1, .openFailed(.init(errno: .inappropriateIOCTLForDevice)))]
        case .stopped: [(0, .configured), (1, .opened), (2, .armed), (50, .stopRequested), (100, .exited(1))]
        }
    }

    func machine() -> DeviceStateMachine {
        var machine = DeviceStateMachine(policy: policy)
        for (time, event) in path { machine.handle(event, at: time) }
        return machine
    }
}

struct Row: CustomTestStringConvertible, Sendable {
    var start: Start
    var event: Event
    var time: Int = 110
    var actions: [DeviceAction]
    var phase: DevicePhase
    var note: String = ""
    var testDescription: String { "\(start.rawValue) × \(event)\(note.isEmpty ? "" : " (\(note))")" }
}

let goneLog = DeviceAction.log(.deviceGone(nil))

/// State × event: the actions and the phase after. Outcome events are listed only in states
/// where an outcome is pending (elsewhere they are protocol violations and trap).
let transitions: [Row] = operatorTransitions + [
    // unconfigured
    Row(start: .unconfigured, event: .configured, time: 0, actions: [.open], phase: .opening),
    Row(start: .unconfigured, event: .woke(1), actions: [], phase: .unconfigured),
    Row(start: .unconfigured, event: .timerFired, actions: [], phase: .unconfigured),
    Row(start: .unconfigured, event: .removed, actions: [], phase: .unconfigured),
    Row(start: .unconfigured, event: .returned, actions: [], phase: .unconfigured),
    Row(start: .unconfigured, event: .policyChanged(reentrant), actions: [], phase: .unconfigured),
    Row(start: .unconfigured, event: .stopRequested, actions: [], phase: .stopped),
    // disabled
    Row(start: .disabled, event: .woke(1), actions: [], phase: .disabled),
    Row(start: .disabled, event: .timerFired, actions: [], phase: .disabled),
    Row(start: .disabled, event: .removed, actions: [], phase: .disabled),
    Row(start: .disabled, event: .returned, actions: [], phase: .disabled),
    Row(start: .disabled, event: .policyChanged(DevicePolicy(name: "x", enabled: false, source: .own)), actions: [], phase: .disabled, note: "still disabled"),
    Row(start: .disabled, event: .policyChanged(oneShot), actions: [.open], phase: .opening, note: "enabled"),
    Row(start: .disabled, event: .stopRequested, actions: [], phase: .stopped),
    // opening
    Row(start: .opening, event: .opened, actions: [.arm(.oneShot)], phase: .arming),
    Row(start: .opening, event: .openFailed(.init(errno: .operationNotSupportedByDevice)), actions: [.log(.deviceGone(.operationNotSupportedByDevice))], phase: .gone),
    Row(start: .opening, event: .openFailed(.init(errno: .inappropriateIOCTLForDevice)), actions: [.log(.unsupported(.inappropriateIOCTLForDevice))], phase: .unsupported),
    Row(start: .opening, event: .openFailed(.init(errno: .resourceBusy)), actions: [.log(.openFailed(.init(errno: .resourceBusy)))], phase: .failed(.open, .init(errno: .resourceBusy))),
    Row(start: .opening, event: .woke(1), actions: [], phase: .opening, note: "stale count, selfWakes"),
    // arming
    Row(start: .arming, event: .armed, actions: [.log(.armed(.oneShot))], phase: .lowPower(.oneShot, since: at(110))),
    Row(start: .arming, event: .armFailed(.init(.alreadyEngaged, errno: .invalidArgument)), actions: [.log(.alreadyEngaged(.oneShot)), .exitLowPower], phase: .exiting, note: "already engaged"),
    Row(start: .arming, event: .armFailed(.init(errno: .operationNotSupportedByDevice)), actions: [.close, .log(.deviceGone(.operationNotSupportedByDevice))], phase: .gone),
    Row(start: .arming, event: .armFailed(.init(errno: .ioError)), actions: [.close, .log(.deviceGone(.ioError))], phase: .gone, note: "stuck in D3cold"),
    Row(start: .arming, event: .armFailed(.init(errno: .inappropriateIOCTLForDevice)), actions: [.close, .log(.unsupported(.inappropriateIOCTLForDevice))], phase: .unsupported),
    Row(start: .arming, event: .armFailed(.init(errno: .badFileDescriptor)), actions: [.close, .log(.armFailed(.init(errno: .badFileDescriptor), .closedUntilRetried))], phase: .failed(.arm, .init(errno: .badFileDescriptor))),
    Row(start: .arming, event: .d3coldWriteFailed(.init(errno: .operationNotSupportedByDevice)), actions: [.close, .log(.deviceGone(.operationNotSupportedByDevice))], phase: .gone),
    Row(start: .arming, event: .woke(1), actions: [], phase: .arming, note: "predates the arm: selfWakes"),
    // lowPower (one-shot)
    Row(start: .lowPower, event: .woke(1), actions: [.log(.woke(count: 1, inLowPowerFor: .seconds(108))), .startTimer(.seconds(30))], phase: .waitingToRearm(until: at(140))),
    Row(start: .lowPower, event: .woke(3), actions: [.log(.woke(count: 3, inLowPowerFor: .seconds(108))), .startTimer(.seconds(30))], phase: .waitingToRearm(until: at(140)), note: "coalesced"),
    Row(start: .lowPower, event: .woke(0), actions: [], phase: .lowPower(.oneShot, since: at(2)), note: "drained already"),
    Row(start: .lowPower, event: .timerFired, actions: [], phase: .lowPower(.oneShot, since: at(2)), note: "stale timer"),
    Row(start: .lowPower, event: .removed, actions: [.close, goneLog], phase: .gone),
    Row(start: .lowPower, event: .returned, actions: [], phase: .lowPower(.oneShot, since: at(2))),
    Row(start: .lowPower, event: .policyChanged(oneShot), actions: [], phase: .lowPower(.oneShot, since: at(2)), note: "unchanged"),
    Row(start: .lowPower, event: .policyChanged(DevicePolicy(name: "renamed", source: .own)), actions: [], phase: .lowPower(.oneShot, since: at(2)), note: "label only"),
    Row(start: .lowPower, event: .policyChanged(DevicePolicy(source: .own, rearmDelay: .seconds(5))), actions: [], phase: .lowPower(.oneShot, since: at(2)), note: "delay: next time"),
    Row(start: .lowPower, event: .policyChanged(reentrant), actions: [.exitLowPower], phase: .exiting, note: "mode change"),
    Row(start: .lowPower, event: .policyChanged(forbidD3cold), actions: [.exitLowPower], phase: .exiting, note: "d3cold change"),
    Row(start: .lowPower, event: .policyChanged(DevicePolicy(source: .own, mode: .off)), actions: [.exitLowPower], phase: .exiting, note: "to off"),
    Row(start: .lowPower, event: .stopRequested, actions: [.exitLowPower], phase: .exiting),
    // waitingToRearm (woke at 100, until 130)
    Row(start: .waitingToRearm, event: .timerFired, time: 130, actions: [.arm(.oneShot)], phase: .arming),
    Row(start: .waitingToRearm, event: .timerFired, time: 120, actions: [.startTimer(.seconds(10))], phase: .waitingToRearm(until: at(130)), note: "early: the timer is set for the rest"),
    Row(start: .waitingToRearm, event: .woke(1), actions: [], phase: .waitingToRearm(until: at(130)), note: "disarmed: stale"),
    Row(start: .waitingToRearm, event: .removed, actions: [.cancelTimer, .close, goneLog], phase: .gone),
    Row(start: .waitingToRearm, event: .returned, actions: [], phase: .waitingToRearm(until: at(130))),
    Row(start: .waitingToRearm, event: .policyChanged(DevicePolicy(source: .own, rearmDelay: .seconds(60))), actions: [.startTimer(.seconds(50))], phase: .waitingToRearm(until: at(160)), note: "delay longer"),
    Row(start: .waitingToRearm, event: .policyChanged(DevicePolicy(source: .own, rearmDelay: .seconds(5))), actions: [.cancelTimer, .arm(.oneShot)], phase: .arming, note: "delay already over"),
    Row(start: .waitingToRearm, event: .policyChanged(reentrant), actions: [.cancelTimer, .arm(.reentrant)], phase: .arming),
    Row(start: .waitingToRearm, event: .policyChanged(forbidD3cold), actions: [], phase: .waitingToRearm(until: at(130)), note: "written before next arm"),
    Row(start: .waitingToRearm, event: .policyChanged(disabled), actions: [.cancelTimer, .close, .log(.released)], phase: .disabled),
    Row(start: .waitingToRearm, event: .stopRequested, actions: [.cancelTimer, .close], phase: .stopped),
    // backingOff (flappy: third wake in window at 100 → flapping, backoff 20s, until 120)
    Row(start: .backingOff, event: .timerFired, time: 120, actions: [.arm(.oneShot)], phase: .arming),
    Row(start: .backingOff, event: .timerFired, time: 119, actions: [.startTimer(.seconds(1))], phase: .backingOff(until: at(120)), note: "early: the timer is set for the rest"),
    Row(start: .backingOff, event: .woke(2), actions: [], phase: .backingOff(until: at(120)), note: "stale"),
    Row(start: .backingOff, event: .removed, actions: [.cancelTimer, .close, goneLog], phase: .gone),
    Row(start: .backingOff, event: .policyChanged(DevicePolicy(source: .own, mode: .reentrant, rearmDelay: .seconds(10), flapGuard: flappy.flapGuard)),
        actions: [.cancelTimer, .log(.flappingEnded(suppressedWakes: 0, lasted: .seconds(10))), .arm(.reentrant)], phase: .arming),
    Row(start: .backingOff, event: .stopRequested, actions: [.cancelTimer, .close], phase: .stopped),
    // exiting (for stop)
    Row(start: .exiting, event: .exited(1), actions: [.close], phase: .stopped, note: "self-wake drained"),
    Row(start: .exiting, event: .exitFailed(.init(errno: .operationNotSupportedByDevice)), actions: [.close, .log(.exitFailed(.init(errno: .operationNotSupportedByDevice), .closedInstead))], phase: .stopped),
    Row(start: .exiting, event: .woke(1), actions: [], phase: .exiting, note: "self-caused"),
    // failed
    Row(start: .failed, event: .returned, actions: [.log(.deviceBack), .open], phase: .opening),
    Row(start: .failed, event: .removed, actions: [], phase: .gone),
    Row(start: .failed, event: .woke(1), actions: [], phase: .failed(.open, .init(errno: .resourceBusy))),
    Row(start: .failed, event: .timerFired, actions: [], phase: .failed(.open, .init(errno: .resourceBusy))),
    Row(start: .failed, event: .policyChanged(DevicePolicy(name: "x", source: .own)), actions: [], phase: .failed(.open, .init(errno: .resourceBusy)), note: "label only"),
    Row(start: .failed, event: .policyChanged(reentrant), actions: [.open], phase: .opening, note: "retry"),
    Row(start: .failed, event: .stopRequested, actions: [], phase: .stopped),
    // gone
    Row(start: .gone, event: .returned, actions: [.log(.deviceBack), .open], phase: .opening),
    Row(start: .gone, event: .removed, actions: [], phase: .gone),
    Row(start: .gone, event: .woke(1), actions: [], phase: .gone, note: "unbind's resume"),
    Row(start: .gone, event: .timerFired, actions: [], phase: .gone),
    Row(start: .gone, event: .policyChanged(reentrant), actions: [], phase: .gone, note: "kept for return"),
    Row(start: .gone, event: .stopRequested, actions: [], phase: .stopped),
    // unsupported
    Row(start: .unsupported, event: .returned, actions: [], phase: .unsupported),
    Row(start: .unsupported, event: .removed, actions: [], phase: .unsupported),
    Row(start: .unsupported, event: .policyChanged(reentrant), actions: [], phase: .unsupported),
    Row(start: .unsupported, event: .stopRequested, actions: [], phase: .stopped),
    // stopped
    Row(start: .stopped, event: .woke(1), actions: [], phase: .stopped),
    Row(start: .stopped, event: .timerFired, actions: [], phase: .stopped),
    Row(start: .stopped, event: .removed, actions: [], phase: .stopped),
    Row(start: .stopped, event: .returned, actions: [], phase: .stopped),
    Row(start: .stopped, event: .policyChanged(reentrant), actions: [], phase: .stopped),
    Row(start: .stopped, event: .stopRequested, actions: [], phase: .stopped),
]

@Suite struct DeviceStateMachineTransitionTests {
    @Test(arguments: transitions)
    func transition(_ row: Row) {
        var machine = row.start.machine()
        let actions = machine.handle(row.event, at: row.time)
        #expect(actions == row.actions)
        #expect(machine.phase == row.phase)
    }

    @Test func everyStartIsReachedAsNamed() {
        for start in Start.allCases {
            // The phase's case name, as Swift prints it: "lowPower(...)" is lowPower.
            let phase = "\(start.machine().phase)".prefix { $0 != "(" }
            #expect(phase == "\(start)", "\(start)")
        }
    }

    @Test func everyStateHasRows() {
        for start in Start.allCases {
            #expect(transitions.contains { $0.start == start }, "\(start) has no rows")
        }
    }

    @Test(arguments: Start.allCases)
    func unchangedPolicyMeansNoActionsInEveryState(_ start: Start) {
        var machine = start.machine()
        #expect(machine.policyChanged(start.policy, now: at(110)) == [])
    }
}

/// The operator's Wake and Arm (the control interface), in every state where they matter.
let operatorTransitions: [Row] = [
    // Wake: out of low power now, held awake until the deadline or the next Arm.
    Row(start: .lowPower, event: .wakeRequested(200), actions: [.exitLowPower], phase: .exiting),
    Row(start: .waitingToRearm, event: .wakeRequested(nil), actions: [.cancelTimer, .log(.heldAwake(for: nil))],
        phase: .heldAwake(until: nil), note: "already awake: only the deadline changes"),
    Row(start: .heldAwake, event: .wakeRequested(200), actions: [.cancelTimer, .startTimer(.seconds(90)), .log(.heldAwake(for: .seconds(90)))],
        phase: .heldAwake(until: at(200))),
    Row(start: .gone, event: .wakeRequested(nil), actions: [], phase: .gone, note: "nothing open to wake"),
    Row(start: .unsupported, event: .wakeRequested(nil), actions: [], phase: .unsupported),
    Row(start: .disabled, event: .wakeRequested(nil), actions: [], phase: .disabled),
    // Held awake: nothing re-arms it but the deadline or Arm.
    Row(start: .heldAwake, event: .timerFired, actions: [], phase: .heldAwake(until: nil), note: "no deadline"),
    Row(start: .heldAwake, event: .woke(1), actions: [], phase: .heldAwake(until: nil), note: "stale count, disarmed"),
    Row(start: .heldAwake, event: .removed, actions: [.cancelTimer, .close, goneLog], phase: .gone),
    Row(start: .heldAwake, event: .returned, actions: [], phase: .heldAwake(until: nil)),
    Row(start: .heldAwake, event: .stopRequested, actions: [.cancelTimer, .close], phase: .stopped, note: "awake already: no EXIT"),
    Row(start: .heldAwake, event: .policyChanged(disabled), actions: [.cancelTimer, .close, .log(.released)], phase: .disabled),
    Row(start: .heldAwake, event: .policyChanged(DevicePolicy(source: .own, rearmDelay: .seconds(5))), actions: [], phase: .heldAwake(until: nil),
        note: "the hold stands"),
    // Arm: now, from any awake state; a failed or missing device is opened again.
    Row(start: .heldAwake, event: .armRequested, actions: [.cancelTimer, .arm(.oneShot)], phase: .arming),
    Row(start: .waitingToRearm, event: .armRequested, actions: [.cancelTimer, .arm(.oneShot)], phase: .arming),
    Row(start: .backingOff, event: .armRequested,
        actions: [.cancelTimer, .log(.flappingEnded(suppressedWakes: 0, lasted: .seconds(10))), .arm(.oneShot)], phase: .arming,
        note: "the operator ends the flapping episode"),
    Row(start: .lowPower, event: .armRequested, actions: [], phase: .lowPower(.oneShot, since: at(2)), note: "already armed"),
    Row(start: .failed, event: .armRequested, actions: [.open], phase: .opening),
    Row(start: .gone, event: .armRequested, actions: [.open], phase: .opening),
    Row(start: .disabled, event: .armRequested, actions: [], phase: .disabled, note: "not managed"),
    Row(start: .unsupported, event: .armRequested, actions: [], phase: .unsupported),
    Row(start: .stopped, event: .armRequested, actions: [], phase: .stopped),
]

@Suite struct OperatorScenarios {
    @Test func wakeWithADeadlineIsHeldThenArmedWhenItRunsOut() {
        var machine = Start.lowPower.machine()
        #expect(machine.wakeRequested(until: at(160), now: at(100)) == [.exitLowPower])
        #expect(machine.exited(drainedWakes: 1, now: at(100)) == [.startTimer(.seconds(60)), .log(.heldAwake(for: .seconds(60)))])
        #expect(machine.statistics.selfWakes == 1, "the EXIT's own wake is not a device wake")
        #expect(machine.statistics.wakes == 0)
        #expect(machine.timerFired(now: at(159)) == [.startTimer(.seconds(1))], "early: the deadline stands, the timer is set for the rest")
        #expect(machine.timerFired(now: at(160)) == [.arm(.oneShot)])
        #expect(machine.armed(now: at(160)) == [.log(.armed(.oneShot))])
        #expect(machine.phase == .lowPower(.oneShot, since: at(160)))
        #expect(machine.statistics.timeInLowPower(asOf: at(160)) == .seconds(98), "2..100 counted, 100..160 held awake")
    }
}

@Suite struct ZeroRearmDelay {
    let immediate = DevicePolicy(source: .own, rearmDelay: .zero, flapGuard: .init(maxWakes: 2, window: .seconds(600), backoffCap: .seconds(60)))

    @Test func aWakeIsReArmedAtOnceWithoutATimer() {
        var machine = DeviceStateMachine(policy: immediate)
        _ = machine.configured(now: at(0))
        _ = machine.opened(now: at(1))
        _ = machine.armed(now: at(2))
        #expect(machine.woke(count: 1, now: at(10)) == [.log(.woke(count: 1, inLowPowerFor: .seconds(8))), .arm(.oneShot)])
        #expect(machine.phase == .arming)
        #expect(machine.armed(now: at(10)) == [.log(.rearmed(.oneShot, quietFor: .zero))])
    }

    @Test func flappingStillBacksOffFromAtLeastASecond() {
        var machine = DeviceStateMachine(policy: immediate)
        _ = machine.configured(now: at(0))
        _ = machine.opened(now: at(1))
        _ = machine.armed(now: at(1))
        for second in [2, 3] {
            _ = machine.woke(count: 1, now: at(second))
            _ = machine.armed(now: at(second))
        }
        let actions = machine.woke(count: 1, now: at(4))
        #expect(actions.contains(.startTimer(.seconds(2))), "the third wake in the window: 1 s base, doubled once")
        #expect(machine.phase == .backingOff(until: at(6)))
    }
}
