// Cyrus SASL (libsasl2) for SMTP AUTH (RFC 4954), POP3 AUTH (RFC 5034) and POP3 USER/PASS, all
// checked against Apus's own sasldb — the path comes from the config and /etc/sasl2 is never
// read (see the GETOPT/GETCONFPATH callbacks in CApusShim).
//
// Calls can touch the disk (sasldb) or a daemon (saslauthd), so drivers run them through
// `Blocking.run`, one call at a time per session.

import CApusShim
import CSASL
import MailCore

public enum SASLError: Error, CustomStringConvertible, Sendable {
    case library(String, Int32)
    public var description: String {
        switch self {
        case .library(let call, let code): return "\(call): \(String(cString: sasl_errstring(code, nil, nil)))"
        }
    }
}

public enum SASL {
    /// Mechanisms Apus offers: plaintext-equivalent ones, so only ever under TLS.
    public static let mechanisms = ["PLAIN", "LOGIN"]

    nonisolated(unsafe) private static var initialized = false

    /// Once per process, before any session (Cyrus's global state is not re-entrant).
    public static func initialize(sasldbPath: String) throws {
        guard !initialized else { return }
        let rc = apus_sasl_server_init("apus", sasldbPath, mechanisms.joined(separator: " "))
        guard rc == SASL_OK else { throw SASLError.library("sasl_server_init", rc) }
        initialized = true
    }
}

/// One server-side SASL conversation (one per client connection).
public final class SASLServerSession: @unchecked Sendable {
    private var conn: OpaquePointer?
    private let defaultRealm: String

    /// `service` is "smtp" or "pop"; `defaultRealm` completes a bare user name ("demo" →
    /// "demo@localhost").
    public init(service: String, hostname: String, defaultRealm: String) throws {
        self.defaultRealm = defaultRealm
        var c: OpaquePointer?
        let rc = sasl_server_new(service, hostname, defaultRealm, nil, nil, nil, 0, &c)
        guard rc == SASL_OK, let c else { throw SASLError.library("sasl_server_new", rc) }
        conn = c
        // No SASL security layer (TLS protects the channel) and never ANONYMOUS. Plaintext
        // mechanisms are allowed here because the protocol layers offer them only under TLS.
        var props = sasl_security_properties_t()
        props.min_ssf = 0
        props.max_ssf = 0
        props.maxbufsize = 0
        props.security_flags = UInt32(SASL_SEC_NOANONYMOUS)
        _ = sasl_setprop(c, Int32(SASL_SEC_PROPS), &props)
    }

    deinit { if conn != nil { sasl_dispose(&conn) } }

    /// Begins an exchange. `initialResponse` nil means the client sent none.
    public func start(mechanism: String, initialResponse: [UInt8]?) -> SASLStepResult {
        var out: UnsafePointer<CChar>?
        var outLength: UInt32 = 0
        let rc: Int32
        if let initialResponse {
            // An empty initial response must be a non-nil pointer of length 0.
            rc = withCBytes(initialResponse) { sasl_server_start(conn, mechanism, $0, $1, &out, &outLength) }
        } else {
            rc = sasl_server_start(conn, mechanism, nil, 0, &out, &outLength)
        }
        return interpret(rc, out, outLength)
    }

    public func step(_ response: [UInt8]) -> SASLStepResult {
        var out: UnsafePointer<CChar>?
        var outLength: UInt32 = 0
        let rc = withCBytes(response) { sasl_server_step(conn, $0, $1, &out, &outLength) }
        return interpret(rc, out, outLength)
    }

    /// POP3 USER/PASS. Unknown user and wrong password look the same to the caller.
    public func checkPassword(user: String, password: [UInt8]) -> SASLStepResult {
        let rc = withCBytes(password) { sasl_checkpass(conn, user, UInt32(user.utf8.count), $0, $1) }
        switch rc {
        case SASL_OK: return .success(user: canonical(user))
        case SASL_TRYAGAIN, SASL_UNAVAIL, SASL_NOMEM: return .temporaryFailure
        default:
            if rc != SASL_BADAUTH && rc != SASL_NOUSER { logUnexpected(rc) }
            return .failure
        }
    }

    private func interpret(_ rc: Int32, _ out: UnsafePointer<CChar>?, _ length: UInt32) -> SASLStepResult {
        switch rc {
        case SASL_OK:
            var value: UnsafeRawPointer?
            if sasl_getprop(conn, Int32(SASL_USERNAME), &value) == SASL_OK, let value {
                return .success(user: canonical(String(cString: value.assumingMemoryBound(to: CChar.self))))
            }
            return .temporaryFailure
        case SASL_CONTINUE:
            guard let out else { return .challenge([]) }
            let bytes = UnsafeRawBufferPointer(start: out, count: Int(length))
            return .challenge(Array(bytes))
        case SASL_TRYAGAIN, SASL_UNAVAIL, SASL_NOMEM:
            // Our side is in trouble (saslauthd down, out of memory): the client may retry.
            return .temporaryFailure
        default:
            // Everything else — wrong password, unknown user, malformed or empty names — is the
            // client's failure, answered 535 and counted against the per-IP login limit. Codes
            // other than the plain "wrong credentials" ones are logged: a broken sasldb or a
            // missing mechanism plugin must not hide behind "authentication failed".
            if rc != SASL_BADAUTH && rc != SASL_NOUSER { logUnexpected(rc) }
            return .failure
        }
    }

    private func logUnexpected(_ rc: Int32) {
        let detail = sasl_errdetail(conn).map { String(cString: $0) } ?? String(cString: sasl_errstring(rc, nil, nil))
        Log.warning("SASL: \(detail) (code \(rc))")
    }

    /// The identity we use everywhere (logs, mailbox, sender check): lower-cased, with realm.
    private func canonical(_ user: String) -> String {
        let lower = user.lowercased()
        return lower.contains("@") ? lower : "\(lower)@\(defaultRealm)"
    }

    /// Creates or updates a user in the sasldb (for `apusctl user add`).
    public func setPassword(user: String, password: String, create: Bool) throws {
        let rc = sasl_setpass(conn, user, password, UInt32(password.utf8.count), nil, 0,
                              create ? UInt32(SASL_SET_CREATE) : 0)
        guard rc == SASL_OK else { throw SASLError.library("sasl_setpass", rc) }
    }

    /// Removes a user from the sasldb.
    public func deleteUser(_ user: String) throws {
        let rc = sasl_setpass(conn, user, nil, 0, nil, 0, UInt32(SASL_SET_DISABLE))
        guard rc == SASL_OK else { throw SASLError.library("sasl_setpass", rc) }
    }
}

/// Passes bytes to C as a pointer that is never nil (a NUL is appended past the counted length).
private func withCBytes(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>, UInt32) -> Int32) -> Int32 {
    var padded = bytes
    padded.append(0)
    return padded.withUnsafeBufferPointer { buffer in
        buffer.withMemoryRebound(to: CChar.self) { body($0.baseAddress!, UInt32(bytes.count)) }
    }
}
