// The outcome of one step of a SASL exchange, shared by SMTP AUTH and POP3 AUTH.

public enum SASLStepResult: Sendable, Equatable {
    case challenge([UInt8])
    case success(user: String)
    case failure
    /// Something broke on our side (SASL library, sasldb unreadable): temporary.
    case temporaryFailure
}
