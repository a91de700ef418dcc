// The SMTP envelope of one accepted message (RFC 5321 §2.3.1): who sent it, to whom, and how it
// arrived. The body travels separately; the spool stores both.

public struct Envelope: Sendable, Equatable {
    public var sender: ReversePath
    public var recipients: [Mailbox]
    /// Client name from HELO/EHLO and its address, for the Received: trace header.
    public var heloName: String
    public var clientAddress: String
    /// The SASL identity that submitted it, if any.
    public var authenticatedUser: String?
    /// Protocol for Received: "ESMTP", "ESMTPS", "ESMTPSA" … (RFC 3848).
    public var receivedProtocol: String

    public init(sender: ReversePath, recipients: [Mailbox], heloName: String = "",
                clientAddress: String = "", authenticatedUser: String? = nil,
                receivedProtocol: String = "ESMTP") {
        self.sender = sender
        self.recipients = recipients
        self.heloName = heloName
        self.clientAddress = clientAddress
        self.authenticatedUser = authenticatedUser
        self.receivedProtocol = receivedProtocol
    }
}
