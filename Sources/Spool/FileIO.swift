// The few disk syscalls the spool and the Maildir code need, each wrapped once so errors come
// back as values with errno, and so every durable write follows the same protocol:
// exclusive create in the same directory, full write (short writes retried), fsync, rename,
// fsync of the directory.

import Glibc

public struct IOError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var path: String
    public var code: Int32
    public var description: String { "\(operation) \(path): \(String(cString: strerror(code)))" }
    public init(operation: String, path: String, code: Int32) {
        self.operation = operation
        self.path = path
        self.code = code
    }
    public var isDiskFull: Bool { code == ENOSPC || code == EDQUOT }
}

public enum FileIO {
    public static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws(IOError) {
        // Create each missing component (mkdir -p).
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw IOError(operation: "mkdir", path: current, code: errno)
            }
        }
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Writes all of `bytes` to `fd`, retrying short writes and EINTR.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(IOError) {
        let result: Int32 = bytes.withUnsafeBytes { raw -> Int32 in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                offset += n
            }
            return 0
        }
        if result != 0 { throw IOError(operation: "write", path: path, code: result) }
    }

    public static func syncDirectory(_ path: String) throws(IOError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(operation: "open", path: path, code: errno) }
        defer { close(fd) }
        if fsync(fd) != 0 { throw IOError(operation: "fsync", path: path, code: errno) }
    }

    /// Creates `path` exclusively, writes the parts, and fdatasyncs it. Removes it on failure.
    public static func writeNewFileSynced(_ path: String, parts: [[UInt8]], mode: mode_t = 0o600) throws(IOError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw IOError(operation: "create", path: path, code: errno) }
        do throws(IOError) {
            for part in parts { try writeAll(fd, part, path: path) }
            if fdatasync(fd) != 0 { throw IOError(operation: "fdatasync", path: path, code: errno) }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
        if close(fd) != 0 {
            let e = errno
            unlink(path)
            throw IOError(operation: "close", path: path, code: e)
        }
    }

    public static func rename(_ from: String, _ to: String) throws(IOError) {
        if Glibc.rename(from, to) != 0 { throw IOError(operation: "rename", path: to, code: errno) }
    }

    /// The beginning of a file, up to the first occurrence of `terminator` (included), reading
    /// in chunks; nil if the file ends first. For headers of large files.
    public static func readPrefix(_ path: String, through terminator: [UInt8]) throws(IOError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(operation: "open", path: path, code: errno) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw IOError(operation: "read", path: path, code: errno)
            }
            if n == 0 { return nil }
            let searchFrom = max(0, out.count - terminator.count + 1)
            out.append(contentsOf: chunk[0..<n])
            var i = searchFrom
            while i + terminator.count <= out.count {
                if out[i] == terminator[0] && Array(out[i..<(i + terminator.count)]) == terminator {
                    return Array(out[0..<(i + terminator.count)])
                }
                i += 1
            }
        }
    }

    public static func readFile(_ path: String) throws(IOError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IOError(operation: "open", path: path, code: errno) }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        var out: [UInt8] = []
        out.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw IOError(operation: "read", path: path, code: errno)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// Names in a directory, without "." and "..".
    public static func list(_ path: String) throws(IOError) -> [String] {
        guard let dir = opendir(path) else { throw IOError(operation: "opendir", path: path, code: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public static func fileSize(_ path: String) -> Int? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int(st.st_size)
    }
}
