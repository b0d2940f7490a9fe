import Dispatch
import Glibc
import Synchronization
import Testing
import VMM

/// A machine that pauses: every vCPU parked outside KVM_RUN, nothing printed, and on resume the
/// guest goes on exactly where it stopped.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct PauseResumeTests {
    /// Runs `counter-user` on a thread of its own and hands its machine and output to `body`.
    static func withCounter(cpus: Int = 1, _ body: (Machine, CollectedOutput) throws -> Void) throws -> GuestRun {
        var configured = try Firmware.guest("counter-user", mode: .user, timeLimit: .seconds(120))
        configured.cpus = cpus
        let guest = configured
        let output = CollectedOutput()
        let machine = Mutex<Machine?>(nil)
        let started = DispatchSemaphore(value: 0)
        let result = Mutex<Result<GuestRun, any Error>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            let run = Result { () throws -> GuestRun in
                try guest.run(console: { output.append($0) }, started: { started_ in
                    machine.withLock { $0 = started_ }
                    started.signal()
                })
            }
            result.withLock { $0 = run }
            finished.signal()
        }
        #expect(started.wait(timeout: .now() + 30) == .success)
        let running = try #require(machine.withLock { $0 })
        // `started` comes just before the vCPU threads do: wait for the run itself.
        let deadline = ContinuousClock.now + .seconds(20)
        while running.state == .notStarted, ContinuousClock.now < deadline { usleep(1000) }
        let failure = Result { try body(running, output) }
        running.requestStop(.stopped)
        #expect(finished.wait(timeout: .now() + 30) == .success)
        try failure.get()
        return try #require(result.withLock { $0 }).get()
    }

    /// Waits until the guest printed at least `count` more lines than `from`, or 20 s.
    static func waitForLines(_ output: CollectedOutput, after from: Int, count: Int = 3) {
        let deadline = ContinuousClock.now + .seconds(20)
        while output.lineCount < from + count, ContinuousClock.now < deadline { usleep(1000) }
    }

    @Test func aPausedGuestPrintsNothingAndResumesWithTheNextNumber() throws {
        let run = try Self.withCounter { machine, output in
            #expect(machine.state == .running)
            Self.waitForLines(output, after: 0, count: 20)
            try machine.pause()
            #expect(machine.state == .paused)
            let atPause = output.bytes.count
            // A second with every vCPU parked: not one byte.
            usleep(1_000_000)
            #expect(output.bytes.count == atPause, "the guest printed while paused")
            try machine.resume()
            #expect(machine.state == .running)
            Self.waitForLines(output, after: output.lineCount, count: 20)
            #expect(output.bytes.count > atPause, "the guest did not go on after resume")
        }
        #expect(run.outcome == .stopped)
        try Self.checkConsecutive(run.consoleText)
    }

    @Test(arguments: [1, 2])
    func aHundredPausesLoseAndRepeatNothing(cpus: Int) throws {
        let run = try Self.withCounter(cpus: cpus) { machine, output in
            Self.waitForLines(output, after: 0)
            for cycle in 0..<100 {
                try machine.pause()
                let atPause = output.bytes.count
                usleep(2_000)
                #expect(output.bytes.count == atPause, "cycle \(cycle): output while paused")
                try machine.resume()
                if cycle % 10 == 0 { Self.waitForLines(output, after: output.lineCount, count: 1) }
            }
        }
        // With several vCPUs each prints its own count; the lines interleave, so check one vCPU's.
        if cpus == 1 { try Self.checkConsecutive(run.consoleText) }
        #expect(run.vcpus.count == cpus)
    }

    @Test func pausingWhenNotRunningIsRefused() throws {
        _ = try Self.withCounter { machine, _ in
            #expect(throws: RunControlError.wrongState(.running, wanted: "paused to resume")) { try machine.resume() }
            try machine.pause()
            #expect(throws: RunControlError.wrongState(.paused, wanted: "running to pause")) { try machine.pause() }
            try machine.resume()
        }
    }

    @Test func aStopEndsAPausedMachine() throws {
        let run = try Self.withCounter { machine, _ in
            try machine.pause()
            machine.requestStop(.stopped)
        }
        #expect(run.outcome == .stopped)
    }

    /// Every complete line is the previous one plus one, from 0.
    static func checkConsecutive(_ text: String) throws {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        lines.removeLast()  // the line being printed when the run stopped
        #expect(lines.count > 10)
        for (index, line) in lines.enumerated() where Int(line) != index {
            Issue.record("line \(index) is '\(line)', expected \(index)")
            return
        }
    }
}

/// Console bytes collected from a vCPU thread, read from the test's.
final class CollectedOutput: Sendable {
    private let state = Mutex<(bytes: [UInt8], lines: Int)>(([], 0))

    func append(_ byte: UInt8) {
        state.withLock {
            $0.bytes.append(byte)
            if byte == 0x0A { $0.lines += 1 }
        }
    }

    var bytes: [UInt8] { state.withLock { $0.bytes } }
    var lineCount: Int { state.withLock { $0.lines } }
}
