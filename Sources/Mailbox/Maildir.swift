// Maildir storage (the layout of D. J. Bernstein's maildir(5), as Dovecot and Postfix use it):
// <mail_directory>/<domain>/<localpart>/{tmp,new,cur}.
//
// Delivery writes to tmp/, syncs, and links into new/ under a name derived from the queue id and
// recipient index, so a delivery repeated after a crash finds the name taken and adds no
// duplicate. POP3 moves new/ to cur/ when it opens a maildrop and reads from cur/.

import Glibc
import MailCore
import Spool

public struct MaildirMessage: Sendable, Equatable {
    /// File name in cur/ (the unique part before ":" is the POP3 UIDL).
    public var name: String
    public var size: Int
    public var uniqueID: String { String(name.split(separator: ":", maxSplits: 1).first ?? Substring(name)) }
}

public final class MaildirStore: Sendable {
    public let root: String

    public init(root: String) { self.root = root }

    /// The Maildir of a local mailbox, or nil when the local part could escape the tree
    /// ("/", leading ".", NUL) — such an address simply has no mailbox.
    public func path(for mailbox: Mailbox) -> String? {
        let local = mailbox.localPart.lowercased()
        let domain = mailbox.domain
        for part in [local, domain] {
            if part.isEmpty || part.hasPrefix(".") || part.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 < 0x20 }) {
                return nil
            }
        }
        return "\(root)/\(domain)/\(local)"
    }

    /// The mail directory itself is there (a missing or unmounted store must not look like
    /// "no such user" and bounce mail).
    public var isAvailable: Bool { FileIO.isDirectory(root) }

    public func exists(_ mailbox: Mailbox) -> Bool {
        guard let path = path(for: mailbox) else { return false }
        return FileIO.isDirectory(path + "/new")
    }

    public func create(_ mailbox: Mailbox) throws {
        guard let path = path(for: mailbox) else { throw IOError(operation: "mailbox", path: mailbox.description, code: EINVAL) }
        for sub in ["tmp", "new", "cur"] { try FileIO.makeDirectory(path + "/" + sub) }
    }

    /// Delivers `message` durably. Returns false if this delivery (same `uniqueName`) had
    /// already happened — the idempotence that crash recovery relies on.
    @discardableResult
    public func deliver(_ message: [UInt8], to mailbox: Mailbox, uniqueName: String) throws -> Bool {
        guard let path = path(for: mailbox), FileIO.isDirectory(path + "/new") else {
            throw IOError(operation: "deliver", path: mailbox.description, code: ENOENT)
        }
        let final = "\(path)/new/\(uniqueName)"
        if FileIO.exists(final) || FileIO.exists("\(path)/cur/\(uniqueName):2,") { return false }
        let temporary = "\(path)/tmp/\(uniqueName)"
        unlink(temporary)
        try FileIO.writeNewFileSynced(temporary, parts: [message])
        defer { unlink(temporary) }
        if link(temporary, final) != 0 {
            if errno == EEXIST { return false }
            throw IOError(operation: "link", path: final, code: errno)
        }
        try FileIO.syncDirectory(path + "/new")
        return true
    }

    // MARK: reading (POP3)

    /// Takes the maildrop lock (RFC 1939 §8: exclusive access while a session is open).
    /// Returns the lock fd, or nil when another session holds it.
    public func lock(_ mailbox: Mailbox) -> Int32? {
        guard let path = path(for: mailbox), FileIO.isDirectory(path) else { return nil }
        let fd = open(path + "/.apus-pop3.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            return nil
        }
        return fd
    }

    public func unlock(_ fd: Int32) { close(fd) }

    /// Moves new mail to cur/ (as Dovecot does when a POP3 session opens) and lists cur/ oldest
    /// first.
    public func list(_ mailbox: Mailbox) throws -> [MaildirMessage] {
        guard let path = path(for: mailbox) else { return [] }
        for name in try FileIO.list(path + "/new") where !name.hasPrefix(".") {
            _ = Glibc.rename("\(path)/new/\(name)", "\(path)/cur/\(name):2,")
        }
        var messages: [MaildirMessage] = []
        for name in try FileIO.list(path + "/cur") where !name.hasPrefix(".") {
            if let size = FileIO.fileSize("\(path)/cur/\(name)") { messages.append(MaildirMessage(name: name, size: size)) }
        }
        return messages.sorted { $0.name < $1.name }
    }

    public func read(_ message: MaildirMessage, of mailbox: Mailbox) throws -> [UInt8] {
        guard let path = path(for: mailbox) else { return [] }
        return try FileIO.readFile("\(path)/cur/\(message.name)")
    }

    public func delete(_ messages: [MaildirMessage], of mailbox: Mailbox) throws {
        guard let path = path(for: mailbox) else { return }
        for message in messages {
            if unlink("\(path)/cur/\(message.name)") != 0 && errno != ENOENT {
                throw IOError(operation: "unlink", path: message.name, code: errno)
            }
        }
        try FileIO.syncDirectory(path + "/cur")
    }
}
