// Mail addresses as SMTP carries them: Mailbox, ReversePath and ForwardPath (RFC 5321 §4.1.2).
// Parsing is strict enough to refuse what would confuse the next hop (no CR/LF/NUL, no source
// routes kept, length limits of §4.5.3.1) and lenient where real clients differ harmlessly
// (a space after "MAIL FROM:", quoted local parts).

public struct Mailbox: Sendable, Hashable, CustomStringConvertible {
    public let localPart: String
    /// The domain, lowercased (domains are case-insensitive; local parts are not, §2.4).
    public let domain: String

    public init(localPart: String, domain: String) {
        self.localPart = localPart
        self.domain = domain.lowercased()
    }

    public var description: String { "\(localPart)@\(domain)" }

    /// Parses "local@domain" (no angle brackets). Returns nil when it is not a valid mailbox.
    public init?(parsing text: String) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 254 else { return nil }
        for b in bytes where b < 0x21 || b == 0x7F {
            // Spaces are allowed only inside a quoted local part.
            if b == 0x20 && text.first == "\"" { continue }
            return nil
        }
        guard let at = bytes.lastIndex(of: UInt8(ascii: "@")) else { return nil }
        let local = Array(bytes[..<at])
        let domain = Array(bytes[(at + 1)...])
        guard !local.isEmpty, local.count <= 64, Mailbox.isValidDomain(domain) else { return nil }
        if local.first == UInt8(ascii: "\"") {
            guard local.count >= 2, local.last == UInt8(ascii: "\"") else { return nil }
        } else {
            let specials: Set<UInt8> = Set("()<>[]\\,;:\"@ ".utf8)
            if local.contains(where: { specials.contains($0) }) { return nil }
            if local.first == UInt8(ascii: ".") || local.last == UInt8(ascii: ".") { return nil }
        }
        self.init(localPart: String(decoding: local, as: UTF8.self),
                  domain: String(decoding: domain, as: UTF8.self))
    }

    /// A domain name or an address literal such as [127.0.0.1] (§4.1.3).
    static func isValidDomain(_ d: [UInt8]) -> Bool {
        guard !d.isEmpty, d.count <= 255 else { return false }
        if d.first == UInt8(ascii: "[") { return d.last == UInt8(ascii: "]") && d.count > 2 }
        var labelLength = 0
        for b in d {
            if b == UInt8(ascii: ".") {
                if labelLength == 0 { return false }
                labelLength = 0
                continue
            }
            let ok = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                || b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b >= 0x80
            if !ok { return false }
            labelLength += 1
            if labelLength > 63 { return false }
        }
        return labelLength > 0 || d.count > 1
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
