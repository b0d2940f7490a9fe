import Glibc
import Synchronization
import Testing
import VMM

/// The console input path without a guest: bytes from a pipe into a sink that may refuse some.
struct ConsoleInputPumpTests {
    final class Recorder: @unchecked Sendable {
        let received = Mutex<[UInt8]>([])
        let quits = Atomic<Int>(0)
        /// Milliseconds from the pump's start to its first quit (0: no quit yet).
        let quitAfter = Atomic<Int>(0)
        let started = ContinuousClock.now
        let perCall: Int
        init(perCall: Int) { self.perCall = perCall }

        func take(_ bytes: [UInt8]) -> Int {
            let count = min(bytes.count, perCall)
            received.withLock { $0 += bytes.prefix(count) }
            return count
        }
    }

    /// Writes `input` into a pipe, closes it, pumps it and waits until the pump is done.
    func pump(_ input: [UInt8], escape: Bool, perCall: Int = 64) async throws -> Recorder {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let recorder = Recorder(perCall: perCall)
        let done = Atomic<Bool>(false)
        let pump = ConsoleInputPump(
            interpretEscape: escape, sink: { recorder.take($0) },
            onQuit: {
                let elapsed = ContinuousClock.now - recorder.started
                recorder.quitAfter.store(Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000), ordering: .relaxed)
                recorder.quits.add(1, ordering: .relaxed)
                done.store(true, ordering: .relaxed)
            })
        try pump.start(descriptor: ends[0])
        _ = input.withUnsafeBytes { write(ends[1], $0.baseAddress, $0.count) }
        close(ends[1])
        // The pump ends at end of input; give it up to 5 s.
        for _ in 0..<500 {
            let length = recorder.received.withLock { $0.count }
            if done.load(ordering: .relaxed) || length >= input.count { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        try await Task.sleep(for: .milliseconds(20))
        return recorder
    }

    @Test func pipedBytesAllArriveInOrderEvenWhenTheGuestTakesFew() async throws {
        let input = Array("echo hello\nuname -r\n".utf8) + [0x01, 0x03]
        let recorder = try await pump(input, escape: false, perCall: 3)
        #expect(recorder.received.withLock { $0 } == input, "a pipe is passed through untouched")
        #expect(recorder.quits.load(ordering: .relaxed) == 0)
    }

    @Test func ctrlAThenXQuitsAndCtrlATwiceSendsOne() async throws {
        let recorder = try await pump(Array("ab".utf8) + [0x01, 0x01] + Array("c".utf8) + [0x01, UInt8(ascii: "x")] + Array("zz".utf8), escape: true)
        #expect(recorder.quits.load(ordering: .relaxed) == 1)
        #expect(recorder.received.withLock { $0 } == Array("ab".utf8) + [0x01] + Array("c".utf8))
    }

    /// A guest that never reads its console (FIFO full, or the driver not up) must not keep
    /// Ctrl-A x from working: typed bytes are dropped after a short wait, the escape still quits.
    @Test func ctrlAThenXQuitsEvenWhenTheGuestTakesNothing() async throws {
        let recorder = try await pump(Array("typed ahead".utf8) + [0x01, UInt8(ascii: "x")], escape: true, perCall: 0)
        #expect(recorder.quits.load(ordering: .relaxed) == 1)
        #expect(recorder.received.withLock { $0 }.isEmpty)
        // Timed on the pump's own thread: this test's task may wait for a pool thread far longer.
        let waited = recorder.quitAfter.load(ordering: .relaxed)
        #expect(waited > 0 && waited < 4_000, "quit \(waited) ms after the pump started: about typingPatience per waiting chunk")
    }
}
