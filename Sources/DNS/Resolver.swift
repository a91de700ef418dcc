// DNS lookups for delivery through libunbound: MX (RFC 5321 §5.1, null MX RFC 7505), A and AAAA.
// Forwarders and their ports come from the config (tests point them at a server on loopback);
// without any, /etc/resolv.conf is used. libunbound's blocking `ub_resolve` is thread-safe on a
// shared context, so lookups run through `Blocking.run`, off the cooperative pool.

import CApusShim
import CUnbound
import MailCore
import Net
import Glibc

public struct MXRecord: Sendable, Equatable {
    public var preference: Int
    public var exchange: String
}

public enum MXLookup: Sendable, Equatable {
    case records([MXRecord])
    /// The name exists but has no MX: deliver to its address records (RFC 5321 §5.1 implicit MX).
    case noRecords
    /// RFC 7505: the domain accepts no mail.
    case nullMX
    case nonexistentDomain
    case temporaryFailure(String)
}

public enum AddressLookup: Sendable, Equatable {
    case addresses([String])
    case nonexistent
    case temporaryFailure(String)
}

public enum ResolverError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String { switch self { case .setup(let s): return s } }
}

public final class Resolver: @unchecked Sendable {
    private let context: OpaquePointer

    /// `forwarders`: "ip" or "ip@port"; empty uses /etc/resolv.conf.
    public init(forwarders: [String]) throws {
        guard let ctx = ub_ctx_create() else { throw ResolverError.setup("ub_ctx_create failed") }
        context = ctx
        if forwarders.isEmpty {
            let rc = ub_ctx_resolvconf(ctx, nil)
            if rc != 0 { throw ResolverError.setup("reading /etc/resolv.conf: \(String(cString: ub_strerror(rc)))") }
        } else {
            // Test DNS servers live on loopback, which unbound refuses to query by default.
            _ = ub_ctx_set_option(ctx, "do-not-query-localhost:", "no")
            for server in forwarders {
                let rc = ub_ctx_set_fwd(ctx, server)
                if rc != 0 { throw ResolverError.setup("forwarder \(server): \(String(cString: ub_strerror(rc)))") }
            }
        }
    }

    deinit { ub_ctx_delete(context) }

    private struct Answer: Sendable {
        var rcode: Int32
        var nxdomain: Bool
        var records: [[UInt8]]
    }

    private func query(_ name: String, type: Int32) async -> Result<Answer, ResolverError> {
        let ctx = UnsafeSendable(context)
        return await Blocking.dns.run {
            var result: UnsafeMutablePointer<ub_result>?
            let rc = ub_resolve(ctx.value, name, type, 1, &result)
            guard rc == 0, let result else {
                return .failure(.setup(String(cString: ub_strerror(rc))))
            }
            defer { ub_resolve_free(result) }
            var records: [[UInt8]] = []
            if result.pointee.havedata != 0, let data = result.pointee.data, let lengths = result.pointee.len {
                var i = 0
                while let item = data[i] {
                    let length = Int(lengths[i])
                    records.append(Array(UnsafeRawBufferPointer(start: item, count: length)))
                    i += 1
                }
            }
            return .success(Answer(rcode: result.pointee.rcode, nxdomain: result.pointee.nxdomain != 0, records: records))
        }
    }

    public func lookupMX(_ domain: String) async -> MXLookup {
        switch await query(domain, type: 15) {
        case .failure(let e): return .temporaryFailure(e.description)
        case .success(let answer):
            if answer.nxdomain { return .nonexistentDomain }
            guard answer.rcode == 0 else { return .temporaryFailure("DNS rcode \(answer.rcode) for \(domain) MX") }
            var records: [MXRecord] = []
            for rdata in answer.records where rdata.count >= 3 {
                let preference = Int(rdata[0]) << 8 | Int(rdata[1])
                guard let name = Resolver.decodeName(rdata[2...]) else { continue }
                records.append(MXRecord(preference: preference, exchange: name))
            }
            if records.isEmpty { return .noRecords }
            // RFC 7505 §3: a single MX with the root as exchange means "no mail here".
            if records.contains(where: { $0.exchange.isEmpty }) { return .nullMX }
            return .records(records)
        }
    }

    /// IPv4 and IPv6 addresses of a host, IPv6 first when present (RFC 6724 preference is the
    /// caller's business; we keep the order stable).
    public func lookupAddresses(_ host: String) async -> AddressLookup {
        async let v4 = query(host, type: 1)
        async let v6 = query(host, type: 28)
        let (a, aaaa) = await (v4, v6)
        var addresses: [String] = []
        var nonexistent = true
        var failure: String?
        for (result, family) in [(a, AF_INET), (aaaa, AF_INET6)] {
            switch result {
            case .failure(let e): failure = e.description; nonexistent = false
            case .success(let answer):
                if !answer.nxdomain { nonexistent = false }
                if answer.rcode != 0 && !answer.nxdomain { failure = "DNS rcode \(answer.rcode) for \(host)" }
                for rdata in answer.records {
                    if let text = Resolver.formatAddress(rdata, family: family) { addresses.append(text) }
                }
            }
        }
        if !addresses.isEmpty { return .addresses(addresses) }
        if let failure { return .temporaryFailure(failure) }
        return nonexistent ? .nonexistent : .addresses([])
    }

    /// A domain name in uncompressed wire format → "mx.example.net" (root → "").
    static func decodeName(_ bytes: ArraySlice<UInt8>) -> String? {
        var labels: [String] = []
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let length = Int(bytes[i])
            if length == 0 { return labels.joined(separator: ".").lowercased() }
            guard length < 64, i + 1 + length <= bytes.endIndex else { return nil }
            labels.append(String(decoding: bytes[(i + 1)..<(i + 1 + length)], as: UTF8.self))
            i += 1 + length
        }
        return nil
    }

    static func formatAddress(_ rdata: [UInt8], family: Int32) -> String? {
        guard (family == AF_INET && rdata.count == 4) || (family == AF_INET6 && rdata.count == 16) else { return nil }
        var buffer = [CChar](repeating: 0, count: 64)
        var raw = rdata
        _ = inet_ntop(family, &raw, &buffer, 64)
        return String(nulTerminated: buffer)
    }
}

/// Moves a pointer into a @Sendable closure where we guarantee exclusive, thread-safe use.
struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
