// `apusctl user …`: mailbox users live in Apus's sasldb (their passwords) and under
// mail_directory (their Maildirs). Adding a user creates both; the sasldb is readable by the
// service only.

import Auth
import Config
import Glibc
import MailCore
import Mailbox

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

    public static func delete(address: String, config: ApusConfig) throws {
        let mailbox = try mailbox(address, config)
        let sasl = try setUp(config)
        try sasl.deleteUser(mailbox.description)
    }

    /// 20 characters from a 56-letter alphabet without look-alikes: about 116 bits.
    public static func randomPassword() -> String {
        let alphabet = Array("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        return String((0..<20).map { _ in alphabet.randomElement()! })
    }
}
