// When to try again after a temporary failure: exponential backoff from `first` doubling up to
// `maximum`, with ±10% jitter so a burst of deferrals does not retry in lockstep, and a hard
// lifetime after which the recipient is bounced. Randomness is injected for tests.

public struct RetryPolicy: Sendable {
    public var first: Int64      // milliseconds
    public var maximum: Int64    // milliseconds
    public var lifetime: Int64   // milliseconds

    public init(firstSeconds: Int, maximumSeconds: Int, lifetimeSeconds: Int) {
        first = Int64(firstSeconds) * 1000
        maximum = Int64(max(firstSeconds, maximumSeconds)) * 1000
        lifetime = Int64(lifetimeSeconds) * 1000
    }

    /// Delay before attempt number `attempts + 1`, given `attempts` failures so far (≥ 1).
    /// `unitRandom` is in [0, 1).
    public func delay(afterAttempts attempts: Int, unitRandom: Double) -> Int64 {
        var delay = first
        var n = 1
        while n < attempts && delay < maximum {
            delay *= 2
            n += 1
        }
        delay = min(delay, maximum)
        let jitter = Double(delay) * 0.1 * (unitRandom * 2 - 1)
        return max(1, delay + Int64(jitter))
    }

    public func expired(arrival: Int64, now: Int64) -> Bool { now - arrival >= lifetime }
}
