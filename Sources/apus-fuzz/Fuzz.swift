// apus-fuzz: libFuzzer entry point for the targets in FuzzTargets.
//
//   make fuzz                      (builds with --sanitize=fuzzer into .build/fuzz and runs it)
//
// Built normally (as `swift build` does), it replays files given on the command line instead.

import FuzzTargets
import Glibc

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    FuzzTarget.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

#if !FUZZING
@main
struct Replay {
    static func main() {
        for path in CommandLine.arguments.dropFirst() {
            guard let file = fopen(path, "rb") else { continue }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&chunk, 1, chunk.count, file)
                if n <= 0 { break }
                bytes += chunk[0..<n]
            }
            fclose(file)
            FuzzTarget.run(bytes)
        }
    }
}
#endif
