// TLS over OpenSSL memory BIOs: bytes in, bytes out, no socket. The same engine serves STARTTLS
// (RFC 3207), STLS (RFC 2595), implicit TLS (RFC 8314) and outbound SMTP, and its handshake can
// be driven in a unit test without a network.
//
// OpenSSL's error queue is per thread and a Swift task may change threads at every `await`:
// each method here clears the queue first and reads it before returning, with no suspension
// in between.

import CApusShim
import COpenSSL
import MailCore

/// An SSL_CTX: certificates, protocol floor, ciphers. Shared by all connections of a listener.
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer
    public let isServer: Bool
    public let verifyPeer: Bool

    /// Mozilla "intermediate" TLS 1.2 cipher list; TLS 1.3 suites are OpenSSL's defaults.
    static let intermediateCiphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        + "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
        + "ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
        + "DHE-RSA-CHACHA20-POLY1305"

    /// A server context from a PEM certificate chain and key.
    public init(serverCertificate certificatePath: String, key keyPath: String) throws {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw NetError.tls(TLSContext.lastError()) }
        context = ctx
        isServer = true
        verifyPeer = false
        _ = apus_ssl_ctx_set_min_proto(ctx, apus_tls1_2_version())
        _ = apus_ssl_ctx_set_mode(ctx, apus_ssl_mode_release_buffers())
        _ = SSL_CTX_set_options(ctx, UInt64(apus_ssl_op_no_renegotiation()))
        _ = apus_ssl_ctx_set_session_cache_mode(ctx, apus_ssl_sess_cache_server())
        guard SSL_CTX_set_cipher_list(ctx, TLSContext.intermediateCiphers) == 1,
              SSL_CTX_use_certificate_chain_file(ctx, certificatePath) == 1
        else { throw NetError.tls("\(certificatePath): \(TLSContext.lastError())") }
        guard SSL_CTX_use_PrivateKey_file(ctx, keyPath, SSL_FILETYPE_PEM) == 1,
              SSL_CTX_check_private_key(ctx) == 1
        else { throw NetError.tls("\(keyPath): \(TLSContext.lastError())") }
        let sessionContext = Array("apus".utf8)
        _ = SSL_CTX_set_session_id_context(ctx, sessionContext, UInt32(sessionContext.count))
    }

    /// A client context; `verify` checks the peer against the system CA store.
    public init(clientVerifying verify: Bool) throws {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw NetError.tls(TLSContext.lastError()) }
        context = ctx
        isServer = false
        verifyPeer = verify
        _ = apus_ssl_ctx_set_min_proto(ctx, apus_tls1_2_version())
        _ = apus_ssl_ctx_set_mode(ctx, apus_ssl_mode_release_buffers())
        if verify {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            _ = SSL_CTX_set_default_verify_paths(ctx)
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        }
    }

    deinit { SSL_CTX_free(context) }

    static func lastError() -> String {
        var text = ""
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            text += (text.isEmpty ? "" : "; ") + String(nulTerminated: buffer)
        }
        return text.isEmpty ? "unknown error" : text
    }
}

/// One TLS session over memory BIOs.
public final class TLSEngine {
    public enum Progress: Equatable {
        /// Feed more bytes from the peer, after sending `takeOutput()`.
        case wantRead
        case done
    }

    private let ssl: OpaquePointer
    private let incoming: OpaquePointer  // BIO the peer's bytes are written into
    private let outgoing: OpaquePointer  // BIO our bytes are read from

    public init(context: TLSContext, serverName: String? = nil) throws {
        ERR_clear_error()
        guard let ssl = SSL_new(context.context),
              let rbio = BIO_new(BIO_s_mem()), let wbio = BIO_new(BIO_s_mem())
        else { throw NetError.tls(TLSContext.lastError()) }
        self.ssl = ssl
        incoming = rbio
        outgoing = wbio
        SSL_set_bio(ssl, rbio, wbio)  // ssl now owns both BIOs
        if context.isServer {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName {
                _ = apus_ssl_set_tlsext_host_name(ssl, serverName)
                if context.verifyPeer { _ = SSL_set1_host(ssl, serverName) }
            }
        }
    }

    deinit { SSL_free(ssl) }

    /// Bytes received from the peer.
    public func feed(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        _ = BIO_write(incoming, bytes.baseAddress, Int32(bytes.count))
    }

    /// Bytes to send to the peer (handshake records, encrypted data, alerts).
    public func takeOutput() -> [UInt8] {
        let pending = Int(BIO_ctrl_pending(outgoing))
        guard pending > 0 else { return [] }
        var out = [UInt8](repeating: 0, count: pending)
        let n = out.withUnsafeMutableBytes { BIO_read(outgoing, $0.baseAddress, Int32(pending)) }
        if n < pending { out.removeLast(pending - Int(max(n, 0))) }
        return out
    }

    public func handshake() throws -> Progress {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 { return .done }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantRead
        default: throw NetError.tls(TLSContext.lastError())
        }
    }

    /// Decrypts what can be decrypted into `buffer`. Returns false when the peer closed TLS.
    public func readPlaintext(into buffer: inout [UInt8]) throws -> Bool {
        while true {
            ERR_clear_error()
            let n = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16_384) { chunk in
                let n = SSL_read(ssl, chunk.baseAddress, Int32(chunk.count))
                if n > 0 { buffer.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[0..<Int(n)])) }
                return n
            }
            if n > 0 { continue }
            switch SSL_get_error(ssl, n) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return true
            case SSL_ERROR_ZERO_RETURN: return false
            default: throw NetError.tls(TLSContext.lastError())
            }
        }
    }

    /// Encrypts `bytes`; the records are then in `takeOutput()`.
    public func writePlaintext(_ bytes: UnsafeRawBufferPointer) throws {
        guard !bytes.isEmpty else { return }
        ERR_clear_error()
        let n = SSL_write(ssl, bytes.baseAddress, Int32(bytes.count))
        if n <= 0 { throw NetError.tls(TLSContext.lastError()) }
    }

    public func shutdown() {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)", Postfix style, for the log.
    public var summary: String {
        let version = String(cString: SSL_get_version(ssl))
        let cipher = SSL_get_current_cipher(ssl)
        let name = cipher.map { String(cString: SSL_CIPHER_get_name($0)) } ?? "none"
        var algBits: Int32 = 0
        let bits = cipher.map { SSL_CIPHER_get_bits($0, &algBits) } ?? 0
        return "\(version) with cipher \(name) (\(bits)/\(algBits) bits)"
    }
}
