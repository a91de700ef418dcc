// Non-blocking TCP sockets: listening, accepting, connecting, raw reads and writes. Each syscall
// is wrapped once, here, so the rest of Apus never sees errno.

import CApusShim
import Glibc

/// An IPv4 or IPv6 socket address with its printable form.
public struct SocketAddress: Sendable, CustomStringConvertible {
    public var storage: sockaddr_storage
    public var length: socklen_t

    /// Parses a numeric address ("127.0.0.1", "::1") and a port.
    public init?(ip: String, port: Int) {
        storage = sockaddr_storage()
        var ok = false
        var len: socklen_t = 0
        withUnsafeMutableBytes(of: &storage) { raw in
            if ip.contains(":") {
                var a = sockaddr_in6()
                a.sin6_family = sa_family_t(AF_INET6)
                a.sin6_port = in_port_t(UInt16(port).bigEndian)
                ok = inet_pton(AF_INET6, ip, &a.sin6_addr) == 1
                raw.storeBytes(of: a, as: sockaddr_in6.self)
                len = socklen_t(MemoryLayout<sockaddr_in6>.size)
            } else {
                var a = sockaddr_in()
                a.sin_family = sa_family_t(AF_INET)
                a.sin_port = in_port_t(UInt16(port).bigEndian)
                ok = inet_pton(AF_INET, ip, &a.sin_addr) == 1
                raw.storeBytes(of: a, as: sockaddr_in.self)
                len = socklen_t(MemoryLayout<sockaddr_in>.size)
            }
        }
        guard ok else { return nil }
        length = len
    }

    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    public var family: Int32 { Int32(storage.ss_family) }

    public var ip: String {
        var buffer = [CChar](repeating: 0, count: 64)
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                var a = raw.load(as: sockaddr_in6.self).sin6_addr
                _ = inet_ntop(AF_INET6, &a, &buffer, 64)
            } else {
                var a = raw.load(as: sockaddr_in.self).sin_addr
                _ = inet_ntop(AF_INET, &a, &buffer, 64)
            }
        }
        return String(nulTerminated: buffer)
    }

    public var port: Int {
        withUnsafeBytes(of: storage) { raw in
            family == AF_INET6 ? Int(UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port))
                : Int(UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port))
        }
    }

    /// IPv4 address as a 32-bit number (host order), for relay-network checks.
    public var ipv4: UInt32? {
        guard family == AF_INET else { return nil }
        return withUnsafeBytes(of: storage) { UInt32(bigEndian: $0.load(as: sockaddr_in.self).sin_addr.s_addr) }
    }

    public var ipv6Bytes: [UInt8]? {
        guard family == AF_INET6 else { return nil }
        return withUnsafeBytes(of: storage) { raw in
            var a = raw.load(as: sockaddr_in6.self).sin6_addr
            return withUnsafeBytes(of: &a) { Array($0) }
        }
    }

    public var description: String { family == AF_INET6 ? "[\(ip)]:\(port)" : "\(ip):\(port)" }
}

private func setNonBlocking(_ fd: Int32) {
    let flags = fcntl(fd, F_GETFL, 0)
    _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
}

/// A listening socket; `accept()` suspends until a client arrives.
public final class Listener: @unchecked Sendable {
    public let fd: Int32
    public let address: SocketAddress

    public init(ip: String, port: Int, backlog: Int32 = 1024) throws {
        guard var address = SocketAddress(ip: ip, port: port) else {
            throw NetError.resolve("not a numeric IP address: \(ip)")
        }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NetError.system("socket", errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if address.family == AF_INET6 {
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let rc = withUnsafePointer(to: &address.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, address.length) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw NetError.system("bind \(address)", e)
        }
        guard listen(fd, backlog) == 0 else {
            let e = errno
            close(fd)
            throw NetError.system("listen", e)
        }
        setNonBlocking(fd)
        // Read back the port the kernel chose when asked for port 0.
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        self.address = SocketAddress(storage: storage, length: length)
    }

    /// The next client: its fd (non-blocking) and address.
    public func accept() async throws -> (Int32, SocketAddress) {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let client = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { apus_accept4(fd, $0, &length) }
            }
            if client >= 0 {
                var one: Int32 = 1
                setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return (client, SocketAddress(storage: storage, length: length))
            }
            let e = errno
            switch e {
            case EAGAIN, EWOULDBLOCK, EINTR, ECONNABORTED:
                try await Reactor.shared.wait(fd, for: .read, deadline: nil)
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                // Out of descriptors: back off instead of spinning; the backlog holds clients.
                try await Task.sleep(nanoseconds: 100_000_000)
            default:
                throw NetError.system("accept", e)
            }
        }
    }
}

/// Connects to `ip:port` without blocking; throws on refusal or at the deadline.
public func connectTCP(ip: String, port: Int, timeoutSeconds: Int, localIP: String? = nil) async throws -> (Int32, SocketAddress) {
    guard var address = SocketAddress(ip: ip, port: port) else { throw NetError.resolve("bad address \(ip)") }
    let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    guard fd >= 0 else { throw NetError.system("socket", errno) }
    let rc = withUnsafePointer(to: &address.storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, address.length) }
    }
    if rc != 0 {
        let e = errno
        guard e == EINPROGRESS else { close(fd); throw NetError.system("connect \(address)", e) }
        do {
            try await Reactor.shared.wait(fd, for: .write, deadline: monotonicMilliseconds() + Int64(timeoutSeconds) * 1000)
        } catch {
            Reactor.shared.deregister(fd)
            close(fd)
            throw error
        }
        var soError: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
        if soError != 0 {
            Reactor.shared.deregister(fd)
            close(fd)
            throw NetError.system("connect \(address)", soError)
        }
    }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    return (fd, address)
}
