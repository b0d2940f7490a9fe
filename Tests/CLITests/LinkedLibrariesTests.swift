import Foundation
import Testing

/// What the swiftkvm binary loads at start: every library in its NEEDED list is resident in every
/// VMM process. Foundation (with FoundationInternationalization and ICU) cost 6 MiB of the VMM's
/// resident memory (issue 14); FoundationEssentials has what the VMM uses (JSON, Data, Date).
@Suite struct LinkedLibrariesTests {
    static let readelf = ["/usr/bin/readelf", "/bin/readelf"].first { FileManager.default.isExecutableFile(atPath: $0) }

    // readelf comes with binutils, which building the firmware guests needs: never skipped.
    @Test func theVMMLinksFoundationEssentialsOnly() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Self.readelf, "readelf (binutils) is not installed"))
        process.arguments = ["-d", SwiftKVMProcess.executable]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let needed = text.split(separator: "\n").filter { $0.contains("(NEEDED)") }
        #expect(needed.contains { $0.contains("[libFoundationEssentials.so]") }, "\(needed)")
        for library in ["libFoundation.so", "libFoundationInternationalization.so", "lib_FoundationICU.so"] {
            // (An incremental build can keep an object file from before an import changed: build clean.)
            #expect(!needed.contains { $0.contains("[\(library)]") }, "swiftkvm links \(library): a Sources file imports Foundation")
        }
    }
}
