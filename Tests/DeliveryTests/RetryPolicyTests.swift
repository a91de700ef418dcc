import Delivery
import XCTest

final class RetryPolicyTests: XCTestCase {
    private let policy = RetryPolicy(firstSeconds: 300, maximumSeconds: 3600, lifetimeSeconds: 5 * 86_400)

    func testDelayDoublesFromFirstUpToMaximum() {
        // unitRandom 0.5 is the middle of the jitter range: no jitter.
        let delays = (1...8).map { policy.delay(afterAttempts: $0, unitRandom: 0.5) }
        XCTAssertEqual(delays, [300_000, 600_000, 1_200_000, 2_400_000, 3_600_000, 3_600_000, 3_600_000, 3_600_000])
        XCTAssertEqual(policy.delay(afterAttempts: 0, unitRandom: 0.5), 300_000)
        XCTAssertEqual(policy.delay(afterAttempts: 10_000, unitRandom: 0.5), 3_600_000)
    }

    func testJitterStaysWithinTenPercent() {
        for attempts in 1...10 {
            let base = policy.delay(afterAttempts: attempts, unitRandom: 0.5)
            for step in 0..<100 {
                let random = Double(step) / 100
                let delay = policy.delay(afterAttempts: attempts, unitRandom: random)
                XCTAssertGreaterThanOrEqual(delay, base - base / 10, "attempts \(attempts) random \(random)")
                XCTAssertLessThanOrEqual(delay, base + base / 10, "attempts \(attempts) random \(random)")
            }
            // The range is used: the ends are about 10% off, not clamped to the base.
            XCTAssertEqual(policy.delay(afterAttempts: attempts, unitRandom: 0), base - base / 10)
            XCTAssertGreaterThan(policy.delay(afterAttempts: attempts, unitRandom: 0.99), base + base / 100 * 9)
        }
    }

    func testMaximumBelowFirstIsRaisedToFirst() {
        let odd = RetryPolicy(firstSeconds: 600, maximumSeconds: 60, lifetimeSeconds: 3600)
        XCTAssertEqual(odd.maximum, 600_000)
        XCTAssertEqual(odd.delay(afterAttempts: 5, unitRandom: 0.5), 600_000)
    }

    func testDelayIsAtLeastOneMillisecond() {
        let zero = RetryPolicy(firstSeconds: 0, maximumSeconds: 0, lifetimeSeconds: 0)
        XCTAssertEqual(zero.delay(afterAttempts: 3, unitRandom: 0), 1)
    }

    func testExpiredAtTheLifetime() {
        let arrival: Int64 = 1_764_769_283_000
        let lifetime: Int64 = 5 * 86_400 * 1000
        XCTAssertFalse(policy.expired(arrival: arrival, now: arrival))
        XCTAssertFalse(policy.expired(arrival: arrival, now: arrival + lifetime - 1))
        XCTAssertTrue(policy.expired(arrival: arrival, now: arrival + lifetime))
        XCTAssertTrue(policy.expired(arrival: arrival, now: arrival + lifetime * 2))
    }
}
