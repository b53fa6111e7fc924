/// The flap guard of one device: it counts wakes in a sliding window, and decides when the
/// device is flapping (more than `maxWakes` in `window`) and how long each re-arm backs off
/// while it is (doubling from the base, up to the cap). Pure: time is passed in.
///
/// The state machine feeds it every counted wake and asks it at each wake what to do; it
/// ends an episode when the device stays in low power for a whole window, when the policy
/// changes, or when the operator arms it.
struct FlapGuard: Sendable {
    /// What a wake means for the device's next arming.
    enum Verdict: Equatable {
        /// Not flapping: re-arm after the re-arm delay.
        case calm
        /// This wake started an episode: `wakes` in the window; back off for `backoff`.
        case started(wakes: Int, backoff: Duration)
        /// An episode goes on: back off for `backoff` (the wake is not logged on its own).
        case continuing(backoff: Duration)
    }

    /// The episode that just ended, for its summary.
    struct Ended: Equatable {
        var suppressedWakes: UInt64
        var lasted: Duration
    }

    private struct Episode: Sendable {
        var startedAt: MonotonicInstant
        var level: Int
        var suppressedWakes: UInt64
    }

    /// Instants of the most recent wakes inside the window (at most maxWakes + 1 kept).
    private var recentWakes: [MonotonicInstant] = []
    private var episode: Episode?

    var isFlapping: Bool { episode != nil }

    /// `count` wakes read at `now` (coalesced eventfd counts are several wakes at once).
    mutating func wake(count: UInt64, at now: MonotonicInstant, limits: DevicePolicy.FlapGuard,
                       backoffBase: Duration) -> Verdict {
        // recentWakes is in time order: drop the prefix that left the window (one cutoff,
        // computed once; the list holds up to flap_max_wakes + 1 instants).
        let cutoff = now - limits.window
        if let firstKept = recentWakes.firstIndex(where: { $0 > cutoff }) {
            recentWakes.removeFirst(firstKept)
        } else {
            recentWakes.removeAll(keepingCapacity: true)
        }
        let keep = limits.maxWakes + 1
        for _ in 0..<min(count, UInt64(keep)) { recentWakes.append(now) }
        if recentWakes.count > keep { recentWakes.removeFirst(recentWakes.count - keep) }

        if var episode {
            episode.level += 1
            episode.suppressedWakes += count
            self.episode = episode
            return .continuing(backoff: exponentialBackoff(base: backoffBase, exponent: episode.level, cap: limits.backoffCap))
        }
        guard recentWakes.count > limits.maxWakes else { return .calm }
        episode = Episode(startedAt: now, level: 1, suppressedWakes: 0)
        return .started(wakes: recentWakes.count,
                        backoff: exponentialBackoff(base: backoffBase, exponent: 1, cap: limits.backoffCap))
    }

    /// Ends the episode (if any) and forgets the wakes counted so far.
    mutating func end(at now: MonotonicInstant) -> Ended {
        let ended = Ended(suppressedWakes: episode?.suppressedWakes ?? 0, lasted: episode.map { now - $0.startedAt } ?? .zero)
        self = FlapGuard()
        return ended
    }
}
