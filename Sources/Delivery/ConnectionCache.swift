// Outbound connection caching: after a message, an SMTP connection to a host can carry the next
// message for the same host instead of a new TCP connection, greeting and EHLO (Postfix's
// smtp_connection_cache_on_demand). Idle connections are closed after a short time so remote
// servers are not held open; old ones are retired.

import MailCore
import Net
import SMTP

/// An idle SMTP connection and what its host said in EHLO. Ownership moves between tasks through
/// the cache; only one task uses a connection at a time.
final class CachedConnection: @unchecked Sendable {
    let connection: Connection
    let traits: SMTPServerTraits
    let opened: Int64
    var idleSince: Int64

    init(connection: Connection, traits: SMTPServerTraits, opened: Int64) {
        self.connection = connection
        self.traits = traits
        self.opened = opened
        idleSince = monotonicMilliseconds()
    }
}

final class ConnectionCache: @unchecked Sendable {  // `idle` guarded by `lock`
    private let lock = Lock()
    private var idle: [String: [CachedConnection]] = [:]
    /// Milliseconds an idle connection is kept (Postfix smtp_connection_cache_time_limit: 2 s).
    let idleLimit: Int64
    /// Milliseconds after which a connection is no longer reused (Postfix smtp_connection_reuse_time_limit: 300 s).
    let ageLimit: Int64
    /// Idle connections kept per destination.
    let perDestination: Int

    init(idleLimit: Int64 = 2000, ageLimit: Int64 = 300_000, perDestination: Int = 8) {
        self.idleLimit = idleLimit
        self.ageLimit = ageLimit
        self.perDestination = perDestination
        Task { [weak self] in
            while let cache = self {
                try? await Task.sleep(nanoseconds: 500_000_000)
                await cache.closeExpired()
            }
        }
    }

    /// A live idle connection to `key`, if any.
    func take(_ key: String) -> CachedConnection? {
        let now = monotonicMilliseconds()
        var stale: [CachedConnection] = []
        let found: CachedConnection? = lock.withLock {
            while var list = idle[key], let candidate = list.popLast() {
                idle[key] = list.isEmpty ? nil : list
                if now - candidate.idleSince < idleLimit && now - candidate.opened < ageLimit { return candidate }
                stale.append(candidate)
            }
            return nil
        }
        for entry in stale { entry.connection.close() }
        return found
    }

    /// Parks a connection after a finished transaction; returns false if it was not wanted
    /// (the caller then says QUIT and closes).
    func put(_ entry: CachedConnection, for key: String) -> Bool {
        let now = monotonicMilliseconds()
        guard now - entry.opened < ageLimit else { return false }
        entry.idleSince = now
        return lock.withLock {
            var list = idle[key] ?? []
            guard list.count < perDestination else { return false }
            list.append(entry)
            idle[key] = list
            return true
        }
    }

    private func closeExpired() async {
        let now = monotonicMilliseconds()
        let expired: [CachedConnection] = lock.withLock {
            var out: [CachedConnection] = []
            for (key, list) in idle {
                let keep = list.filter { now - $0.idleSince < idleLimit }
                out += list.filter { now - $0.idleSince >= idleLimit }
                idle[key] = keep.isEmpty ? nil : keep
            }
            return out
        }
        for entry in expired {
            entry.connection.queue(line: "QUIT")
            try? await entry.connection.flush()
            await entry.connection.shutdown()
        }
    }
}
