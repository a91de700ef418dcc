// `apusctl user …`: mailbox users live in Apus's sasldb (their passwords) and under
// mail_directory (their Maildirs). Adding a user creates both; the sasldb is readable by the
// service only.

import Auth
import Config
import Glibc
import MailCore
import Mailbox
import Spool

public enum UserAdmin {
    public enum Failure: Error, CustomStringConvertible {
        case message(String)
        public var description: String { switch self { case .message(let m): return m } }
    }

    private static func setUp(_ config: ApusConfig) throws -> SASLServerSession {
        umask(0o077)
        try SASL.initialize(sasldbPath: config.sasldbPath)
        return try SASLServerSession(service: "smtp", hostname: config.hostname, defaultRealm: config.localDomains[0])
    }

    private static func mailbox(_ address: String, _ config: ApusConfig) throws -> Mailbox {
        guard let mailbox = Mailbox(parsing: address.lowercased()) else {
            throw Failure.message("'\(address)' is not an address like user@domain")
        }
        guard config.localDomains.contains(mailbox.domain) else {
            throw Failure.message("\(mailbox.domain) is not in local_domains (\(config.localDomains.joined(separator: ", ")))")
        }
        guard MaildirStore(root: config.mailDirectory).path(for: mailbox) != nil else {
            throw Failure.message("'\(address)' cannot be a mailbox name")
        }
        return mailbox
    }

    /// Creates the user (or sets a new password when it exists) and its Maildir.
    public static func add(address: String, password: String, config: ApusConfig) throws {
        let mailbox = try mailbox(address, config)
        guard !password.isEmpty else { throw Failure.message("empty password") }
        let sasl = try setUp(config)
        try sasl.setPassword(user: mailbox.description, password: password, create: true)
        try MaildirStore(root: config.mailDirectory).create(mailbox)
    }

    /// Removes the login and retires the Maildir: it is renamed (not deleted — the mail is
    /// kept) so the address stops accepting mail. Returns where the mail now is.
    @discardableResult
    public static func delete(address: String, config: ApusConfig) throws -> String? {
        let mailbox = try mailbox(address, config)
        let sasl = try setUp(config)
        try sasl.deleteUser(mailbox.description)
        guard let path = MaildirStore(root: config.mailDirectory).path(for: mailbox), FileIO.isDirectory(path) else {
            return nil
        }
        let retired = path.replacingLastComponent(prefix: ".deleted-", suffix: "-\(time(nil))")
        guard rename(path, retired) == 0 else {
            throw Failure.message("login removed, but the Maildir \(path) could not be retired: \(String(cString: strerror(errno)))")
        }
        return retired
    }

    /// 20 characters from a 56-letter alphabet without look-alikes: about 116 bits.
    public static func randomPassword() -> String {
        let alphabet = Array("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        return String((0..<20).map { _ in alphabet.randomElement()! })
    }
}

extension String {
    /// "a/b/c" → "a/b/<prefix>c<suffix>". A leading dot keeps the result from ever being taken
    /// for a mailbox (mailbox names cannot start with a dot).
    func replacingLastComponent(prefix: String, suffix: String) -> String {
        guard let slash = lastIndex(of: "/") else { return prefix + self + suffix }
        return String(self[...slash]) + prefix + String(self[index(after: slash)...]) + suffix
    }
}
