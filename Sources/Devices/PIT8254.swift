import Synchronization
import VMMCore

/// The Intel 8254 Programmable Interval Timer (PIT) at ports 0x40–0x43, plus the timer bits of the
/// NMI Status and Control register at port 0x61, as Linux uses them:
///
/// - Counter 0 drives IRQ 0. `clockevent_i8253_init` (drivers/clocksource/i8253.c) programs it
///   periodic with Control Word 0x34 (mode 2, LSB then MSB) and LATCH = (1193182 + HZ/2) / HZ,
///   oneshot with 0x38 (mode 4) followed by a count per event, and stops it with 0x30 (mode 0) and
///   a count of 0 — since 6.x `clockevent_i8253_disable` writes 0x30 once more, which stops the
///   counter outright.
/// - The PIT clocksource (`i8253_read`) issues the Counter Latch Command (Control Word 0x00) and
///   reads Counter 0's Output Latch, LSB then MSB.
/// - TSC calibration (arch/x86/kernel/tsc.c) uses Counter 2, whose GATE is port 0x61 bit 0:
///   `pit_calibrate_tsc` programs mode 0 (Control Word 0xB0) and polls port 0x61 bit 5 (OUT2)
///   until it goes high; `quick_pit_calibrate` reads the live count LSB, MSB over and over
///   (`pit_expect_msb`).
///
/// The model is a pure state machine: time is an input. The counters are not stepped; each keeps
/// the CLK tick its Counting Element (CE) was loaded at and derives the count and OUT from the
/// ticks elapsed since, where ticks = nanoseconds × 1,193,182 / 10⁹ from the injected
/// `GuestClock`. Port accesses read that clock; the VMM's timer thread calls `advance(to:)` with
/// the same clock's time, sleeping in between until `nextDeadline`.
///
/// Interrupts: each rising edge of Counter 0's OUT becomes an edge on IRQ 0 — `setLevel(true)`
/// then `setLevel(false)` on the `InterruptLine` (KVM_IRQ_LINE into the in-kernel PIC/IOAPIC takes
/// edges). Edges are delivered only by `advance(to:)`, at most one per call: when the timer thread
/// falls behind by several periods, the missed edges are coalesced into that one and counted in
/// `droppedTicks`. A burst of edges would not help: the PIC latches an edge in IRR until the guest
/// acknowledges it, so back-to-back edges merge anyway, and Linux recovers lost ticks from its
/// clocksource. Periodic modes (2 and 3) are also rate-limited to one edge per
/// `minimumPeriodicInterval` (KVM's in-kernel PIT does the same with `min_timer_period_us`), so a
/// guest that programs a count of 2 cannot make the host timer thread spin at 600 kHz. Oneshot
/// modes are paced by the guest's own port writes and are not limited.
///
/// Simplifications, all harmless for Linux:
/// - Counters 0 and 1 have GATE tied high, as on a PC; only Counter 2's GATE is wired (port 0x61).
///   So modes 1 and 5 (hardware-retriggered) never start on Counters 0 and 1, as on real hardware.
/// - A count is loaded on the write itself, not on the next CLK pulse, so mode 0's OUT rises N
///   ticks (not N + 1) after the count is written.
/// - BCD counting (Control Word bit 0) is supported: counts are written and read as four BCD
///   digits and wrap at 10000. Nibbles above 9 are taken at face value (and reduced mod 10000).
/// - Mode 3 with an odd count keeps the datasheet's half-periods — OUT high for (N + 1) / 2 ticks,
///   low for (N - 1) / 2 — but the count read back steps N, N-2, … in both halves rather than
///   following the datasheet's odd-count loading exactly.
/// - A new count written in modes 2 and 3 without a new Control Word takes effect at the end of the
///   current period (the datasheet has mode 3 switch at the end of the current half-cycle).
/// - Counts of 1 in modes 2 and 3 (illegal per the datasheet) run with a period of 1 tick; the
///   rate limit above keeps them harmless.
///
/// Thread safety: `read`, `write`, `advance(to:)` and the properties may be called from any thread.
/// All state sits behind one `Mutex`; the clock is read inside it. The `InterruptLine` is called
/// outside that lock (so a vCPU reading the counter never waits on KVM_IRQ_LINE), under a second
/// lock that keeps each raise-then-lower pair whole and pairs in the order they were decided.
/// `onDeadlineChange` is also called outside the lock.
public final class PIT8254: BusDevice, @unchecked Sendable {
    /// Counter 0's data port; Counters 1 and 2 and the Control Word Register follow.
    public static let basePort: UInt16 = 0x40
    /// Ports 0x40 (Counter 0), 0x41 (Counter 1), 0x42 (Counter 2), 0x43 (Control Word Register).
    public static let portCount: UInt64 = 4
    /// The NMI Status and Control register (a.k.a. port B): Counter 2's GATE, speaker data, OUT2.
    public static let speakerControlPort: UInt16 = 0x61
    /// Counter 0's OUT is wired to IRQ 0 (ISA) / GSI 2 on the IOAPIC via KVM's routing of GSI 0.
    public static let irq: UInt32 = 0
    /// The CLK input of all three counters, in Hz (PIT_TICK_RATE in Linux).
    public static let inputFrequency: UInt64 = 1_193_182
    /// The default for `minimumPeriodicInterval`: 200 µs, KVM's `min_timer_period_us` default.
    public static let defaultMinimumPeriodicInterval: UInt64 = 200_000

    /// Periodic modes (2 and 3) deliver at most one IRQ 0 edge per this many nanoseconds.
    public let minimumPeriodicInterval: UInt64

    let clock: any GuestClock
    private let interruptLine: any InterruptLine
    let onDeadlineChange: (() -> Void)?
    let state: Mutex<State>
    /// Held while an edge is driven onto the interrupt line, never together with `state`.
    private let delivery = Mutex(())

    /// - Parameters:
    ///   - clock: the guest's monotonic time; the only source of time the PIT sees.
    ///   - interruptLine: IRQ 0; receives `setLevel(true)` then `setLevel(false)` per tick.
    ///   - minimumPeriodicInterval: the shortest spacing of IRQ 0 edges in modes 2 and 3, in ns.
    ///   - onDeadlineChange: called on the vCPU thread, outside the PIT's lock, after the guest
    ///     writes Counter 0's count or Control Word (not for latch or read-back commands), so the VMM
    ///     can wake its timer thread to re-read `nextDeadline`. It may call back into the PIT.
    public init(
        clock: any GuestClock,
        interruptLine: any InterruptLine,
        minimumPeriodicInterval: UInt64 = defaultMinimumPeriodicInterval,
        onDeadlineChange: (() -> Void)? = nil
    ) {
        self.clock = clock
        self.interruptLine = interruptLine
        self.minimumPeriodicInterval = minimumPeriodicInterval
        self.onDeadlineChange = onDeadlineChange
        self.state = Mutex(State(tick: Self.ticks(atNanoseconds: clock.nanoseconds)))
    }

    // MARK: - Bus access (ports 0x40–0x43)

    /// A read of `data.count` bytes is taken as that many one-byte reads of consecutive ports, the
    /// way the ISA bus splits a wide `in`. Ports past 0x43 (and the write-only Control Word
    /// Register, which the datasheet calls a no-operation on read) read 0xFF.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        state.withLock { state in
            state.catchUp(to: Self.ticks(atNanoseconds: clock.nanoseconds))
            for index in data.indices {
                let (port, overflow) = offset.addingReportingOverflow(UInt64(index))
                guard !overflow, port < 3 else {
                    data[index] = 0xFF
                    continue
                }
                data[index] = state.channels[Int(port)].readData(at: state.tick)
            }
        }
    }

    /// A write of `data.count` bytes is taken as one-byte writes to consecutive ports; bytes for
    /// ports past 0x43 are dropped.
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard !data.isEmpty else { return }
        let counter0Changed = state.withLock { state -> Bool in
            state.catchUp(to: Self.ticks(atNanoseconds: clock.nanoseconds))
            var changed = false
            for index in data.indices {
                let (port, overflow) = offset.addingReportingOverflow(UInt64(index))
                guard !overflow, port < 4 else { continue }
                let byte = data[index]
                if port == 3 {
                    changed = state.writeControlWord(byte) || changed
                } else {
                    state.channels[Int(port)].writeData(byte, at: state.tick)
                    changed = changed || port == 0
                }
            }
            return changed
        }
        if counter0Changed { onDeadlineChange?() }
    }

    // MARK: - Port 0x61

    /// Port 0x61, the NMI Status and Control register, as its own bus device (the VMM inserts it
    /// at `speakerControlPort`, one port long):
    ///
    /// | bit | name (Intel PCH datasheet) | here |
    /// | --- | --- | --- |
    /// | 0 | TIM_CNT2_EN — Counter 2 GATE | read/write |
    /// | 1 | SPKR_DAT_EN — speaker data | read/write, stored only |
    /// | 2 | PCI_SERR_EN | read/write, stored only |
    /// | 3 | IOCHK_NMI_EN | read/write, stored only |
    /// | 4 | REF_TOGGLE — refresh cycle toggle | read-only, flips every 15.085 µs of guest time |
    /// | 5 | TMR2_OUT_STS — Counter 2 OUT | read-only |
    /// | 6, 7 | IOCHK_NMI_STS, SERR_NMI_STS | read as 0 |
    ///
    /// It holds a strong reference to the PIT; the PIT does not keep the view, so there is no cycle.
    public final class SpeakerPort: BusDevice, @unchecked Sendable {
        let pit: PIT8254

        init(pit: PIT8254) { self.pit = pit }

        public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
            guard !data.isEmpty else { return }
            for index in data.indices { data[index] = 0xFF }
            guard offset == 0 else { return }
            data[0] = pit.readSpeakerControl()
        }

        public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
            guard offset == 0, let byte = data.first else { return }
            pit.writeSpeakerControl(byte)
        }
    }

    /// A bus device for port 0x61 that shares this PIT's state.
    public var speakerPort: SpeakerPort { SpeakerPort(pit: self) }

    /// REF_TOGGLE's half period: the DRAM refresh request Counter 1 once generated every 15.085 µs.
    static let refreshToggleNanoseconds: UInt64 = 15_085

    func readSpeakerControl() -> UInt8 {
        let nanoseconds = clock.nanoseconds
        return state.withLock { state in
            state.catchUp(to: Self.ticks(atNanoseconds: nanoseconds))
            var value = state.speakerControl & 0x0F
            if (nanoseconds / Self.refreshToggleNanoseconds) & 1 == 1 { value |= 0x10 }
            if state.channels[2].output(at: state.tick) { value |= 0x20 }
            return value
        }
    }

    func writeSpeakerControl(_ byte: UInt8) {
        state.withLock { state in
            state.catchUp(to: Self.ticks(atNanoseconds: clock.nanoseconds))
            state.speakerControl = byte & 0x0F
            state.channels[2].setGate(byte & 0x01 != 0, at: state.tick)
        }
    }

    // MARK: - Time

    /// Delivers Counter 0's OUT rising edges due by `now` (nanoseconds of the same `GuestClock`) as
    /// IRQ 0 edges: at most one per call, the rest coalesced (see the type's documentation). Call
    /// it from the VMM's timer thread at or after `nextDeadline`. A `now` earlier than a time the
    /// PIT has already seen moves nothing backwards.
    public func advance(to now: UInt64) {
        let minimumInterval = minimumPeriodicInterval
        let deliver = state.withLock { state -> Bool in
            state.catchUp(to: Self.ticks(atNanoseconds: now))
            guard state.owedEdges > 0 else { return false }
            if state.channels[0].isPeriodic, let last = state.lastDelivery,
                now < Self.saturatingAdd(last, minimumInterval)
            {
                return false  // rate-limited: the owed edge waits (and merges with later ones)
            }
            state.droppedEdges += state.owedEdges - 1
            state.deliveredEdges += 1
            state.owedEdges = 0
            state.lastDelivery = now
            return true
        }
        guard deliver else { return }
        delivery.withLock { _ in
            interruptLine.setLevel(true)
            interruptLine.setLevel(false)
        }
    }

    /// When (nanoseconds of the `GuestClock`) `advance(to:)` next has an IRQ 0 edge to deliver, or
    /// nil if Counter 0 will raise none without being reprogrammed (never programmed, stopped by a
    /// Control Word, mode 0 or 4 past terminal count, modes 1 and 5 whose GATE never rises). The
    /// time may already have passed if an edge is waiting.
    public var nextDeadline: UInt64? {
        let minimumInterval = minimumPeriodicInterval
        return state.withLock { state -> UInt64? in
            let counter = state.channels[0]
            let tick: UInt64
            if state.owedEdges > 0 {
                tick = state.firstOwedTick
            } else if let next = counter.nextEdgeTick() {
                tick = next
            } else {
                return nil
            }
            var deadline = Self.nanoseconds(reachingTick: tick)
            if counter.isPeriodic, let last = state.lastDelivery {
                deadline = max(deadline, Self.saturatingAdd(last, minimumInterval))
            }
            return deadline
        }
    }

    /// IRQ 0 edges delivered so far.
    public var deliveredTicks: UInt64 { state.withLock { $0.deliveredEdges } }

    /// Counter 0 OUT rising edges merged into another delivered edge because `advance(to:)` came
    /// late (or the periodic rate limit applied).
    public var droppedTicks: UInt64 { state.withLock { $0.droppedEdges } }

    // MARK: - Tick arithmetic

    /// Whole CLK ticks in `nanoseconds`: ⌊ns × 1193182 / 10⁹⌋, computed in 128 bits.
    static func ticks(atNanoseconds nanoseconds: UInt64) -> UInt64 {
        let product = nanoseconds.multipliedFullWidth(by: inputFrequency)
        // product.high < 1193182 < 10⁹, so the quotient fits in 64 bits.
        return UInt64(1_000_000_000).dividingFullWidth(product).quotient
    }

    /// The first nanosecond at which `ticks(atNanoseconds:)` reaches `tick`: ⌈tick × 10⁹ / 1193182⌉,
    /// saturating at `UInt64.max`.
    static func nanoseconds(reachingTick tick: UInt64) -> UInt64 {
        let product = tick.multipliedFullWidth(by: 1_000_000_000)
        guard product.high < inputFrequency else { return .max }
        let (quotient, remainder) = inputFrequency.dividingFullWidth(product)
        return remainder == 0 ? quotient : saturatingAdd(quotient, 1)
    }

    static func saturatingAdd(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }
}

// MARK: - State

extension PIT8254 {
    /// Everything the mutex protects.
    struct State {
        var channels: [Counter] = [Counter(gate: true), Counter(gate: true), Counter(gate: false)]
        /// The latest CLK tick the PIT has seen; never moves backwards.
        var tick: UInt64
        /// Port 0x61 bits 3:0 as last written.
        var speakerControl: UInt8 = 0
        /// Counter 0 OUT rising edges that happened but have not been delivered yet.
        var owedEdges: UInt64 = 0
        /// The tick of the earliest of those.
        var firstOwedTick: UInt64 = 0
        /// The `now` of the last delivered edge.
        var lastDelivery: UInt64?
        var deliveredEdges: UInt64 = 0
        var droppedEdges: UInt64 = 0

        init(tick: UInt64) {
            self.tick = tick
            for index in channels.indices { channels[index].settledThrough = tick }
        }

        /// Moves time forward to `tick` (never back) and collects Counter 0's OUT edges on the way.
        /// Every access calls this first, so a counter's state only ever changes at `self.tick`.
        mutating func catchUp(to newTick: UInt64) {
            tick = max(tick, newTick)
            for index in channels.indices {
                let (count, first) = channels[index].settle(through: tick)
                guard index == 0, count > 0 else { continue }
                if owedEdges == 0 { firstOwedTick = first }
                owedEdges += count
            }
        }

        /// A write to the Control Word Register (port 0x43). Returns whether Counter 0's schedule may
        /// have changed.
        mutating func writeControlWord(_ word: UInt8) -> Bool {
            let select = Int(word >> 6)  // SC1:SC0
            if select == 3 {
                // Read-Back Command: D5 = !COUNT, D4 = !STATUS, D3:D1 = CNT2, CNT1, CNT0. D0 is
                // reserved ("must be 0"); a guest that sets it gets the command carried out anyway.
                let latchCount = word & 0x20 == 0
                let latchStatus = word & 0x10 == 0
                for index in 0..<3 where word & (2 << UInt8(index)) != 0 {
                    if latchStatus { channels[index].latchStatus(at: tick) }
                    if latchCount { channels[index].latchCount(at: tick) }
                }
                return false
            }
            let access = Counter.Access(rawValue: (word >> 4) & 3) ?? .latch  // RW1:RW0
            if access == .latch {  // Counter Latch Command
                channels[select].latchCount(at: tick)
                return false
            }
            channels[select].program(access: access, modeBits: (word >> 1) & 7, bcd: word & 1 != 0, at: tick)
            return select == 0
        }
    }
}

// MARK: - One counter

extension PIT8254 {
    /// One of the three counters: its Count Register (CR), Counting Element (CE), Output Latch (OL),
    /// status latch and the byte-pointer flip-flops.
    struct Counter {
        /// RW1:RW0 of the Control Word.
        enum Access: UInt8 {
            case latch = 0, lsb = 1, msb = 2, lsbThenMsb = 3
        }

        /// Where the Counting Element stands.
        enum Phase {
            /// Not counting: after a Control Word until a count is written (the datasheet: writing
            /// the Control Word stops the counter), in mode 0 between the two bytes of a count, and
            /// in modes 1 and 5 until the GATE trigger. OUT and the count hold.
            case idle(output: Bool, count: UInt64)
            /// Counting since CLK tick `start`, with `period` as the loaded value.
            case counting(start: UInt64)
            /// GATE low stopped counting after `elapsed` ticks (modes 0, 2, 3, 4).
            case paused(elapsed: UInt64)
        }

        var access: Access = .lsbThenMsb
        /// M2:M0 as programmed (6 and 7 are modes 2 and 3 again; status reports them as written).
        var modeBits: UInt8 = 0
        var bcd = false
        var gate: Bool
        /// CR as a count: 1 … 65536 (binary) or 1 … 10000 (BCD); a written 0 is the maximum.
        var countRegister: UInt64 = 0x1_0000
        /// Whether a whole count has been written since the last Control Word.
        var hasCount = false
        /// The LSB of a two-byte count, waiting for its MSB (the write byte pointer).
        var pendingLSB: UInt8?
        /// The read byte pointer for unlatched two-byte reads.
        var readMSBNext = false
        /// OL after a Counter Latch / Read-Back: the value and which byte(s) remain to read.
        var outputLatch: (value: UInt16, remaining: Access)?
        var statusLatch: UInt8?
        /// Status bit 6: CR written (or Control Word written) but not yet loaded into CE.
        var nullCount = true
        /// The value CE was last loaded with: the period of modes 2 and 3, the count of the others.
        var period: UInt64 = 0x1_0000
        var phase: Phase = .idle(output: false, count: 0)
        /// Modes 2 and 3: a count written while counting, loaded when the current period ends.
        var pendingReload: (tick: UInt64, period: UInt64)?
        /// OUT edges up to this tick have been accounted for.
        var settledThrough: UInt64 = 0

        init(gate: Bool) { self.gate = gate }

        /// The effective mode, 0–5 (6 and 7 alias 2 and 3).
        var mode: UInt8 { modeBits > 5 ? modeBits - 4 : modeBits }
        var isPeriodic: Bool { mode == 2 || mode == 3 }
        var modulus: UInt64 { bcd ? 10_000 : 0x1_0000 }

        // MARK: Time

        func elapsed(at tick: UInt64) -> UInt64? {
            switch phase {
            case .idle: nil
            case .counting(let start): tick >= start ? tick - start : 0
            case .paused(let elapsed): elapsed
            }
        }

        /// CE in binary, 0 ..< modulus.
        func count(at tick: UInt64) -> UInt64 {
            if case .idle(_, let count) = phase { return count % modulus }
            let elapsed = elapsed(at: tick) ?? 0
            let n = period
            let value: UInt64
            switch mode {
            case 2:
                value = n - elapsed % n  // N, N-1, …, 1, then reload
            case 3:
                let phase = elapsed % n
                let high = (n + 1) / 2
                value = phase < high ? n - 2 * phase : n - 2 * (phase - high)  // decrements by two
            default:
                value = (n % modulus + modulus - elapsed % modulus) % modulus  // wraps after terminal count
            }
            return value % modulus
        }

        /// The level of OUT.
        func output(at tick: UInt64) -> Bool {
            switch phase {
            case .idle(let output, _):
                return output
            case .paused(let elapsed):
                return isPeriodic ? true : Self.output(mode: mode, period: period, elapsed: elapsed)
            case .counting:
                return Self.output(mode: mode, period: period, elapsed: elapsed(at: tick) ?? 0)
            }
        }

        static func output(mode: UInt8, period n: UInt64, elapsed: UInt64) -> Bool {
            switch mode {
            case 0, 1: elapsed >= n  // low until terminal count, then high
            case 2: n == 1 || elapsed % n != n - 1  // low for the one clock at count 1
            case 3: elapsed % n < (n + 1) / 2  // high for the first half, low for the second
            default: elapsed != n  // modes 4, 5: one low clock at terminal count
            }
        }

        /// The first OUT rising edge, in ticks since CE was loaded, strictly after `elapsed`.
        static func firstEdge(mode: UInt8, period n: UInt64, after elapsed: UInt64) -> UInt64? {
            switch mode {
            case 0, 1: elapsed < n ? n : nil
            case 2, 3: (elapsed / n + 1) * n
            default: elapsed <= n ? n + 1 : nil
            }
        }

        /// OUT rising edges in the elapsed-tick interval (from, to].
        static func edges(mode: UInt8, period n: UInt64, from: UInt64, to: UInt64) -> UInt64 {
            guard to > from else { return 0 }
            switch mode {
            case 0, 1: return from < n && n <= to ? 1 : 0
            case 2, 3: return to / n - from / n
            default: return from <= n && n + 1 <= to ? 1 : 0
            }
        }

        /// Rising edges between `settledThrough` and `end` while counting from `start`, and the tick of
        /// the first one.
        func edges(countingFrom start: UInt64, through end: UInt64) -> (count: UInt64, first: UInt64) {
            guard end > start else { return (0, 0) }
            let from = settledThrough > start ? settledThrough - start : 0
            let count = Self.edges(mode: mode, period: period, from: from, to: end - start)
            guard count > 0, let first = Self.firstEdge(mode: mode, period: period, after: from) else { return (0, 0) }
            return (count, start + first)
        }

        /// Brings the counter to `tick`: loads a pending reload whose period has ended, and returns
        /// the OUT rising edges since the last settle with the tick of the first.
        mutating func settle(through tick: UInt64) -> (count: UInt64, first: UInt64) {
            guard tick > settledThrough else { return (0, 0) }
            var total: UInt64 = 0
            var first: UInt64 = 0
            if case .counting(let start) = phase, let reload = pendingReload, reload.tick <= tick {
                let before = edges(countingFrom: start, through: reload.tick)
                total = before.count
                first = before.first
                phase = .counting(start: reload.tick)
                period = reload.period
                pendingReload = nil
                nullCount = false
                settledThrough = reload.tick
            }
            if case .counting(let start) = phase {
                let after = edges(countingFrom: start, through: tick)
                if total == 0 { first = after.first }
                total += after.count
            }
            settledThrough = tick
            return (total, first)
        }

        /// The tick of the next OUT rising edge after `settledThrough`, if one will come unprompted.
        func nextEdgeTick() -> UInt64? {
            guard case .counting(let start) = phase else { return nil }
            let from = settledThrough > start ? settledThrough - start : 0
            guard let edge = Self.firstEdge(mode: mode, period: period, after: from) else { return nil }
            return PIT8254.saturatingAdd(start, edge)
        }

        // MARK: Control Word

        /// A Control Word selecting this counter with RW ≠ 00: sets the mode, stops CE, resets the
        /// byte pointers and latches. OUT goes low in mode 0 and high in every other mode.
        mutating func program(access: Access, modeBits: UInt8, bcd: Bool, at tick: UInt64) {
            let current = count(at: tick)
            self.access = access
            self.modeBits = modeBits
            self.bcd = bcd
            pendingLSB = nil
            readMSBNext = false
            outputLatch = nil
            statusLatch = nil
            hasCount = false
            nullCount = true
            pendingReload = nil
            phase = .idle(output: mode != 0, count: current)
        }

        /// Counter Latch Command, or Read-Back with COUNT = 0. A second latch before OL has been read
        /// is ignored (datasheet).
        mutating func latchCount(at tick: UInt64) {
            guard outputLatch == nil else { return }
            outputLatch = (displayed(count(at: tick)), access)
        }

        /// Read-Back with STATUS = 0: OUTPUT, NULL COUNT, RW1:RW0, M2:M0, BCD. Ignored if a status is
        /// already latched and unread.
        mutating func latchStatus(at tick: UInt64) {
            guard statusLatch == nil else { return }
            var status = access.rawValue << 4 | modeBits << 1 | (bcd ? 1 : 0)
            if output(at: tick) { status |= 0x80 }
            if nullCount { status |= 0x40 }
            statusLatch = status
        }

        // MARK: Data port

        func displayed(_ count: UInt64) -> UInt16 {
            bcd ? Self.bcdEncoded(count) : UInt16(truncatingIfNeeded: count)
        }

        /// A read of the counter's port: a latched status first, then a latched count (held until
        /// read in full), else the live CE.
        mutating func readData(at tick: UInt64) -> UInt8 {
            if let status = statusLatch {
                statusLatch = nil
                return status
            }
            if let latch = outputLatch {
                switch latch.remaining {
                case .lsbThenMsb:
                    outputLatch = (latch.value, .msb)
                    return UInt8(truncatingIfNeeded: latch.value)
                case .msb:
                    outputLatch = nil
                    return UInt8(truncatingIfNeeded: latch.value >> 8)
                case .lsb, .latch:
                    outputLatch = nil
                    return UInt8(truncatingIfNeeded: latch.value)
                }
            }
            let value = displayed(count(at: tick))
            switch access {
            case .msb:
                return UInt8(truncatingIfNeeded: value >> 8)
            case .lsbThenMsb:
                defer { readMSBNext.toggle() }
                return UInt8(truncatingIfNeeded: readMSBNext ? value >> 8 : value)
            case .lsb, .latch:
                return UInt8(truncatingIfNeeded: value)
            }
        }

        /// A write of the counter's port: a byte of the count, per RW1:RW0.
        mutating func writeData(_ byte: UInt8, at tick: UInt64) {
            switch access {
            case .lsb:
                load(UInt16(byte), at: tick)
            case .msb:
                load(UInt16(byte) << 8, at: tick)
            case .lsbThenMsb:
                if let low = pendingLSB {
                    pendingLSB = nil
                    load(UInt16(byte) << 8 | UInt16(low), at: tick)
                } else {
                    pendingLSB = byte
                    if mode == 0 {
                        // Mode 0: "writing the first byte disables counting; OUT is set low immediately".
                        phase = .idle(output: false, count: count(at: tick))
                        pendingReload = nil
                    }
                }
            case .latch:
                break  // cannot be programmed; kept for exhaustiveness
            }
        }

        /// A whole count has reached CR.
        mutating func load(_ raw: UInt16, at tick: UInt64) {
            var value = bcd ? Self.bcdDecoded(raw) % 10_000 : UInt64(raw)
            if value == 0 { value = modulus }  // 0 is 65536 (binary) or 10000 (BCD)
            countRegister = value
            let first = !hasCount
            hasCount = true
            switch mode {
            case 0, 4:
                // Loaded into CE at once (datasheet: on the next CLK); a new count restarts the count.
                period = value
                nullCount = false
                pendingReload = nil
                phase = gate ? .counting(start: tick) : .paused(elapsed: 0)
            case 1, 5:
                // CR waits for the GATE trigger; a count in progress is not disturbed.
                nullCount = true
            default:  // 2, 3
                if first {
                    period = value
                    nullCount = false
                    phase = gate ? .counting(start: tick) : .paused(elapsed: 0)
                } else if case .counting(let start) = phase {
                    // Datasheet: a new count does not affect the current period.
                    let elapsed = tick >= start ? tick - start : 0
                    let boundary = PIT8254.saturatingAdd(start, (elapsed / period + 1) * period)
                    pendingReload = (boundary, value)
                    nullCount = true
                } else {
                    nullCount = true  // paused by GATE low: loaded on the GATE rising edge
                }
            }
        }

        /// GATE changes (Counter 2 only, from port 0x61 bit 0).
        mutating func setGate(_ level: Bool, at tick: UInt64) {
            guard level != gate else { return }
            gate = level
            switch mode {
            case 0, 4:
                // GATE low suspends counting; high resumes it.
                if !level, case .counting(let start) = phase {
                    phase = .paused(elapsed: tick >= start ? tick - start : 0)
                } else if level, case .paused(let elapsed) = phase {
                    phase = .counting(start: tick >= elapsed ? tick - elapsed : 0)
                }
            case 1, 5:
                // A rising GATE (re)triggers: CR is loaded into CE and counting starts.
                if level && hasCount {
                    period = countRegister
                    nullCount = false
                    phase = .counting(start: tick)
                }
            default:  // 2, 3
                // GATE low stops counting and forces OUT high; the rising edge reloads CR.
                if !level, case .counting(let start) = phase {
                    phase = .paused(elapsed: tick >= start ? tick - start : 0)
                    pendingReload = nil
                } else if level && hasCount {
                    period = countRegister
                    nullCount = false
                    pendingReload = nil
                    phase = .counting(start: tick)
                }
            }
        }

        // MARK: BCD

        /// Four BCD digits as a number; nibbles above 9 are taken at face value.
        static func bcdDecoded(_ raw: UInt16) -> UInt64 {
            let value = UInt64(raw)
            return ((value >> 12) & 0xF) * 1000 + ((value >> 8) & 0xF) * 100 + ((value >> 4) & 0xF) * 10 + (value & 0xF)
        }

        /// A number below 10000 as four BCD digits.
        static func bcdEncoded(_ value: UInt64) -> UInt16 {
            let value = value % 10_000
            // Parenthesised: in Swift, << binds tighter than / and %.
            return UInt16((value / 1000) << 12 | (value / 100 % 10) << 8 | (value / 10 % 10) << 4 | value % 10)
        }
    }
}
