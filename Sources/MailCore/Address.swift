// Mail addresses as SMTP carries them: Mailbox, ReversePath and ForwardPath (RFC 5321 §4.1.2).
// Parsing is strict enough to refuse what would confuse the next hop (no CR/LF/NUL, no source
// routes kept, length limits of §4.5.3.1) and lenient where real clients differ harmlessly
// (a space after "MAIL FROM:", quoted local parts).

import Glibc

public struct Mailbox: Sendable, Hashable, CustomStringConvertible {
    public let localPart: String
    /// The domain, lowercased (domains are case-insensitive; local parts are not, §2.4).
    public let domain: String

    public init(localPart: String, domain: String) {
        self.localPart = localPart
        self.domain = domain.lowercased()
    }

    public var description: String { "\(localPart)@\(domain)" }

    /// Parses "local@domain" (no angle brackets, RFC 5321 §4.1.2 Mailbox). ASCII only: Apus
    /// does not offer SMTPUTF8 (RFC 6531). Returns nil when it is not a valid mailbox.
    public init?(parsing text: String) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 254, bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return nil }
        let local: ArraySlice<UInt8>
        var rest: ArraySlice<UInt8>
        if bytes[0] == UInt8(ascii: "\"") {
            // Quoted-string: qtext or backslash-escaped pairs up to the closing quote (§4.1.2).
            var i = 1
            var closed = false
            while i < bytes.count {
                if bytes[i] == UInt8(ascii: "\\") { i += 2; continue }
                if bytes[i] == UInt8(ascii: "\"") { closed = true; break }
                i += 1
            }
            guard closed, i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "@") else { return nil }
            local = bytes[0...i]
            rest = bytes[(i + 2)...]
        } else {
            guard let at = bytes.lastIndex(of: UInt8(ascii: "@")) else { return nil }
            local = bytes[..<at]
            rest = bytes[(at + 1)...]
            guard Mailbox.isDotAtom(local) else { return nil }
        }
        guard local.count <= 64, local.count >= 1, Mailbox.isValidDomain(rest) else { return nil }
        self.init(localPart: String(decoding: local, as: UTF8.self),
                  domain: String(decoding: rest, as: UTF8.self))
    }

    /// Dot-string (§4.1.2): atoms of atext joined by single dots.
    static func isDotAtom(_ s: ArraySlice<UInt8>) -> Bool {
        guard let first = s.first, let last = s.last, first != UInt8(ascii: "."), last != UInt8(ascii: ".") else { return false }
        let specials = Set("()<>[]\\,;:\"@ ".utf8)
        var previousDot = false
        for b in s {
            if specials.contains(b) || b <= 0x20 { return false }
            let dot = b == UInt8(ascii: ".")
            if dot && previousDot { return false }
            previousDot = dot
        }
        return true
    }

    /// A domain name (LDH labels, none starting or ending with '-', no trailing dot) or an
    /// address literal [IPv4] / [IPv6:…] (§4.1.3).
    static func isValidDomain(_ d: ArraySlice<UInt8>) -> Bool {
        guard !d.isEmpty, d.count <= 255 else { return false }
        if d.first == UInt8(ascii: "[") {
            guard d.last == UInt8(ascii: "]"), d.count > 2 else { return false }
            let inner = String(decoding: d.dropFirst().dropLast(), as: UTF8.self)
            if inner.lowercased().hasPrefix("ipv6:") {
                var a = in6_addr()
                return inet_pton(AF_INET6, String(inner.dropFirst(5)), &a) == 1
            }
            var a = in_addr()
            return inet_pton(AF_INET, inner, &a) == 1
        }
        for label in d.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.count <= 63,
                  label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-") else { return false }
            for b in label {
                let ok = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                    || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
                if !ok { return false }
            }
        }
        return true
    }
}

/// MAIL FROM's argument: a mailbox, or the null path <> used by bounces (§4.5.5).
public enum ReversePath: Sendable, Hashable, CustomStringConvertible {
    case null
    case mailbox(Mailbox)

    public var description: String {
        switch self {
        case .null: return ""
        case .mailbox(let m): return m.description
        }
    }
}

/// Splits a MAIL/RCPT argument "<path> PARAM=VALUE ..." into the path text and its parameters.
/// Returns nil when angle brackets are missing or unbalanced.
public struct PathArgument: Sendable, Equatable {
    public var path: String
    public var parameters: [(key: String, value: String?)]

    public static func == (a: PathArgument, b: PathArgument) -> Bool {
        a.path == b.path && a.parameters.count == b.parameters.count
            && zip(a.parameters, b.parameters).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    public static func parse(_ text: Substring) -> PathArgument? {
        var rest = text.drop(while: { $0 == " " })
        guard rest.first == "<", let close = rest.firstIndex(of: ">") else { return nil }
        var path = rest[rest.index(after: rest.startIndex)..<close]
        // Source routes "@a,@b:user@c" are obsolete; RFC 5321 §3.3 says to ignore them.
        if path.first == "@", let colon = path.firstIndex(of: ":") {
            path = path[path.index(after: colon)...]
        }
        rest = rest[rest.index(after: close)...]
        if let next = rest.first, next != " " { return nil }
        var parameters: [(String, String?)] = []
        for word in rest.split(separator: " ") {
            if let eq = word.firstIndex(of: "=") {
                parameters.append((word[..<eq].uppercased(), String(word[word.index(after: eq)...])))
            } else {
                parameters.append((word.uppercased(), nil))
            }
        }
        return PathArgument(path: String(path), parameters: parameters)
    }
}
