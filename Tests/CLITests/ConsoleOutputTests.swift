import Foundation
import Testing

/// The console on standard output: a reader that stalls or goes away never stops the guest, and
/// what it did not take is counted and reported.
@Suite(.enabled(if: KVM.shouldRun, KVM.skipReason))
struct ConsoleOutputTests {
    /// Runs `counter-user` for `seconds` with standard output on `descriptor`; returns the status and stderr.
    static func runCounter(stdout descriptor: Int32, seconds: Int) throws -> (status: Int32, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SwiftKVMProcess.executable)
        process.arguments = ["run", "--firmware", Paths.firmware("counter-user"), "--mode", "user", "--time-limit", "\(seconds)", "--stats"]
        process.standardOutput = FileHandle(fileDescriptor: descriptor, closeOnDealloc: false)
        let errors = Pipe()
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let watchdog = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(seconds + 30), execute: watchdog)
        let stderr = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        return (process.terminationStatus, String(decoding: stderr, as: UTF8.self))
    }

    /// The "io out" count of `--stats`: the guest's console bytes (and its few other port writes).
    static func portWrites(_ stderr: String) -> Int? {
        for line in stderr.split(separator: "\n") where line.hasPrefix("    io out") {
            return line.split(separator: " ").compactMap { Int($0.filter { $0 != "," }) }.first
        }
        return nil
    }

    @Test func aStalledReaderDoesNotStopTheGuest() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]) }
        // Fill the pipe so the VMM's very first write blocks, as on a terminal nobody reads.
        let flags = fcntl(ends[1], F_GETFL)
        _ = fcntl(ends[1], F_SETFL, flags | O_NONBLOCK)
        var filler = [UInt8](repeating: 0x2E, count: 4096)
        while write(ends[1], &filler, filler.count) > 0 {}
        _ = fcntl(ends[1], F_SETFL, flags)
        let result = try Self.runCounter(stdout: ends[1], seconds: 3)
        close(ends[1])
        #expect(result.status == 124, "\(result.stderr)")
        // The guest kept printing (a line a millisecond idle, still hundreds a second on a loaded host), none of it delivered.
        let writes = try #require(Self.portWrites(result.stderr), "\(result.stderr)")
        #expect(writes > 200, "\(result.stderr)")
        let dropped = result.stderr.split(separator: "\n").first { $0.contains("console bytes were dropped") }
        let count = dropped.flatMap { $0.split(separator: " ").compactMap { Int($0) }.first }
        #expect(count.map { $0 > 200 && $0 <= writes } == true, "\(result.stderr)")
        #expect(dropped?.hasSuffix("standard output did not keep up") == true, "\(result.stderr)")
    }

    @Test func aReaderThatGoesAwayIsReportedNotFatal() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        close(ends[0])  // `| head -c 0`: nobody will ever read
        let result = try Self.runCounter(stdout: ends[1], seconds: 2)
        close(ends[1])
        // Not killed by SIGPIPE (141): the run ends at its time limit, and says what was lost.
        #expect(result.status == 124, "\(result.stderr)")
        #expect(result.stderr.contains("console bytes were dropped: the reader of standard output went away"), "\(result.stderr)")
        #expect((Self.portWrites(result.stderr) ?? 0) > 200, "\(result.stderr)")
    }
}
