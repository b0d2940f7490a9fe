import Dispatch
import Devices
import Synchronization
import Testing
import TestSupport
import VMMCore

// MARK: - Test doubles

/// A hand-wound clock. `step` is added after every read, to model time passing while a guest polls.
private final class TestClock: GuestClock, @unchecked Sendable {
    private let now: Atomic<UInt64>
    var step: UInt64 = 0

    init(_ start: UInt64) { now = Atomic(start) }

    var nanoseconds: UInt64 { now.add(step, ordering: .relaxed).oldValue }
    var peek: UInt64 { now.load(ordering: .relaxed) }
    func set(_ value: UInt64) { now.store(value, ordering: .relaxed) }
}

/// Records every level the PIT drives onto IRQ 0.
private final class LineRecorder: InterruptLine, @unchecked Sendable {
    private let recorded = Mutex<[Bool]>([])
    func setLevel(_ high: Bool) { recorded.withLock { $0.append(high) } }
    var levels: [Bool] { recorded.withLock { $0 } }
    /// Rising edges, each of which must have been followed by a fall.
    var edges: Int { levels.filter { $0 }.count }
}

private let frequency: UInt64 = 1_193_182

/// The first nanosecond offset at which `ticks` whole CLK ticks have passed (from an origin where
/// the tick count is exact): ⌈ticks × 10⁹ / 1193182⌉, computed independently of the PIT.
private func nanoseconds(ticks: UInt64) -> UInt64 {
    (ticks * 1_000_000_000 + frequency - 1) / frequency
}

private final class Counter: @unchecked Sendable {
    private let count = Atomic<Int>(0)
    func increment() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// One second: 1193182 ticks exactly, so tick arithmetic from here is exact.
private let origin: UInt64 = 1_000_000_000

/// A PIT on a hand-wound clock, with x86 `inb`/`outb` on its ports and the clock set in CLK ticks
/// since `origin`.
private final class Machine {
    let clock = TestClock(origin)
    let line = LineRecorder()
    let pit: PIT8254
    let speaker: PIT8254.SpeakerPort
    private let deadlineChanges = Counter()
    var deadlineChangeCount: Int { deadlineChanges.value }

    init(minimumPeriodicInterval: UInt64 = PIT8254.defaultMinimumPeriodicInterval) {
        var pit: PIT8254!
        pit = PIT8254(clock: clock, interruptLine: line, minimumPeriodicInterval: minimumPeriodicInterval) {
            [deadlineChanges] in deadlineChanges.increment()
        }
        self.pit = pit
        self.speaker = pit.speakerPort
    }

    func outb(_ port: UInt16, _ value: UInt8) {
        withUnsafeBytes(of: value) { bytes in
            if port == PIT8254.speakerControlPort {
                speaker.write(offset: 0, data: bytes)
            } else {
                pit.write(offset: UInt64(port - PIT8254.basePort), data: bytes)
            }
        }
    }

    func inb(_ port: UInt16) -> UInt8 {
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { bytes in
            if port == PIT8254.speakerControlPort {
                speaker.read(offset: 0, data: bytes)
            } else {
                pit.read(offset: UInt64(port - PIT8254.basePort), data: bytes)
            }
        }
        return value
    }

    /// Sets the clock to `ticks` CLK ticks after `origin`.
    func at(tick ticks: UInt64) { clock.set(origin + nanoseconds(ticks: ticks)) }

    /// Sets the clock to `ticks` after `origin` and runs the timer thread's `advance(to:)` there.
    func advance(toTick ticks: UInt64) {
        at(tick: ticks)
        pit.advance(to: clock.peek)
    }

    /// Writes a Control Word then a two-byte count (RW = LSB then MSB).
    func program(counter: UInt16, controlWord: UInt8, count: UInt16) {
        outb(0x43, controlWord)
        outb(0x40 + counter, UInt8(count & 0xFF))
        outb(0x40 + counter, UInt8(count >> 8))
    }

    /// Counter Latch Command, then LSB and MSB of the Output Latch (Linux's `i8253_read`).
    func latchedCount(counter: UInt16) -> UInt16 {
        outb(0x43, UInt8(counter) << 6)
        let low = inb(0x40 + counter)
        let high = inb(0x40 + counter)
        return UInt16(high) << 8 | UInt16(low)
    }

    /// Port 0x61 bit 5: Counter 2's OUT.
    var out2: Bool { inb(0x61) & 0x20 != 0 }

    /// Read-Back Command for one counter's status only.
    func status(counter: UInt16) -> UInt8 {
        outb(0x43, 0xE0 | 2 << UInt8(counter))  // D5 = 1: no count; D4 = 0: status
        return inb(0x40 + counter)
    }
}

// MARK: - Counting

@Suite struct PIT8254Tests {
    @Test func constants() {
        #expect(PIT8254.basePort == 0x40)
        #expect(PIT8254.portCount == 4)
        #expect(PIT8254.speakerControlPort == 0x61)
        #expect(PIT8254.irq == 0)
        #expect(PIT8254.inputFrequency == 1_193_182)
    }

    @Test func countsDownAt1193182Hz() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 11932)  // mode 2, ≈ 100 Hz
        machine.clock.set(origin + 5_000_000)  // 5 ms = 5965.91 ticks
        let count = Int(machine.latchedCount(counter: 0))
        #expect(abs(count - (11932 - 5966)) <= 2, "count \(count)")
        machine.clock.set(origin + 9_000_000)  // 9 ms = 10738.6 ticks
        let later = Int(machine.latchedCount(counter: 0))
        #expect(abs(later - (11932 - 10739)) <= 2, "count \(later)")
    }

    @Test func liveReadsWithoutALatchFollowTheClock() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x30, count: 50_000)  // mode 0
        machine.at(tick: 1234)
        let low = machine.inb(0x40)
        let high = machine.inb(0x40)
        #expect(UInt16(high) << 8 | UInt16(low) == 50_000 - 1234)
    }

    @Test func mode2CountsNDownTo1ThenReloads() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 1000)
        #expect(machine.latchedCount(counter: 0) == 1000)
        machine.at(tick: 999)
        #expect(machine.latchedCount(counter: 0) == 1)
        machine.at(tick: 1000)
        #expect(machine.latchedCount(counter: 0) == 1000)
        machine.at(tick: 2500)
        #expect(machine.latchedCount(counter: 0) == 500)
    }

    @Test func mode3CountsDownByTwoInEachHalf() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x36, count: 1000)
        machine.at(tick: 10)
        #expect(machine.latchedCount(counter: 0) == 980)
        machine.at(tick: 510)
        #expect(machine.latchedCount(counter: 0) == 980)
    }

    @Test func mode0KeepsCountingDownPastTerminalCount() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x30, count: 100)
        machine.at(tick: 101)
        #expect(machine.latchedCount(counter: 0) == 0xFFFF)
    }

    @Test func aCountOfZeroIs65536() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 0)
        #expect(machine.latchedCount(counter: 0) == 0)
        machine.at(tick: 1)
        #expect(machine.latchedCount(counter: 0) == 0xFFFF)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 65536))  // ≈ 54.9 ms

        // Counter 2, mode 0: OUT rises after 65536 ticks, not 0.
        machine.outb(0x61, 0x01)
        machine.program(counter: 2, controlWord: 0xB0, count: 0)
        machine.at(tick: 1 + 65535)
        #expect(!machine.out2)
        machine.at(tick: 1 + 65536)
        #expect(machine.out2)
    }

    @Test func bcdCountsAreFourDecimalDigits() {
        let machine = Machine()
        machine.outb(0x61, 0x01)
        machine.program(counter: 2, controlWord: 0xB1, count: 0x0100)  // mode 0, BCD 100
        machine.at(tick: 1)
        #expect(machine.latchedCount(counter: 2) == 0x0099)
        machine.at(tick: 99)
        #expect(!machine.out2)
        machine.at(tick: 100)
        #expect(machine.out2)
        #expect(machine.status(counter: 2) & 0x01 == 0x01)  // BCD bit

        machine.program(counter: 2, controlWord: 0xB1, count: 0)  // BCD 0 is 10000
        machine.at(tick: 101)
        #expect(machine.latchedCount(counter: 2) == 0x9999)
        machine.at(tick: 100 + 9999)
        #expect(!machine.out2)
        machine.at(tick: 100 + 10000)
        #expect(machine.out2)
    }

    // MARK: Byte pointers and latches

    @Test func lsbOnlyAndMsbOnlyAccess() {
        let machine = Machine()  // Counter 2's GATE is low: the count holds still
        machine.outb(0x43, 0x90)  // counter 2, LSB only, mode 0
        machine.outb(0x42, 200)
        #expect(machine.inb(0x42) == 200)
        #expect(machine.inb(0x42) == 200)  // no flip-flop: LSB again
        #expect(machine.latchedCount(counter: 2) & 0xFF == 200)

        machine.outb(0x43, 0xA0)  // MSB only
        machine.outb(0x42, 0x12)
        #expect(machine.inb(0x42) == 0x12)
        #expect(machine.inb(0x42) == 0x12)
        machine.outb(0x43, 0x80)  // latch; MSB-only reads give one byte
        #expect(machine.inb(0x42) == 0x12)
        #expect(machine.status(counter: 2) & 0x30 == 0x20)
    }

    @Test func lsbThenMsbFlipFlopForReadsAndWrites() {
        let machine = Machine()
        machine.program(counter: 2, controlWord: 0xB0, count: 0x1234)
        #expect(machine.inb(0x42) == 0x34)
        #expect(machine.inb(0x42) == 0x12)
        #expect(machine.inb(0x42) == 0x34)
        // Datasheet: read LSB, write new LSB, read MSB, write new MSB is a valid sequence: the read
        // and write pointers are separate.
        machine.outb(0x42, 0x78)
        #expect(machine.inb(0x42) == 0x12)
        machine.outb(0x42, 0x56)
        #expect(machine.inb(0x42) == 0x78)
        #expect(machine.inb(0x42) == 0x56)
        // A Control Word resets the read pointer to the LSB.
        #expect(machine.inb(0x42) == 0x78)
        machine.outb(0x43, 0xB0)
        machine.outb(0x42, 0xCD)
        machine.outb(0x42, 0xAB)
        #expect(machine.inb(0x42) == 0xCD)
    }

    @Test func aLatchedCountHoldsWhileTimeAdvancesUntilRead() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 10_000)
        machine.at(tick: 2000)
        machine.outb(0x43, 0x00)
        machine.at(tick: 3000)
        let low = machine.inb(0x40)
        machine.at(tick: 4000)
        machine.outb(0x43, 0x00)  // a second latch before the first is read is ignored
        let high = machine.inb(0x40)
        #expect(UInt16(high) << 8 | UInt16(low) == 8000)
        // Once read in full, reads are live again, and a new latch takes the current count.
        machine.at(tick: 5000)
        #expect(UInt16(machine.inb(0x40)) | UInt16(machine.inb(0x40)) << 8 == 5000)
        #expect(machine.latchedCount(counter: 0) == 5000)
    }

    @Test func readBackLatchesStatusThenCount() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 11932)
        machine.at(tick: 1000)
        machine.outb(0x43, 0xC2)  // read-back: count and status, counter 0
        #expect(machine.inb(0x40) == 0xB4)  // OUT high, count loaded, LSB/MSB, mode 2, binary
        machine.at(tick: 1500)
        let low = machine.inb(0x40)
        let high = machine.inb(0x40)
        #expect(UInt16(high) << 8 | UInt16(low) == 11932 - 1000)

        machine.outb(0x43, 0xD2)  // count only
        #expect(UInt16(machine.inb(0x40)) | UInt16(machine.inb(0x40)) << 8 == 11932 - 1500)

        machine.outb(0x43, 0xE2)  // status only; then reads are live
        #expect(machine.inb(0x40) == 0xB4)
        machine.at(tick: 1600)
        #expect(UInt16(machine.inb(0x40)) | UInt16(machine.inb(0x40)) << 8 == 11932 - 1600)
    }

    @Test func readBackStatusTracksOutAndNullCount() {
        let machine = Machine()
        machine.outb(0x61, 0x01)
        machine.outb(0x43, 0xB0)  // counter 2, mode 0: OUT low, no count yet
        #expect(machine.status(counter: 2) == 0x70)
        machine.outb(0x42, 100)
        #expect(machine.status(counter: 2) == 0x70)  // half a count is still no count
        machine.outb(0x42, 0)
        #expect(machine.status(counter: 2) == 0x30)
        machine.at(tick: 100)
        #expect(machine.status(counter: 2) == 0xB0)
        machine.outb(0x43, 0x76)  // counter 1, mode 3: OUT high before counting
        #expect(machine.status(counter: 1) == 0xF6)
        machine.outb(0x43, 0x1E)  // counter 0, LSB only, mode 7 = mode 3: reported as written
        #expect(machine.status(counter: 0) == 0xDE)
    }

    @Test func readBackCanLatchSeveralCounters() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 3000)
        machine.program(counter: 1, controlWord: 0x74, count: 2000)
        machine.outb(0x61, 0x01)
        machine.program(counter: 2, controlWord: 0xB0, count: 1000)
        machine.at(tick: 100)
        machine.outb(0x43, 0xCE)  // count and status of all three
        machine.at(tick: 200)
        #expect(machine.inb(0x40) == 0xB4)
        #expect(machine.inb(0x41) == 0xB4)
        #expect(machine.inb(0x42) == 0x30)
        for (port, expected) in [(UInt16(0x40), UInt16(2900)), (0x41, 1900), (0x42, 900)] {
            let low = machine.inb(port)
            let high = machine.inb(port)
            #expect(UInt16(high) << 8 | UInt16(low) == expected, "port \(port)")
        }
    }

    // MARK: Counter 2 and port 0x61

    @Test func mode0OutRisesAtTerminalCountAndStays() {
        let machine = Machine()
        machine.outb(0x61, 0x01)
        machine.program(counter: 2, controlWord: 0xB0, count: 1000)
        #expect(!machine.out2)
        machine.at(tick: 999)
        #expect(!machine.out2)
        machine.at(tick: 1000)
        #expect(machine.out2)
        machine.at(tick: 70_000)  // the count wrapped; OUT stays high
        #expect(machine.out2)
        machine.outb(0x43, 0xB0)  // a new mode 0 Control Word drives OUT low
        #expect(!machine.out2)
    }

    @Test func gateLowStopsCountingInMode0() {
        let machine = Machine()
        machine.program(counter: 2, controlWord: 0xB0, count: 1000)  // GATE low: not counting
        machine.at(tick: 5000)
        #expect(!machine.out2)
        #expect(machine.latchedCount(counter: 2) == 1000)
        machine.outb(0x61, 0x01)
        machine.at(tick: 5600)
        #expect(machine.latchedCount(counter: 2) == 400)
        machine.outb(0x61, 0x00)  // pause with 400 to go
        machine.at(tick: 9000)
        #expect(!machine.out2)
        #expect(machine.latchedCount(counter: 2) == 400)
        machine.outb(0x61, 0x01)
        machine.at(tick: 9399)
        #expect(!machine.out2)
        machine.at(tick: 9400)
        #expect(machine.out2)
    }

    @Test func mode2OutIsLowForOneClockPerPeriod() {
        let machine = Machine()
        machine.outb(0x61, 0x01)
        machine.program(counter: 2, controlWord: 0xB4, count: 100)
        var lows: [UInt64] = []
        for tick in UInt64(0)..<300 {
            machine.at(tick: tick)
            if !machine.out2 { lows.append(tick) }
        }
        #expect(lows == [99, 199, 299])
    }

    @Test func mode3IsASquareWaveAndGateLowForcesOutHigh() {
        let machine = Machine()
        machine.outb(0x61, 0x01)
        machine.program(counter: 2, controlWord: 0xB6, count: 1000)
        machine.at(tick: 499)
        #expect(machine.out2)
        machine.at(tick: 500)
        #expect(!machine.out2)
        machine.at(tick: 999)
        #expect(!machine.out2)
        machine.at(tick: 1000)
        #expect(machine.out2)
        machine.at(tick: 1700)
        #expect(!machine.out2)
        machine.outb(0x61, 0x00)  // GATE low: OUT high at once, counting stops
        #expect(machine.out2)
        machine.at(tick: 2000)
        machine.outb(0x61, 0x01)  // GATE rising: reload and start a fresh period
        machine.at(tick: 2499)
        #expect(machine.out2)
        machine.at(tick: 2500)
        #expect(!machine.out2)
    }

    @Test func mode1And5StartOnTheGateRisingEdge() {
        let machine = Machine()
        machine.program(counter: 2, controlWord: 0xB2, count: 100)  // mode 1, GATE low
        #expect(machine.out2)
        machine.at(tick: 500)
        #expect(machine.out2)
        #expect(machine.status(counter: 2) & 0x40 != 0)  // null count until the trigger
        machine.outb(0x61, 0x01)  // trigger
        #expect(!machine.out2)
        #expect(machine.status(counter: 2) & 0x40 == 0)
        machine.at(tick: 599)
        #expect(!machine.out2)
        machine.at(tick: 600)
        #expect(machine.out2)
        machine.outb(0x61, 0x00)
        machine.at(tick: 700)
        machine.outb(0x61, 0x01)  // retrigger
        #expect(!machine.out2)
        machine.at(tick: 800)
        #expect(machine.out2)

        machine.outb(0x61, 0x00)
        machine.program(counter: 2, controlWord: 0xBA, count: 100)  // mode 5
        machine.at(tick: 1000)
        machine.outb(0x61, 0x01)
        machine.at(tick: 1099)
        #expect(machine.out2)
        machine.at(tick: 1100)
        #expect(!machine.out2)
        machine.at(tick: 1101)
        #expect(machine.out2)
    }

    @Test func speakerPortBits() {
        let machine = Machine()
        machine.outb(0x61, 0xFF)
        #expect(machine.inb(0x61) & 0xCF == 0x0F)  // bits 0-3 as written; 6-7 read 0
        machine.outb(0x61, 0xF2)
        #expect(machine.inb(0x61) & 0x0F == 0x02)
        // REF_TOGGLE flips every 15.085 µs.
        machine.clock.set(15_085 * 1000)
        let first = machine.inb(0x61) & 0x10
        machine.clock.set(15_085 * 1001)
        let second = machine.inb(0x61) & 0x10
        #expect(first != second)
        // Only offset 0, one byte, is the register.
        var bytes: [UInt8] = [0, 0]
        bytes.withUnsafeMutableBytes { machine.speaker.read(offset: 0, data: $0) }
        #expect(bytes[1] == 0xFF)
        bytes.withUnsafeMutableBytes { machine.speaker.read(offset: 1, data: $0) }
        #expect(bytes == [0xFF, 0xFF])
        [UInt8(0x03)].withUnsafeBytes { machine.speaker.write(offset: 1, data: $0) }
        #expect(machine.inb(0x61) & 0x0F == 0x02)
    }

    // MARK: Linux's calibration loops

    /// arch/x86/kernel/tsc.c `pit_calibrate_tsc`: Counter 2 in mode 0, polled through port 0x61.
    @Test func pitCalibrateTscLoop() {
        let machine = Machine()
        machine.outb(0x61, (machine.inb(0x61) & ~0x02) | 0x01)  // GATE high, speaker off
        let latch: UInt16 = 11932  // 10 ms: CAL_LATCH for ms = 10
        machine.program(counter: 2, controlWord: 0xB0, count: latch)
        machine.clock.step = 1000  // each port read takes 1 µs of guest time
        let start = machine.clock.peek
        var pitcnt = 0
        while machine.inb(0x61) & 0x20 == 0 && pitcnt < 1_000_000 {
            pitcnt += 1
        }
        let elapsed = machine.clock.peek - start
        #expect((9_990...10_010).contains(pitcnt), "polled \(pitcnt) times")
        #expect((9_990_000...10_010_000).contains(elapsed), "\(elapsed) ns")
    }

    /// arch/x86/kernel/tsc.c `quick_pit_calibrate` / `pit_expect_msb`: the live count of Counter 2,
    /// mode 0 from 0xFFFF, read LSB then MSB with no latch; the MSB must step down 0xFF, 0xFE, …
    /// each value seen more than 5 times.
    @Test func quickPitCalibrateExpectMsbLoop() {
        let machine = Machine()
        machine.outb(0x61, (machine.inb(0x61) & ~0x02) | 0x01)
        machine.outb(0x43, 0xB0)
        machine.outb(0x42, 0xFF)
        machine.outb(0x42, 0xFF)
        machine.clock.step = 500  // each port read takes 0.5 µs

        func verifyMSB(_ value: UInt8) -> Bool {
            _ = machine.inb(0x42)  // ignore the LSB
            return machine.inb(0x42) == value
        }
        func expectMSB(_ value: UInt8) -> Bool {
            var count = 0
            while count < 50_000 {
                if !verifyMSB(value) { break }
                count += 1
            }
            return count > 5
        }

        _ = verifyMSB(0)  // "the PIT starts counting at the next edge"
        #expect(expectMSB(0xFF))
        var reached = 0
        for i in 1...75 where expectMSB(0xFF - UInt8(i)) {
            reached = i
        }
        #expect(reached == 75)
    }

    // MARK: IRQ 0

    @Test(arguments: [UInt8(0x34), 0x36])
    func periodicModesRaiseOneEdgePerPeriod(controlWord: UInt8) {
        let machine = Machine()
        let latch: UInt16 = 11932  // (1193182 + 50) / 100: HZ = 100
        machine.program(counter: 0, controlWord: controlWord, count: latch)
        for period in UInt64(1)...10 {
            let deadline = origin + nanoseconds(ticks: period * UInt64(latch))
            #expect(machine.pit.nextDeadline == deadline)
            machine.clock.set(deadline - 1)
            machine.pit.advance(to: deadline - 1)
            #expect(machine.line.edges == Int(period) - 1)
            machine.clock.set(deadline)
            machine.pit.advance(to: deadline)
            #expect(machine.line.edges == Int(period))
        }
        #expect(machine.line.levels == Array(repeating: [true, false], count: 10).flatMap { $0 })
        #expect(machine.pit.deliveredTicks == 10)
        #expect(machine.pit.droppedTicks == 0)
    }

    @Test func advancingInSmallStepsGivesExactlyOneEdgePerPeriod() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 1193)  // ≈ 1 kHz
        var now = origin
        while now < origin + 100_000_000 {  // 100 ms in 37 µs steps
            now += 37_000
            machine.clock.set(now)
            machine.pit.advance(to: now)
        }
        #expect(machine.line.edges == Int(PIT8254.ticksElapsed(100_000_000) / 1193))
        #expect(machine.pit.droppedTicks == 0)
    }

    @Test func aLongStallIsCoalescedNotAFlood() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 11932)
        machine.advance(toTick: 100 * 11932 + 5000)  // the timer thread slept through 100 periods
        #expect(machine.line.levels == [true, false])
        #expect(machine.pit.droppedTicks == 99)
        // The next edge is on the original schedule.
        let next = origin + nanoseconds(ticks: 101 * 11932)
        #expect(machine.pit.nextDeadline == next)
        machine.clock.set(next)
        machine.pit.advance(to: next)
        #expect(machine.line.edges == 2)
        #expect(machine.pit.droppedTicks == 99)
    }

    @Test func edgesSeenByAGuestReadAreStillDelivered() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 1000)
        machine.at(tick: 1500)
        _ = machine.latchedCount(counter: 0)  // the vCPU moves the PIT's time past an edge
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 1000))  // overdue: now
        machine.pit.advance(to: machine.clock.peek)
        #expect(machine.line.edges == 1)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 2000))
    }

    @Test func timeNeverRunsBackwards() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x30, count: 1000)
        // The timer thread's `now` may be a little ahead of a vCPU's later clock read.
        machine.pit.advance(to: origin + nanoseconds(ticks: 1000))
        #expect(machine.line.edges == 1)
        machine.at(tick: 600)
        #expect(machine.latchedCount(counter: 0) == 0)  // not 400: the PIT has seen tick 1000
        machine.pit.advance(to: origin)
        machine.advance(toTick: 1000)
        #expect(machine.line.edges == 1)
        #expect(machine.status(counter: 0) & 0x80 != 0)
    }

    @Test func nextDeadlineIsNilUntilProgrammedAndAfterMode0Fires() {
        let machine = Machine()
        #expect(machine.pit.nextDeadline == nil)
        machine.advance(toTick: 1_000_000)
        #expect(machine.line.edges == 0)

        // Linux `pit_shutdown`: mode 0 and a count of 0. It fires once, 65536 ticks later.
        machine.at(tick: 1_000_000)
        machine.program(counter: 0, controlWord: 0x30, count: 0)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 1_065_536))
        machine.advance(toTick: 1_065_535)
        #expect(machine.line.edges == 0)
        machine.advance(toTick: 1_065_536)
        #expect(machine.line.edges == 1)
        #expect(machine.pit.nextDeadline == nil)
        machine.advance(toTick: 3_000_000)  // past the wrap: OUT stays high, no more edges
        #expect(machine.line.edges == 1)
        #expect(machine.pit.nextDeadline == nil)
    }

    @Test func linuxClockeventDisableStopsTheCounter() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 11932)
        machine.advance(toTick: 11932)
        #expect(machine.line.edges == 1)
        // `clockevent_i8253_disable`: mode 0, count 0, then the mode again.
        machine.program(counter: 0, controlWord: 0x30, count: 0)
        machine.outb(0x43, 0x30)
        #expect(machine.pit.nextDeadline == nil)
        machine.advance(toTick: 1_000_000)
        #expect(machine.line.edges == 1)
    }

    @Test func linuxOneshotUsesMode4AndACountPerEvent() {
        let machine = Machine()
        machine.outb(0x43, 0x38)  // `pit_set_oneshot`: mode 4, LSB then MSB
        #expect(machine.pit.nextDeadline == nil)
        // `pit_next_event(1193)`: OUT pulses low at terminal count, rising one tick later.
        machine.outb(0x40, UInt8(1193 & 0xFF))
        machine.outb(0x40, UInt8(1193 >> 8))
        let deadline = origin + nanoseconds(ticks: 1194)
        #expect(machine.pit.nextDeadline == deadline)
        machine.advance(toTick: 1193)
        #expect(machine.line.edges == 0)
        machine.advance(toTick: 1194)
        #expect(machine.line.edges == 1)
        #expect(machine.pit.nextDeadline == nil)
        machine.advance(toTick: 200_000)
        #expect(machine.line.edges == 1)
        // The next event: a new count restarts the counter.
        machine.outb(0x40, 100)
        machine.outb(0x40, 0)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 200_101))
        machine.advance(toTick: 200_101)
        #expect(machine.line.edges == 2)
    }

    @Test func reprogrammingMode0MidCountRestartsIt() {
        let machine = Machine()
        machine.outb(0x61, 0x01)
        machine.program(counter: 2, controlWord: 0xB0, count: 1000)
        machine.at(tick: 600)
        machine.outb(0x42, 0xE8)  // first byte: counting stops, OUT low
        machine.at(tick: 700)
        #expect(machine.latchedCount(counter: 2) == 400)
        machine.outb(0x42, 0x03)  // 1000 again, from tick 700
        machine.at(tick: 1699)
        #expect(!machine.out2)
        machine.at(tick: 1700)
        #expect(machine.out2)

        // Counter 0, mode 0: the deadline moves with the new count.
        machine.program(counter: 0, controlWord: 0x30, count: 5000)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 6700))
        machine.at(tick: 2000)
        machine.program(counter: 0, controlWord: 0x30, count: 100)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 2100))
    }

    @Test func aNewMode2CountTakesEffectAtTheEndOfThePeriod() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 1000)
        machine.at(tick: 300)
        machine.outb(0x40, 0xF4)  // 500, without a Control Word
        machine.outb(0x40, 0x01)
        #expect(machine.status(counter: 0) & 0x40 != 0)  // null count: not yet in CE
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 1000))
        machine.advance(toTick: 1000)
        #expect(machine.status(counter: 0) & 0x40 == 0)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 1500))
        machine.advance(toTick: 1500)
        machine.advance(toTick: 2000)
        #expect(machine.line.edges == 3)
        #expect(machine.latchedCount(counter: 0) == 500)

        // With a Control Word first (as Linux's `pit_set_periodic` does) it restarts at once.
        machine.at(tick: 2100)
        machine.program(counter: 0, controlWord: 0x34, count: 300)
        #expect(machine.pit.nextDeadline == origin + nanoseconds(ticks: 2400))
    }

    @Test func periodicEdgesAreRateLimited() throws {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 2)  // ≈ 597 kHz
        var now = origin
        var lastEdge: UInt64?
        for _ in 0..<100 {  // 1 ms in 10 µs steps
            now += 10_000
            machine.clock.set(now)
            let before = machine.line.edges
            machine.pit.advance(to: now)
            if machine.line.edges > before { lastEdge = now }
            if let lastEdge {
                let deadline = try #require(machine.pit.nextDeadline)
                #expect(deadline >= lastEdge + PIT8254.defaultMinimumPeriodicInterval)
            }
        }
        #expect((5...6).contains(machine.line.edges), "\(machine.line.edges) edges in 1 ms")
        #expect(machine.pit.droppedTicks > 400)  // ≈ 596 edges were due

        // The limit is a parameter; without it every due edge is delivered, one per call.
        let unlimited = Machine(minimumPeriodicInterval: 0)
        unlimited.program(counter: 0, controlWord: 0x34, count: 2)
        for tick in UInt64(1)...20 { unlimited.advance(toTick: 2 * tick) }
        #expect(unlimited.line.edges == 20)
    }

    @Test func reprogrammingCounter0TellsTheVMM() {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 1000)
        let afterProgramming = machine.deadlineChangeCount
        #expect(afterProgramming > 0)
        _ = machine.latchedCount(counter: 0)  // Linux's clocksource read: no wake-up needed
        machine.outb(0x43, 0xC2)
        _ = machine.inb(0x40)
        machine.program(counter: 2, controlWord: 0xB0, count: 1000)
        machine.outb(0x61, 0x01)
        #expect(machine.deadlineChangeCount == afterProgramming)
        machine.outb(0x40, 5)
        #expect(machine.deadlineChangeCount > afterProgramming)
    }

    // MARK: Untrusted input

    @Test func badOffsetsAndWidthsAreHarmless() {
        let machine = Machine()
        var byte: [UInt8] = [0]
        byte.withUnsafeMutableBytes { machine.pit.read(offset: 3, data: $0) }
        #expect(byte == [0xFF])  // the Control Word Register is write-only
        for offset in [UInt64(4), 5, 0x21, .max] {
            var bytes: [UInt8] = [0, 0, 0, 0]
            bytes.withUnsafeMutableBytes { machine.pit.read(offset: offset, data: $0) }
            #expect(bytes == [0xFF, 0xFF, 0xFF, 0xFF])
            [UInt8(0x34), 0, 0, 0].withUnsafeBytes { machine.pit.write(offset: offset, data: $0) }
        }
        #expect(machine.pit.nextDeadline == nil)
        // Zero-width accesses do nothing.
        [UInt8]().withUnsafeBytes { machine.pit.write(offset: 3, data: $0) }
        var empty: [UInt8] = []
        empty.withUnsafeMutableBytes { machine.pit.read(offset: 0, data: $0) }
        empty.withUnsafeMutableBytes { machine.speaker.read(offset: 0, data: $0) }
        [UInt8]().withUnsafeBytes { machine.speaker.write(offset: 0, data: $0) }
        // A wide access is split into byte accesses of consecutive ports, as on the ISA bus.
        machine.outb(0x43, 0x50)  // counter 1, LSB only, mode 0
        machine.outb(0x41, 0x78)
        machine.program(counter: 2, controlWord: 0xB0, count: 0x1234)
        var pair: [UInt8] = [0, 0]
        pair.withUnsafeMutableBytes { machine.pit.read(offset: 1, data: $0) }
        #expect(pair == [0x78, 0x34])
        pair.withUnsafeMutableBytes { machine.pit.read(offset: 2, data: $0) }
        #expect(pair == [0x12, 0xFF])
        [UInt8(0x99), 0x00, 0xB0].withUnsafeBytes { machine.pit.write(offset: 1, data: $0) }  // 0x41, 0x42, 0x43
        #expect(machine.inb(0x41) == 0x99)
        #expect(machine.status(counter: 2) == 0x70)  // the last byte was a Control Word on 0x43
    }

    @Test func garbageNeverCrashes() {
        var random = SplitMix64(state: 0x8254)
        let machine = Machine()
        var now = origin
        for _ in 0..<50_000 {
            let choice = random.next() % 8
            switch choice {
            case 0, 1:
                let width = Int(random.next() % 9)
                let bytes = (0..<width).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                let offset = random.next() % 3 == 0 ? random.next() : random.next() % 6
                bytes.withUnsafeBytes { machine.pit.write(offset: offset, data: $0) }
            case 2:
                // Mostly Control Words, so every mode, access and read-back is exercised.
                machine.outb(0x43, UInt8(truncatingIfNeeded: random.next()))
            case 3:
                var bytes = [UInt8](repeating: 0, count: Int(random.next() % 9))
                let offset = random.next() % 3 == 0 ? random.next() : random.next() % 6
                bytes.withUnsafeMutableBytes { machine.pit.read(offset: offset, data: $0) }
            case 4:
                let bytes = [UInt8(truncatingIfNeeded: random.next())]
                bytes.withUnsafeBytes { machine.speaker.write(offset: random.next() % 3, data: $0) }
                _ = machine.inb(0x61)
            case 5:
                now += random.next() % 2_000_000
                machine.clock.set(now)
            case 6:
                machine.pit.advance(to: random.next() % 4 == 0 ? now + random.next() % 100_000_000 : now)
            default:
                if let deadline = machine.pit.nextDeadline, deadline > now, deadline - now < 100_000_000 {
                    now = deadline
                    machine.clock.set(now)
                    machine.pit.advance(to: now)
                }
            }
        }
        // Time at the end of the range, and backwards, is harmless too.
        machine.clock.set(.max)
        machine.pit.advance(to: .max)
        _ = machine.pit.nextDeadline
        _ = machine.latchedCount(counter: 0)
        machine.pit.advance(to: 0)
        #expect(machine.line.levels.count % 2 == 0)

        // After all that, the PIT still works.
        let fresh = Machine()
        fresh.program(counter: 0, controlWord: 0x34, count: 100)
        fresh.advance(toTick: 100)
        #expect(fresh.line.edges == 1)
    }

    @Test func vcpuReadsAndTheTimerThreadCanRunTogether() {
        let machine = Machine(minimumPeriodicInterval: 0)
        machine.program(counter: 0, controlWord: 0x34, count: 50)
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for step in 0..<5_000 {
                if worker == 0 {
                    let now = origin + UInt64(step) * 1_000
                    machine.clock.set(now)
                    machine.pit.advance(to: now)
                } else {
                    machine.outb(0x43, 0x00)
                    _ = machine.inb(0x40)
                    _ = machine.inb(0x40)
                    _ = machine.pit.nextDeadline
                }
            }
        }
        let levels = machine.line.levels
        #expect(levels.count % 2 == 0)
        #expect(stride(from: 0, to: levels.count, by: 2).allSatisfy { levels[$0] && !levels[$0 + 1] })
        #expect(machine.line.edges > 0)
    }
}

extension PIT8254 {
    /// Whole ticks in `nanoseconds` (test-side arithmetic, independent of the PIT's own).
    fileprivate static func ticksElapsed(_ nanoseconds: UInt64) -> UInt64 {
        nanoseconds * frequency / 1_000_000_000
    }
}

// MARK: - Snapshots

@Suite struct PIT8254StateTests {
    /// Counter 0 in mode 2 (rate generator) of period 1000, exported after 3.5 periods, imported
    /// into a PIT whose clock is 50 s later: it stands where it stood and goes on from there.
    @Test func aRestoredPITContinuesWhereItStood() throws {
        let first = Machine()
        first.at(tick: 0)
        first.program(counter: 0, controlWord: 0x34, count: 1000)  // counter 0, LSB+MSB, mode 2
        first.advance(toTick: 3500)
        let edges = first.line.edges
        let before = first.latchedCount(counter: 0)
        let state = first.pit.exportState()

        let second = Machine()
        second.clock.set(origin + 50_000_000_000)
        try second.pit.importState(state)
        #expect(second.latchedCount(counter: 0) == before, "the count stands where it stood, not 50 s on")
        #expect(second.pit.exportState() == state)
        // 600 more ticks: past the next terminal count (the count was 500), one more edge.
        second.clock.set(origin + 50_000_000_000 + nanoseconds(ticks: 600))
        second.pit.advance(to: second.clock.peek)
        #expect(second.line.edges == 1)
        #expect(edges == 1, "one advance delivers one edge; the three owed were coalesced")
    }

    @Test func impossiblePITStateIsRefused() throws {
        let machine = Machine()
        machine.program(counter: 0, controlWord: 0x34, count: 1000)
        let state = machine.pit.exportState()
        func refused(_ change: (inout [UInt8]) -> Void, _ words: String) {
            var bytes = state
            change(&bytes)
            do {
                try Machine().pit.importState(bytes)
                Issue.record("accepted; expected '\(words)'")
            } catch {
                #expect(error.description.contains(words), "\(error.description)")
            }
        }
        refused({ $0[1] = 0 }, "PIT counter 0 has no read/write mode")
        refused({ $0[2] = 9 }, "PIT counter 0 is in mode 9")
        refused({ for index in 5..<13 { $0[index] = 0 } }, "PIT counter 0 holds count 0")
        refused({ $0[0] = 3 }, "PIT state version 3")
        refused({ $0.removeLast() }, "truncated")
    }
}
