// Reading C character buffers filled by libc/OpenSSL without the deprecated String(cString:) on arrays.

extension String {
    public init(nulTerminated buffer: [CChar]) {
        self = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
