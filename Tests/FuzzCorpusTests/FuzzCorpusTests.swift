// Replays the committed fuzz corpus (Tests/Fixtures/fuzz-corpus, grown by `make fuzz`) through
// every fuzz target, so each input that once found a bug keeps being checked by `make test`.

import Foundation
import FuzzTargets
import XCTest

final class FuzzCorpusTests: XCTestCase {
    func testCorpusPassesEveryProperty() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/fuzz-corpus")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        XCTAssertGreaterThan(names.count, 20, "the fuzz corpus is missing")
        for name in names {
            let bytes = [UInt8](try Data(contentsOf: directory.appendingPathComponent(name)))
            FuzzTarget.run(bytes)   // a violated property traps, naming the property
            // Every input also goes through every target, not only the one its first byte picks.
            for target in FuzzTarget.allCases { target.run(Array(bytes.dropFirst())) }
        }
    }
}
