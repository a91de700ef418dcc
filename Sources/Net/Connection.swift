// One TCP connection as a session task sees it: buffered line reads with a timeout, buffered
// writes flushed when the client has nothing more pipelined, and TLS switched on in place
// (STARTTLS/STLS) or from the first byte (implicit TLS).
//
// Not Sendable: a connection belongs to the one task that runs its session.

import CApusShim
import Glibc
import MailCore

public final class Connection {
    public let fd: Int32
    public let peer: SocketAddress
    /// Seconds a read may wait for the peer (RFC 5321 §4.5.3.2 suggests 5 minutes for commands).
    public var readTimeout: Int
    public private(set) var input = LineBuffer()
    private var output: [UInt8] = []
    private var tls: TLSEngine?
    private var closed = false

    public init(fd: Int32, peer: SocketAddress, readTimeout: Int = 300) {
        self.fd = fd
        self.peer = peer
        self.readTimeout = readTimeout
    }

    deinit { close() }

    public var isTLS: Bool { tls != nil }
    public var tlsSummary: String? { tls?.summary }
    public var hasBufferedInput: Bool { !input.isEmpty }

    public func close() {
        guard !closed else { return }
        closed = true
        Reactor.shared.deregister(fd)
        Glibc.close(fd)
    }

    // MARK: reading

    /// Reads whatever the peer sends next into `input` (decrypted if TLS is on), waiting at
    /// most until `deadline` (monotonic ms).
    public func fill(deadline: Int64) async throws {
        var plaintext: [UInt8] = []
        while plaintext.isEmpty {
            let raw = try await readRaw(deadline: deadline)
            guard let tls else {
                input.append(raw)
                return
            }
            raw.withUnsafeBytes { tls.feed($0) }
            let open = try tls.readPlaintext(into: &plaintext)
            try await sendRaw(tls.takeOutput())
            if !open && plaintext.isEmpty { throw NetError.closed }
        }
        input.append(plaintext)
    }

    public var timeoutFromNow: Int64 { monotonicMilliseconds() + Int64(readTimeout) * 1000 }

    /// The next line (CR LF or LF stripped), or `.tooLong`. Never `.needMore`. The whole line
    /// must arrive within the timeout: a byte now and then does not keep a connection open
    /// (slowloris).
    public func readLine(limit: Int, deadline: Int64? = nil) async throws -> LineResult {
        let deadline = deadline ?? timeoutFromNow
        while true {
            let result = input.nextLine(limit: limit)
            if result != .needMore { return result }
            try await fill(deadline: deadline)
        }
    }

    /// Data must keep coming: the timeout restarts only after this many bytes.
    static let dataProgressBytes = 4096

    /// Reads SMTP DATA through `framer` until its terminator; bytes after it stay buffered.
    /// The timeout restarts each time another `dataProgressBytes` have arrived, so a large
    /// message on a slow link is fine and a trickle is not.
    public func readData(into framer: inout DataFramer) async throws -> DataFramer.Outcome {
        var deadline = timeoutFromNow
        var progressMark = framer.octetsSeen
        while true {
            let pending = input.takeAll()
            if let (outcome, consumed) = framer.feed(pending) {
                input.append(pending.dropFirst(consumed))
                return outcome
            }
            if framer.octetsSeen - progressMark >= Connection.dataProgressBytes {
                progressMark = framer.octetsSeen
                deadline = timeoutFromNow
            }
            try await fill(deadline: deadline)
        }
    }

    private func readRaw(deadline: Int64) async throws -> [UInt8] {
        while true {
            let n = readOnce()
            switch n {
            case .data(let bytes): return bytes
            case .endOfFile: throw NetError.closed
            case .wouldBlock:
                // Checked here too: a peer that sends a byte just before each reactor tick would
                // otherwise always be woken by data, never by the deadline.
                if monotonicMilliseconds() >= deadline { throw NetError.timedOut }
                try await Reactor.shared.wait(fd, for: .read, deadline: deadline)
            case .failed(let code): throw NetError.system("read", code)
            }
        }
    }

    private enum ReadAttempt {
        case data([UInt8])
        case endOfFile
        case wouldBlock
        case failed(Int32)
    }

    /// One read(2) into a stack buffer: an idle connection holds no read buffer at all.
    private func readOnce() -> ReadAttempt {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 16_384) { buffer in
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n > 0 { return .data(Array(UnsafeBufferPointer(rebasing: buffer[0..<n]))) }
            if n == 0 { return .endOfFile }
            let e = errno
            return e == EAGAIN || e == EWOULDBLOCK || e == EINTR ? .wouldBlock : .failed(e)
        }
    }

    // MARK: writing

    public func queue(_ bytes: [UInt8]) { output.append(contentsOf: bytes) }
    public func queue(line: String) {
        output.append(contentsOf: Array(line.utf8))
        output.append(13); output.append(10)
    }

    public func flush() async throws {
        guard !output.isEmpty else { return }
        let pending = output
        output = []
        if let tls {
            try pending.withUnsafeBytes { try tls.writePlaintext($0) }
            try await sendRaw(tls.takeOutput())
        } else {
            try await sendRaw(pending)
        }
    }

    private func sendRaw(_ bytes: [UInt8]) async throws {
        var offset = 0
        // An inactivity timeout: a slow reader that keeps taking data is not cut off mid-message.
        var deadline = timeoutFromNow
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                offset += n
                deadline = timeoutFromNow
                continue
            }
            let e = errno
            if n < 0 && (e == EAGAIN || e == EWOULDBLOCK || e == EINTR) {
                try await Reactor.shared.wait(fd, for: .write, deadline: deadline)
                continue
            }
            throw n == 0 ? NetError.closed : NetError.system("send", e)
        }
    }

    // MARK: TLS

    /// Runs a TLS handshake as server or client. Whatever the peer sent in plaintext before the
    /// handshake is discarded: it must never be read as if it came over TLS (CVE-2011-0411).
    public func startTLS(context: TLSContext, serverName: String? = nil) async throws {
        try await flush()
        input.discardAll()
        let engine = try TLSEngine(context: context, serverName: serverName)
        let deadline = timeoutFromNow  // for the whole handshake
        while true {
            let progress: TLSEngine.Progress
            do {
                progress = try engine.handshake()
            } catch {
                // Send the fatal alert OpenSSL has written (RFC 8446 §6), then give up.
                try? await sendRaw(engine.takeOutput())
                throw error
            }
            try await sendRaw(engine.takeOutput())
            if progress == .done { break }
            let raw = try await readRaw(deadline: deadline)
            raw.withUnsafeBytes { engine.feed($0) }
        }
        tls = engine
        // Application data that arrived with the last handshake flight (e.g. a pipelined EHLO).
        var early: [UInt8] = []
        _ = try engine.readPlaintext(into: &early)
        input.append(early)
    }

    /// Sends a TLS close_notify if TLS is on (best effort), then closes.
    public func shutdown() async {
        if let tls {
            tls.shutdown()
            try? await sendRaw(tls.takeOutput())
        }
        close()
    }
}
