// Transcript fixtures for the sans-I/O state machines: parser and runner.
//
// A small library target shared by SMTPTests and POP3Tests.
//
// Syntax, one directive per line:
//   # comment           the first comment line names the RFC section the transcript pins
//   @ key=value         configuration, before the dialog starts
//   C: text             the client writes text + CRLF
//   C* bytes            the client writes raw bytes, no CRLF added; escapes \r \n \t \\ \xHH and
//                       \[N:c] (the character c repeated N times)
//   S: text             expect exactly this reply line
//   S~ text             expect a reply line starting with text
//   = event             inject a driver event (TLS up, SASL verdict, spool verdict, timeout …)
//   ! action            expect this non-reply action of the machine
//   B* bytes            the message of the last `! commit` is exactly these bytes (escapes as C*)
//
// Every transcript runs twice: each client write whole, then each write split into single
// bytes. Output the transcript does not expect (before a client write, an event, or at the end)
// fails the test with the file name and line number.

import Foundation

public enum TranscriptOutput: Equatable, CustomStringConvertible {
    case line(String)
    case action(String)

    public var description: String {
        switch self {
        case .line(let text): return "S: \(text)"
        case .action(let text): return "! \(text)"
        }
    }
}

public enum TranscriptDirective: Equatable {
    case config(key: String, value: String)
    case write([UInt8])
    case expectLine(String)
    case expectPrefix(String)
    case event(String)
    case expectAction(String)
    case expectBody([UInt8])
}

public struct TranscriptStep: Equatable {
    public var line: Int
    public var directive: TranscriptDirective
}

public struct TranscriptFailure: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum TranscriptParser {
    public static func parse(_ text: String) throws -> [TranscriptStep] {
        var steps: [TranscriptStep] = []
        var sawComment = false
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            var line = Substring(rawLine)
            if line.last == "\r" { line = line.dropLast() }
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            if line.hasPrefix("#") {
                if !sawComment && !line.contains("RFC") {
                    throw TranscriptFailure("line \(number): the first comment must name the RFC section pinned")
                }
                sawComment = true
                continue
            }
            guard sawComment else { throw TranscriptFailure("line \(number): a transcript starts with a # RFC comment") }
            let tag = line.prefix(2)
            var rest = line.dropFirst(2)
            if rest.first == " " { rest = rest.dropFirst() }
            let directive: TranscriptDirective
            switch tag {
            case "@ ":
                guard let eq = rest.firstIndex(of: "=") else { throw TranscriptFailure("line \(number): expected @ key=value") }
                directive = .config(key: String(rest[..<eq]), value: String(rest[rest.index(after: eq)...]))
            case "C:": directive = .write(Array(rest.utf8) + [13, 10])
            case "C*": directive = .write(try unescape(rest, line: number))
            case "S:": directive = .expectLine(String(rest))
            case "S~": directive = .expectPrefix(String(rest))
            case "= ": directive = .event(String(rest))
            case "! ": directive = .expectAction(String(rest))
            case "B*": directive = .expectBody(try unescape(rest, line: number))
            default: throw TranscriptFailure("line \(number): unknown directive '\(line)'")
            }
            steps.append(TranscriptStep(line: number, directive: directive))
        }
        return steps
    }

    public static func unescape(_ text: Substring, line: Int) throws -> [UInt8] {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        var i = 0
        func bad() -> TranscriptFailure { TranscriptFailure("line \(line): bad escape in '\(text)'") }
        while i < bytes.count {
            let b = bytes[i]
            guard b == UInt8(ascii: "\\") else { out.append(b); i += 1; continue }
            guard i + 1 < bytes.count else { throw bad() }
            switch bytes[i + 1] {
            case UInt8(ascii: "r"): out.append(13); i += 2
            case UInt8(ascii: "n"): out.append(10); i += 2
            case UInt8(ascii: "t"): out.append(9); i += 2
            case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\")); i += 2
            case UInt8(ascii: "x"):
                guard i + 3 < bytes.count, let value = UInt8(String(decoding: bytes[(i + 2)...(i + 3)], as: UTF8.self), radix: 16)
                else { throw bad() }
                out.append(value); i += 4
            case UInt8(ascii: "["):
                // \[N:c]
                guard let colon = bytes[i...].firstIndex(of: UInt8(ascii: ":")), colon + 2 < bytes.count,
                      bytes[colon + 2] == UInt8(ascii: "]"),
                      let count = Int(String(decoding: bytes[(i + 2)..<colon], as: UTF8.self)), count >= 0
                else { throw bad() }
                out.append(contentsOf: repeatElement(bytes[colon + 1], count: count))
                i = colon + 3
            default: throw bad()
            }
        }
        return out
    }
}

/// An `= name argument` event line, split once for every runner.
public struct TranscriptEvent {
    public let name: String
    public let argument: String
    public init(_ text: String) {
        let words = text.split(separator: " ", maxSplits: 1)
        name = words.first.map(String.init) ?? ""
        argument = words.count > 1 ? String(words[1]) : ""
    }
}

/// The `@ key=value` settings of a transcript, taken one by one; keys left over are errors.
public struct TranscriptSettings {
    private var rest: [String: String]
    public init(_ config: [String: String]) { rest = config }

    public mutating func take(_ key: String) -> String? { rest.removeValue(forKey: key) }

    public mutating func flag(_ key: String, _ fallback: Bool) throws -> Bool {
        switch take(key) {
        case nil: return fallback
        case "yes": return true
        case "no": return false
        case let other?: throw TranscriptFailure("\(key)=\(other): expected yes or no")
        }
    }

    public mutating func number(_ key: String) throws -> Int? {
        guard let text = take(key) else { return nil }
        guard let n = Int(text) else { throw TranscriptFailure("\(key)=\(text): expected a number") }
        return n
    }

    public func finish() throws {
        if let unknown = rest.keys.sorted().first { throw TranscriptFailure("unknown key \(unknown)") }
    }
}

/// A state machine plus the driver loop around it, as the connection handler runs it.
public protocol TranscriptMachine: AnyObject {
    init(config: [String: String]) throws
    /// What the machine said or did that the transcript has not matched yet.
    var outputs: [TranscriptOutput] { get set }
    var isClosed: Bool { get }
    /// The message of the last commit, for `B*`.
    var lastMessage: [UInt8]? { get }
    func start()
    func clientWrites(_ bytes: [UInt8])
    func inject(_ event: String) throws
}

public enum TranscriptRunner {
    public static func fixtures(_ folder: String, testFile: String = #filePath) -> [URL] {
        let directory = URL(fileURLWithPath: testFile).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/\(folder)")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".txt") }.sorted().map { directory.appendingPathComponent($0) }
    }

    /// Runs every transcript of a fixture folder, whole and byte by byte; returns how many files
    /// there were and every failure.
    public static func runFolder<M: TranscriptMachine>(_ machine: M.Type, _ folder: String,
                                                       testFile: String = #filePath) -> (files: Int, failures: [String]) {
        let files = fixtures(folder, testFile: testFile)
        var failures: [String] = []
        for file in files {
            for split in [false, true] {
                if let failure = run(machine, file: file, splitWrites: split) { failures.append(failure) }
            }
        }
        return (files.count, failures)
    }

    /// Runs one transcript; returns a failure message naming file and line, or nil.
    public static func run<M: TranscriptMachine>(_: M.Type, file: URL, splitWrites: Bool) -> String? {
        let name = file.deletingLastPathComponent().lastPathComponent + "/" + file.lastPathComponent
        let mode = splitWrites ? "byte by byte" : "whole writes"
        let steps: [TranscriptStep]
        do {
            steps = try TranscriptParser.parse(String(decoding: try Data(contentsOf: file), as: UTF8.self))
        } catch {
            return "\(name): \(error)"
        }
        func failure(_ line: Int, _ message: String) -> String { "\(name):\(line) (\(mode)): \(message)" }

        var config: [String: String] = [:]
        var machine: M?
        for step in steps {
            if case .config(let key, let value) = step.directive {
                guard machine == nil else { return failure(step.line, "@ after the dialog started") }
                config[key] = value
                continue
            }
            if machine == nil {
                do { machine = try M(config: config) } catch { return failure(step.line, "bad configuration: \(error)") }
                machine!.start()
            }
            let m = machine!
            switch step.directive {
            case .config:
                break
            case .write(let bytes):
                if let extra = m.outputs.first { return failure(step.line, "unexpected \(extra) before the client writes") }
                if m.isClosed { return failure(step.line, "the client writes after the connection was closed") }
                if splitWrites {
                    for b in bytes { m.clientWrites([b]) }
                } else {
                    m.clientWrites(bytes)
                }
            case .event(let event):
                if let extra = m.outputs.first { return failure(step.line, "unexpected \(extra) before event '\(event)'") }
                do { try m.inject(event) } catch { return failure(step.line, "event '\(event)': \(error)") }
            case .expectLine(let text):
                guard !m.outputs.isEmpty else { return failure(step.line, "expected S: \(text), got nothing") }
                let got = m.outputs.removeFirst()
                if got != .line(text) { return failure(step.line, "expected S: \(text), got \(got)") }
            case .expectPrefix(let prefix):
                guard !m.outputs.isEmpty else { return failure(step.line, "expected S~ \(prefix), got nothing") }
                let got = m.outputs.removeFirst()
                guard case .line(let text) = got, text.hasPrefix(prefix) else {
                    return failure(step.line, "expected S~ \(prefix), got \(got)")
                }
            case .expectAction(let action):
                guard !m.outputs.isEmpty else { return failure(step.line, "expected ! \(action), got nothing") }
                let got = m.outputs.removeFirst()
                if got != .action(action) { return failure(step.line, "expected ! \(action), got \(got)") }
            case .expectBody(let bytes):
                guard let message = m.lastMessage else { return failure(step.line, "B* without a committed message") }
                if message != bytes {
                    return failure(step.line, "message is \(String(reflecting: String(decoding: message, as: UTF8.self)))")
                }
            }
        }
        if let m = machine, let extra = m.outputs.first {
            return failure(steps.last?.line ?? 0, "unexpected \(extra) at the end of the transcript")
        }
        return nil
    }
}
