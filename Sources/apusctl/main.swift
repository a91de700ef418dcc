// apusctl: administration of an Apus installation.
//
//   apusctl [-c CONFIG] user add ADDRESS [--password-stdin]   create a mailbox user (prints a
//                                                             generated password unless given one)
//   apusctl [-c CONFIG] user del ADDRESS
//   apusctl [-c CONFIG] config check                          parse the config, report file:line

import ApusServer
import Config
import Glibc

signal(SIGPIPE, SIG_IGN)

func fail(_ message: String, code: Int32 = 1) -> Never {
    let line = Array("apusctl: \(message)\n".utf8)
    line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

let usage = """
    usage: apusctl [-c CONFIG] user add ADDRESS [--password-stdin]
           apusctl [-c CONFIG] user del ADDRESS
           apusctl [-c CONFIG] config check
    """

var configPath = "/etc/apus/apus.conf"
var words: [String] = []
var passwordFromStdin = false
var rest = CommandLine.arguments.dropFirst()
while let word = rest.popFirst() {
    switch word {
    case "-c", "--config":
        guard let path = rest.popFirst() else { fail("-c needs a path", code: 2) }
        configPath = path
    case "--password-stdin": passwordFromStdin = true
    case "-h", "--help": print(usage); exit(0)
    default: words.append(word)
    }
}

let config: ApusConfig
do {
    config = try ApusConfig.load(path: configPath)
} catch {
    fail("\(error)")
}

func readStdin() -> String {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(0, &chunk, chunk.count)
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    while let last = bytes.last, last == 10 || last == 13 { bytes.removeLast() }
    return String(decoding: bytes, as: UTF8.self)
}

switch (words.first, words.dropFirst().first) {
case ("config", "check"):
    if config.postmaster == nil {
        print("warning: postmaster is not set; mail to postmaster@<local domain> needs a mailbox of its own (RFC 5321 §4.5.1)")
    }
    print("\(configPath): ok (\(config.listeners.count) listeners, local domains: \(config.localDomains.joined(separator: ", ")))")
case ("user", "add") where words.count == 3:
    let password = passwordFromStdin ? readStdin() : UserAdmin.randomPassword()
    do {
        try UserAdmin.add(address: words[2], password: password, config: config)
    } catch {
        fail("\(error)")
    }
    if passwordFromStdin { print("user \(words[2].lowercased()) ready") } else { print("user \(words[2].lowercased()) password: \(password)") }
case ("user", "del") where words.count == 3:
    do {
        let kept = try UserAdmin.delete(address: words[2], config: config)
        print("user \(words[2].lowercased()) removed" + (kept.map { "; its mail is kept in \($0)" } ?? ""))
    } catch {
        fail("\(error)")
    }
default:
    fail(usage, code: 2)
}
