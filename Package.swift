// swift-tools-version:6.0
// Apus: a mail transfer agent. No outside Swift packages; C libraries come from Debian.
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "Apus",
    products: [
        .executable(name: "apusd", targets: ["apusd"]),
        .executable(name: "apusctl", targets: ["apusctl"]),
    ],
    targets: [
        // System libraries (Debian: libssl-dev, libsasl2-dev, libunbound-dev).
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CSASL", providers: [.apt(["libsasl2-dev"])]),
        .systemLibrary(name: "CUnbound", providers: [.apt(["libunbound-dev"])]),
        // One-line C wrappers for what Swift cannot import: macros, epoll, accept4.
        .target(name: "CApusShim", dependencies: ["COpenSSL", "CSASL", "CUnbound"],
                linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto"),
                                 .linkedLibrary("sasl2"), .linkedLibrary("unbound")]),

        .target(name: "MailCore", swiftSettings: strict),
        .target(name: "SMTP", dependencies: ["MailCore"], swiftSettings: strict),
        .target(name: "POP3", dependencies: ["MailCore"], swiftSettings: strict),
        .target(name: "Config", dependencies: ["MailCore"], swiftSettings: strict),
        .target(name: "Net", dependencies: ["CApusShim", "COpenSSL", "MailCore"], swiftSettings: strict),
        .target(name: "Auth", dependencies: ["CApusShim", "CSASL", "MailCore"], swiftSettings: strict),
        .target(name: "DNS", dependencies: ["CApusShim", "CUnbound", "MailCore", "Net"], swiftSettings: strict),
        .target(name: "Spool", dependencies: ["MailCore"], swiftSettings: strict),
        .target(name: "Mailbox", dependencies: ["MailCore", "Spool"], swiftSettings: strict),
        .target(name: "Delivery",
                dependencies: ["MailCore", "SMTP", "Net", "DNS", "Spool", "Mailbox", "Config"],
                swiftSettings: strict),
        .target(name: "ApusServer",
                dependencies: ["MailCore", "SMTP", "POP3", "Net", "Auth", "DNS", "Spool", "Mailbox",
                               "Delivery", "Config"],
                swiftSettings: strict),
        .target(name: "FuzzTargets", dependencies: ["MailCore", "SMTP", "POP3", "Config", "Spool"],
                swiftSettings: strict),
        .executableTarget(name: "apus-fuzz", dependencies: ["FuzzTargets"], swiftSettings: strict),
        .executableTarget(name: "apusd", dependencies: ["ApusServer", "MailCore"], swiftSettings: strict),
        .executableTarget(name: "apusctl", dependencies: ["ApusServer", "Config"], swiftSettings: strict),

        .testTarget(name: "MailCoreTests", dependencies: ["MailCore"], swiftSettings: strict),
        .target(name: "TranscriptSupport", path: "Tests/TranscriptSupport", swiftSettings: strict),
        .testTarget(name: "SMTPTests", dependencies: ["SMTP", "MailCore", "TranscriptSupport"], swiftSettings: strict),
        .testTarget(name: "POP3Tests", dependencies: ["POP3", "MailCore", "TranscriptSupport"], swiftSettings: strict),
        .testTarget(name: "SpoolTests", dependencies: ["Spool", "Mailbox", "MailCore"], swiftSettings: strict),
        .testTarget(name: "ConfigTests", dependencies: ["Config"], swiftSettings: strict),
        .testTarget(name: "DeliveryTests", dependencies: ["Delivery"], swiftSettings: strict),
        .testTarget(name: "FuzzCorpusTests", dependencies: ["FuzzTargets"], swiftSettings: strict),
    ]
)
