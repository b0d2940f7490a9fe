import Foundation
import Testing

/// `swiftkvm run … | head -c 5`: a reader that goes away must not kill the VMM with SIGPIPE
/// (status 141, disks unsynced, terminal left raw); the guest runs to its end and one line says
/// how much console output was dropped.
@Suite struct ClosedOutputTests {
    @Test func aClosedStandardOutputDoesNotKillTheVMM() throws {
        // A pipe whose read end is closed before the VMM starts: its first console write is EPIPE.
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        close(ends[0])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SwiftKVMProcess.executable)
        process.arguments = ["run", "--firmware", Paths.firmware("hello-long"), "--time-limit", "60"]
        process.standardOutput = FileHandle(fileDescriptor: ends[1], closeOnDealloc: true)
        let errors = Pipe()
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let stderrData = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let stderr = String(decoding: stderrData, as: UTF8.self)
        #expect(process.terminationReason == .exit, "not killed by a signal (SIGPIPE)")
        #expect(process.terminationStatus == 0, "the guest's own exit status: \(stderr)")
        let expected = "swiftkvm: \("Hello from long mode!\n".utf8.count) console bytes were dropped: the reader of standard output went away\n"
        #expect(stderr == expected)
    }

    @Test func headTakingFiveBytesLeavesTheVMMToFinish() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        let command = "'\(SwiftKVMProcess.executable)' run --firmware '\(Paths.firmware("hello-long"))' --time-limit 60 | head -c 5; echo \" status=${PIPESTATUS[0]}\""
        process.arguments = ["-c", command]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(text == "Hello status=0\n")
    }
}
