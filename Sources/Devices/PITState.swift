import VMMCore

// The emulated 8254's state for snapshots. The PIT counts CLK ticks of the host's monotonic
// clock, which goes on while a VM sits in a file: every tick and time it holds is exported
// relative to the moment of the export and rebased onto the clock of the import, so the counters
// continue from where they stood (as the KVM clock does), not from where the wall clock went.

extension PIT8254 {
    static let stateVersion: UInt8 = 1
    /// Relative ticks further than this (about 10 days of CLK) are no PIT's.
    static let maximumTickDistance: Int64 = 1 << 40

    /// The counters, latches and pending edges. Call while the VM is paused (the timer quiet).
    public func exportState() -> [UInt8] {
        let now = clock.nanoseconds
        return state.withLock { state in
            state.catchUp(to: Self.ticks(atNanoseconds: now))
            let base = state.tick
            func relative(_ tick: UInt64) -> UInt64 { UInt64(bitPattern: Int64(bitPattern: tick &- base)) }
            var w = StateWriter()
            w.u8(Self.stateVersion)
            for counter in state.channels {
                w.u8(counter.access.rawValue)
                w.u8(counter.modeBits)
                w.bool(counter.bcd)
                w.bool(counter.gate)
                w.u64(counter.countRegister)
                w.bool(counter.hasCount)
                w.optional(counter.pendingLSB) { $0.u8($1) }
                w.bool(counter.readMSBNext)
                w.optional(counter.outputLatch) { w, latch in
                    w.u16(latch.value)
                    w.u8(latch.remaining.rawValue)
                }
                w.optional(counter.statusLatch) { $0.u8($1) }
                w.bool(counter.nullCount)
                w.u64(counter.period)
                switch counter.phase {
                case .idle(let output, let count):
                    w.u8(0)
                    w.bool(output)
                    w.u64(count)
                case .counting(let start):
                    w.u8(1)
                    w.u64(relative(start))
                case .paused(let elapsed):
                    w.u8(2)
                    w.u64(elapsed)
                }
                w.optional(counter.pendingReload) { w, reload in
                    w.u64(relative(reload.tick))
                    w.u64(reload.period)
                }
                w.u64(relative(counter.settledThrough))
            }
            w.u8(state.speakerControl)
            w.u64(state.owedEdges)
            w.u64(relative(state.firstOwedTick))
            w.optional(state.lastDelivery) { $0.u64(UInt64(bitPattern: Int64(bitPattern: $1 &- now))) }
            w.u64(state.deliveredEdges)
            w.u64(state.droppedEdges)
            return w.bytes
        }
    }

    /// Rebuilds the counters from an export, checked as the guest's programming is: access modes
    /// and modes the Control Word can write, counts the counter can hold, GATE wiring of a PC
    /// (counters 0 and 1 high, counter 2 from port 0x61), times within reach of now. Then the
    /// VMM's timer is told to re-read the next deadline.
    public func importState(_ bytes: [UInt8]) throws(StateFormatError) {
        var r = StateReader(bytes)
        let version = try r.u8("the PIT's state")
        guard version == Self.stateVersion else { throw .impossible("PIT state version \(version) (this swiftkvm has \(Self.stateVersion))") }
        let now = clock.nanoseconds
        let base = Self.ticks(atNanoseconds: now)
        func absolute(_ stored: UInt64, _ what: String) throws(StateFormatError) -> UInt64 {
            let delta = Int64(bitPattern: stored)
            guard delta.magnitude <= UInt64(Self.maximumTickDistance) else { throw .impossible("the PIT's \(what) lies \(delta) ticks away") }
            let (value, overflow) = Int64(bitPattern: base).addingReportingOverflow(delta)
            guard !overflow, value >= 0 else { throw .impossible("the PIT's \(what) lies before the clock's start") }
            return UInt64(value)
        }
        var restored = State(tick: base)
        for index in 0..<3 {
            let name = "PIT counter \(index)"
            var counter = Counter(gate: true)
            guard let access = Counter.Access(rawValue: try r.u8(name)), access != .latch else { throw .impossible("\(name) has no read/write mode") }
            counter.access = access
            counter.modeBits = try r.u8(name)
            guard counter.modeBits <= 7 else { throw .impossible("\(name) is in mode \(counter.modeBits)") }
            counter.bcd = try r.bool(name)
            counter.gate = try r.bool(name)
            counter.countRegister = try r.u64(name)
            guard (1...counter.modulus).contains(counter.countRegister) else { throw .impossible("\(name) holds count \(counter.countRegister)") }
            counter.hasCount = try r.bool(name)
            counter.pendingLSB = try r.optional(name) { (r: inout StateReader) throws(StateFormatError) in try r.u8(name) }
            counter.readMSBNext = try r.bool(name)
            counter.outputLatch = try r.optional(name) { (r: inout StateReader) throws(StateFormatError) -> (value: UInt16, remaining: Counter.Access) in
                let value = try r.u16(name)
                guard let remaining = Counter.Access(rawValue: try r.u8(name)), remaining != .latch else { throw .impossible("\(name)'s output latch is empty") }
                return (value, remaining)
            }
            counter.statusLatch = try r.optional(name) { (r: inout StateReader) throws(StateFormatError) in try r.u8(name) }
            counter.nullCount = try r.bool(name)
            counter.period = try r.u64(name)
            guard (1...counter.modulus).contains(counter.period) else { throw .impossible("\(name) counts a period of \(counter.period)") }
            switch try r.u8(name) {
            case 0:
                let output = try r.bool(name)
                let count = try r.u64(name)
                guard count <= counter.modulus else { throw .impossible("\(name) stands at \(count)") }
                counter.phase = .idle(output: output, count: count)
            case 1: counter.phase = .counting(start: try absolute(try r.u64(name), "\(name)'s start"))
            case 2: counter.phase = .paused(elapsed: try r.u64(name))
            case let other: throw .impossible("\(name) is in phase \(other)")
            }
            counter.pendingReload = try r.optional(name) { (r: inout StateReader) throws(StateFormatError) -> (tick: UInt64, period: UInt64) in
                let tick = try absolute(try r.u64(name), "\(name)'s reload")
                let period = try r.u64(name)
                guard (1...counter.modulus).contains(period) else { throw .impossible("\(name) reloads a period of \(period)") }
                return (tick, period)
            }
            counter.settledThrough = min(base, try absolute(try r.u64(name), "\(name)'s last edge"))
            restored.channels[index] = counter
        }
        restored.speakerControl = try r.u8("port 0x61")
        guard restored.speakerControl & 0xF0 == 0 else { throw .impossible("port 0x61 holds 0x\(String(restored.speakerControl, radix: 16))") }
        guard restored.channels[0].gate, restored.channels[1].gate, restored.channels[2].gate == (restored.speakerControl & 1 != 0) else {
            throw .impossible("the PIT's GATE inputs are not wired as in a PC")
        }
        restored.owedEdges = try r.u64("the PIT's owed edges")
        restored.firstOwedTick = min(base, try absolute(try r.u64("the PIT's owed edges"), "first owed edge"))
        restored.lastDelivery = try r.optional("the PIT's last delivery") { (r: inout StateReader) throws(StateFormatError) -> UInt64 in
            let delta = Int64(bitPattern: try r.u64("the PIT's last delivery"))
            let (value, overflow) = Int64(bitPattern: now).addingReportingOverflow(delta)
            guard !overflow, value >= 0, delta <= 0 else { throw .impossible("the PIT's last delivery lies in the future") }
            return UInt64(value)
        }
        restored.deliveredEdges = try r.u64("the PIT's delivered edges")
        restored.droppedEdges = try r.u64("the PIT's dropped edges")
        try r.finish("the PIT's state")
        state.withLock { $0 = restored }
        onDeadlineChange?()
    }
}
