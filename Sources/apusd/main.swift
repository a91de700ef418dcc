// apusd: the Apus mail server daemon. `apusd -c /etc/apus/apus.conf` runs in the foreground and
// logs to stderr (systemd/journald style). SIGTERM or SIGINT stops it; everything accepted is
// already durable in the spool, so stopping at any moment loses nothing.

import ApusServer
import Glibc
import MailCore

signal(SIGPIPE, SIG_IGN)

var configPath = "/etc/apus/apus.conf"
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "-c", "--config":
        guard let path = arguments.popFirst() else {
            Log.error("-c needs a path")
            exit(2)
        }
        configPath = path
    case "-h", "--help":
        print("usage: apusd [-c CONFIG]   (default /etc/apus/apus.conf)")
        exit(0)
    default:
        Log.error("unknown argument \(argument); usage: apusd [-c CONFIG]")
        exit(2)
    }
}

ApusServer.stopOnSignals()

do {
    try await ApusServer.start(configPath: configPath)
} catch {
    Log.error("fatal: \(error)")
    exit(1)
}
while true { try? await Task.sleep(nanoseconds: 3_600_000_000_000) }
