import Synchronization
import VMMCore

/// A 16550A UART (National Semiconductor PC16550D datasheet), enough for Linux's 8250 driver
/// (`drivers/tty/serial/8250/8250_port.c`): it passes `autoconfig` (IER, loopback/MSR and FIFO
/// probes), so the guest sees a "16550A", and then runs on the THRE and received-data interrupts.
///
/// The eight registers sit at offsets 0–7 from the base port; with the divisor latch access bit
/// (LCR bit 7, DLAB) set, offsets 0 and 1 are the divisor latch DLL/DLM instead of RBR/THR and IER.
///
/// Transmitting is instantaneous: a byte written to THR goes to `output` at once (or, in loopback
/// mode, to the receive FIFO), so LSR's THRE and TEMT read set whenever the guest looks. Bytes from
/// the host come in through `enqueueInput`, into a receive FIFO of `receiveFIFOCapacity` bytes; once
/// it is full further bytes are refused (not dropped), and the host offers them again later.
///
/// Simplifications, none of which Linux notices: the baud rate, word length, parity and break are
/// stored but not acted on; the receive FIFO is 64 bytes deep in 16450 mode too, and its trigger
/// level (FCR bits 7:6) is ignored: "received data available" is pending whenever the FIFO holds
/// a byte, so the character-timeout source (IIR 0x0C) never appears. MCR OUT2 does not gate the
/// interrupt as it does on a PC's ISA bus. Outside loopback the modem inputs are held at
/// DCD, DSR and CTS asserted (MSR 0xB0): a cable with a ready peer.
///
/// ## Interrupts
///
/// The level is computed in one place (`State.pendingInterrupt`, from IER and the sources) after
/// every access and driven only when it changes. IIR reports the highest-priority pending source:
/// receiver line status (overrun, cleared by reading LSR), received data (while the FIFO is not
/// empty), THRE, modem status (MSR deltas, cleared by reading MSR). The THRE interrupt becomes
/// pending when THR empties or when IER's ETBEI goes from 0 to 1 with THR empty (Linux's THRE test
/// toggles it); reading IIR while it is the reported source, writing THR, or clearing ETBEI clears
/// it. Because transmitting is instantaneous, a THR write leaves THRE pending again: the line is
/// not pulsed low and high for every byte, it stays where it was.
///
/// ## Threads
///
/// A vCPU thread calls `read`/`write` while the host's console thread calls `enqueueInput`; all
/// register state lives in one `Mutex`.
///
/// - The interrupt line is driven *inside* the lock. The level must reach the line in the order the
///   state changed: if each thread applied its level after unlocking, the host thread could compute
///   "high" (a byte arrived), the vCPU drain the FIFO and apply "low", and the host then apply its
///   stale "high" — a line stuck high with nothing pending, which on the edge-triggered ISA IRQ 4
///   swallows every later interrupt. A second lock just to order the calls would be the same lock
///   by another name. So an `InterruptLine` must not call back into this device (KVM_IRQ_LINE
///   does not).
/// - `output` is called *outside* the lock, so a slow sink (a full stdout pipe) never stalls the
///   host's input thread, and the sink may itself call `enqueueInput` (an expect-style harness
///   answering a prompt). To keep causality, the byte is handed to `output` while the transmitter
///   still reads busy (LSR THRE/TEMT clear) and before the THRE interrupt is raised again: another
///   vCPU that waits for either (polling LSR or taking the interrupt) writes its next byte only
///   after this one has left. The writing vCPU itself is inside its `out` instruction throughout, so
///   to it the transmit is instantaneous.
public final class Serial16550: BusDevice, @unchecked Sendable {
    // @unchecked: all mutable state is inside `state` (a Mutex); `output` and `interrupt` are
    // immutable references the caller provides, called from whichever thread drives the device.

    /// The first PC serial port, COM1.
    public static let com1: UInt16 = 0x3F8
    /// COM1's ISA interrupt.
    public static let com1IRQ: UInt32 = 4
    /// The UART occupies eight ports from its base.
    public static let portCount: UInt64 = 8
    /// Bytes the receive FIFO holds (as rust-vmm's vm-superio), so neither the host nor a guest in
    /// loopback can make it grow without bound.
    public static let receiveFIFOCapacity = 64

    private let output: (UInt8) -> Void
    private let interrupt: (any InterruptLine)?
    let state = Mutex(State())

    /// - Parameters:
    ///   - interrupt: the UART's interrupt output (COM1: IRQ 4), or nil to run polled only.
    ///   - output: receives every byte the guest transmits (not those sent in loopback mode).
    public init(interrupt: (any InterruptLine)? = nil, output: @escaping (UInt8) -> Void) {
        self.interrupt = interrupt
        self.output = output
    }

    // MARK: Host side

    /// Offers host bytes to the guest (host → guest). They are accepted in order until the receive
    /// FIFO is full; returns how many were taken, so the caller can offer the rest later. Elements
    /// past the last accepted one are not consumed from `bytes`.
    ///
    /// In loopback mode (MCR bit 4) the receiver is disconnected from the serial input, so nothing
    /// is accepted until the guest leaves it.
    @discardableResult
    public func enqueueInput(_ bytes: some Sequence<UInt8>) -> Int {
        state.withLock { state in
            guard !state.isLoopback else { return 0 }
            var accepted = 0
            var iterator = bytes.makeIterator()
            while !state.receiveFIFO.isFull, let byte = iterator.next() {
                state.receiveFIFO.append(byte)
                accepted += 1
            }
            if accepted > 0 { updateInterruptLine(&state) }
            return accepted
        }
    }

    /// Whether the guest's driver is reading the port: received-data interrupts enabled, the
    /// FIFOs on, no loopback. Linux's 8250 driver clears and disables the FIFOs when the tty is
    /// opened (`serial8250_do_startup`), then in `serial8250_do_set_termios` writes IER (RDI on)
    /// and only after the divisor and LCR turns the FIFOs on again, which clears the receive FIFO
    /// once more: input offered before the FIFOs are on would be thrown away.
    public var isReceiving: Bool {
        state.withLock { state in
            !state.isLoopback && state.fifosEnabled && state.interruptEnable & Self.ierReceivedData != 0
        }
    }

    /// How many bytes `enqueueInput` would accept now (0 in loopback mode).
    public var inputCapacityRemaining: Int {
        state.withLock { state in
            state.isLoopback ? 0 : Self.receiveFIFOCapacity - state.receiveFIFO.count
        }
    }

    // MARK: BusDevice

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        guard let register = Register(offset: offset) else {
            for index in data.indices { data[index] = 0xFF }
            return
        }
        // A wider access acts on the register at `offset` only; the other bytes stay as they came (0).
        data[0] = state.withLock { state in
            let value = state.read(register)
            updateInterruptLine(&state)
            return value
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first, let register = Register(offset: offset) else { return }
        let transmit = state.withLock { state in
            let transmit = state.write(register, value)
            // A byte on its way to `output` drives the line when it has left (below): its THRE
            // interrupt comes straight back, so the line is not pulsed low and high for every byte.
            if transmit == nil { updateInterruptLine(&state) }
            return transmit
        }
        guard let transmit else { return }
        output(transmit)
        state.withLock { state in
            state.finishTransmit()
            updateInterruptLine(&state)
        }
    }

    /// Drives the interrupt line to the level the state asks for, calling it only on a change
    /// (kvmtool's `serial8250_update_irq`). Called with the lock held; see the type's notes.
    func updateInterruptLine(_ state: inout State) {
        let level = state.pendingInterrupt != nil
        guard level != state.lineLevel else { return }
        state.lineLevel = level
        interrupt?.setLevel(level)
    }
}

// MARK: - Registers

extension Serial16550 {
    /// The register offsets from the base port (datasheet table II). Offsets 0 and 1 are decoded
    /// further by DLAB.
    enum Register: UInt64 {
        /// RBR (read) / THR (write); DLL when DLAB = 1.
        case data = 0
        /// IER; DLM when DLAB = 1.
        case interruptEnable = 1
        /// IIR (read) / FCR (write).
        case interruptIdentification = 2
        /// LCR.
        case lineControl = 3
        /// MCR.
        case modemControl = 4
        /// LSR.
        case lineStatus = 5
        /// MSR.
        case modemStatus = 6
        /// SCR.
        case scratch = 7

        init?(offset: UInt64) { self.init(rawValue: offset) }
    }

    /// The interrupt sources in IIR priority order (datasheet table IV), highest first.
    enum InterruptSource: CaseIterable {
        /// Receiver line status: overrun (LSR OE). Cleared by reading LSR.
        case receiverLineStatus
        /// Received data available. Cleared by draining RBR below the trigger (here: empty).
        case receivedData
        /// Transmitter holding register empty. Cleared by reading IIR (if it is the source
        /// reported) or by writing THR.
        case transmitterEmpty
        /// Modem status: a delta bit in MSR 3:0. Cleared by reading MSR.
        case modemStatus

        /// IIR bits 3:0 for this source (bit 0 = 0: an interrupt is pending).
        var identification: UInt8 {
            switch self {
            case .receiverLineStatus: 0x06
            case .receivedData: 0x04
            case .transmitterEmpty: 0x02
            case .modemStatus: 0x00
            }
        }
    }

    // IER bits.
    static let ierReceivedData: UInt8 = 0x01  // ERBFI
    static let ierTransmitterEmpty: UInt8 = 0x02  // ETBEI
    static let ierReceiverLineStatus: UInt8 = 0x04  // ELSI
    static let ierModemStatus: UInt8 = 0x08  // EDSSI
    // IIR bits.
    static let iirNoInterrupt: UInt8 = 0x01
    static let iirFIFOsEnabled: UInt8 = 0xC0
    // FCR bits.
    static let fcrEnableFIFOs: UInt8 = 0x01
    static let fcrClearReceiver: UInt8 = 0x02
    // LCR bits.
    static let lcrDivisorLatchAccess: UInt8 = 0x80  // DLAB
    // MCR bits.
    static let mcrDTR: UInt8 = 0x01
    static let mcrRTS: UInt8 = 0x02
    static let mcrOut1: UInt8 = 0x04
    static let mcrOut2: UInt8 = 0x08
    static let mcrLoop: UInt8 = 0x10
    static let mcrWritable: UInt8 = 0x1F
    // LSR bits.
    static let lsrDataReady: UInt8 = 0x01  // DR
    static let lsrOverrunError: UInt8 = 0x02  // OE
    static let lsrTransmitterHoldingEmpty: UInt8 = 0x20  // THRE
    static let lsrTransmitterEmpty: UInt8 = 0x40  // TEMT
    // MSR bits: inputs in 7:4, their deltas in 3:0.
    static let msrDeltaCTS: UInt8 = 0x01  // DCTS
    static let msrDeltaDSR: UInt8 = 0x02  // DDSR
    static let msrTrailingEdgeRI: UInt8 = 0x04  // TERI
    static let msrDeltaDCD: UInt8 = 0x08  // DDCD
    static let msrCTS: UInt8 = 0x10
    static let msrDSR: UInt8 = 0x20
    static let msrRI: UInt8 = 0x40
    static let msrDCD: UInt8 = 0x80
    /// The modem inputs outside loopback: DCD, DSR and CTS asserted, RI not (a ready peer).
    static let externalModemInputs: UInt8 = msrDCD | msrDSR | msrCTS

    /// Everything the guest can see, plus the level last given to the interrupt line.
    struct State {
        var receiveFIFO = ByteFIFO(capacity: Serial16550.receiveFIFOCapacity)
        /// IER bits 3:0 (bits 7:4 read 0).
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0
        /// MCR bits 4:0 (bits 7:5 read 0).
        var modemControl: UInt8 = 0
        var scratch: UInt8 = 0
        /// DLL/DLM; 12 is 9600 baud from the PC's 1.8432 MHz clock. Stored, never used.
        var divisorLatchLow: UInt8 = 12
        var divisorLatchHigh: UInt8 = 0
        /// FCR bit 0: FIFO mode (16550) rather than 16450 mode. Shows in IIR bits 7:6.
        var fifosEnabled = false
        /// LSR OE: a byte arrived (in loopback) while the receive FIFO was full. Cleared by reading LSR.
        var overrunError = false
        /// The THRE interrupt condition (it is separate from LSR THRE: reading IIR clears it).
        var transmitterEmptyPending = false
        /// Bytes written to THR that have not yet reached `output` (only ever > 0 between the two
        /// halves of a `write`; see the type's notes). THR and the shift register are empty at 0.
        var transmitsInFlight = 0
        /// MSR bits 3:0. Cleared by reading MSR.
        var modemStatusDeltas: UInt8 = 0
        /// The level last given to the interrupt line.
        var lineLevel = false

        var isDivisorLatchSelected: Bool { lineControl & Serial16550.lcrDivisorLatchAccess != 0 }
        var isLoopback: Bool { modemControl & Serial16550.mcrLoop != 0 }
        var isTransmitterEmpty: Bool { transmitsInFlight == 0 }

        /// MSR bits 7:4. In loopback the modem control outputs feed the inputs (datasheet, MCR bit
        /// 4): RTS → CTS, DTR → DSR, OUT1 → RI, OUT2 → DCD.
        var modemInputs: UInt8 {
            guard isLoopback else { return Serial16550.externalModemInputs }
            var inputs: UInt8 = 0
            if modemControl & Serial16550.mcrRTS != 0 { inputs |= Serial16550.msrCTS }
            if modemControl & Serial16550.mcrDTR != 0 { inputs |= Serial16550.msrDSR }
            if modemControl & Serial16550.mcrOut1 != 0 { inputs |= Serial16550.msrRI }
            if modemControl & Serial16550.mcrOut2 != 0 { inputs |= Serial16550.msrDCD }
            return inputs
        }

        var lineStatus: UInt8 {
            var status: UInt8 = 0
            if !receiveFIFO.isEmpty { status |= Serial16550.lsrDataReady }
            if overrunError { status |= Serial16550.lsrOverrunError }
            if isTransmitterEmpty {
                status |= Serial16550.lsrTransmitterHoldingEmpty | Serial16550.lsrTransmitterEmpty
            }
            return status
        }

        /// The single place the interrupt condition is computed: the highest-priority source that
        /// is both enabled in IER and pending, or nil.
        var pendingInterrupt: InterruptSource? {
            InterruptSource.allCases.first { source in
                switch source {
                case .receiverLineStatus:
                    interruptEnable & Serial16550.ierReceiverLineStatus != 0 && overrunError
                case .receivedData:
                    interruptEnable & Serial16550.ierReceivedData != 0 && !receiveFIFO.isEmpty
                case .transmitterEmpty:
                    interruptEnable & Serial16550.ierTransmitterEmpty != 0 && transmitterEmptyPending
                case .modemStatus:
                    interruptEnable & Serial16550.ierModemStatus != 0 && modemStatusDeltas != 0
                }
            }
        }

        mutating func read(_ register: Register) -> UInt8 {
            switch register {
            case .data:
                if isDivisorLatchSelected { return divisorLatchLow }
                return receiveFIFO.removeFirst() ?? 0  // RBR; an empty FIFO reads 0
            case .interruptEnable:
                return isDivisorLatchSelected ? divisorLatchHigh : interruptEnable
            case .interruptIdentification:
                let source = pendingInterrupt
                // Reading IIR clears the THRE interrupt when that is what it reports.
                if source == .transmitterEmpty { transmitterEmptyPending = false }
                let identification = source?.identification ?? Serial16550.iirNoInterrupt
                return identification | (fifosEnabled ? Serial16550.iirFIFOsEnabled : 0)
            case .lineControl:
                return lineControl
            case .modemControl:
                return modemControl
            case .lineStatus:
                let status = lineStatus
                overrunError = false  // reading LSR clears the error bits
                return status
            case .modemStatus:
                let status = modemInputs | modemStatusDeltas
                modemStatusDeltas = 0  // reading MSR clears the delta bits
                return status
            case .scratch:
                return scratch
            }
        }

        /// Applies a guest write. Returns a byte the caller must hand to `output` and then call
        /// `finishTransmit()` for; nil when there is nothing to transmit.
        mutating func write(_ register: Register, _ value: UInt8) -> UInt8? {
            switch register {
            case .data:
                if isDivisorLatchSelected {
                    divisorLatchLow = value
                    return nil
                }
                // Writing THR clears the THRE interrupt; it comes back once the byte has left.
                transmitterEmptyPending = false
                if isLoopback {
                    // The transmitter shift register feeds the receiver; the serial output is idle.
                    if receiveFIFO.isFull { overrunError = true } else { receiveFIFO.append(value) }
                    transmitterEmptyPending = true
                    return nil
                }
                transmitsInFlight += 1
                return value
            case .interruptEnable:
                if isDivisorLatchSelected {
                    divisorLatchHigh = value
                    return nil
                }
                let enabled = value & 0x0F
                let previous = interruptEnable
                interruptEnable = enabled
                // Setting ETBEI while THR is empty raises the THRE interrupt (as on real parts, and
                // as Linux's THRE test expects); clearing it forgets a pending one. Only the rising
                // edge re-arms, as in Bochs and QEMU.
                if enabled & Serial16550.ierTransmitterEmpty == 0 {
                    transmitterEmptyPending = false
                } else if previous & Serial16550.ierTransmitterEmpty == 0 {
                    transmitterEmptyPending = isTransmitterEmpty
                }
                return nil
            case .interruptIdentification:
                writeFIFOControl(value)
                return nil
            case .lineControl:
                lineControl = value
                return nil
            case .modemControl:
                let before = modemInputs
                modemControl = value & Serial16550.mcrWritable
                noteModemInputChange(from: before, to: modemInputs)
                return nil
            case .lineStatus, .modemStatus:
                return nil  // LSR and MSR are read-only here (writing them is a factory test mode)
            case .scratch:
                scratch = value
                return nil
            }
        }

        /// The byte handed out by `write` has left: THR and the shift register are empty again.
        mutating func finishTransmit() {
            transmitsInFlight -= 1
            if isTransmitterEmpty { transmitterEmptyPending = true }
        }

        /// FCR: bit 0 enables the FIFOs, and changing it clears them; bit 1 clears the receive FIFO,
        /// and only counts with bit 0 set. Bit 2 (clear transmit FIFO) has nothing to clear, and the
        /// trigger level (bits 7:6) and DMA mode (bit 3) are not modelled.
        mutating func writeFIFOControl(_ value: UInt8) {
            let enable = value & Serial16550.fcrEnableFIFOs != 0
            if enable != fifosEnabled {
                fifosEnabled = enable
                receiveFIFO.removeAll()
            }
            if enable, value & Serial16550.fcrClearReceiver != 0 {
                receiveFIFO.removeAll()
            }
        }

        /// Sets MSR's delta bits for a change of the modem inputs (DCTS, DDSR, DDCD on any change;
        /// TERI only when RI goes from on to off).
        mutating func noteModemInputChange(from before: UInt8, to after: UInt8) {
            let changed = before ^ after
            if changed & Serial16550.msrCTS != 0 { modemStatusDeltas |= Serial16550.msrDeltaCTS }
            if changed & Serial16550.msrDSR != 0 { modemStatusDeltas |= Serial16550.msrDeltaDSR }
            if changed & Serial16550.msrDCD != 0 { modemStatusDeltas |= Serial16550.msrDeltaDCD }
            if before & Serial16550.msrRI != 0, after & Serial16550.msrRI == 0 {
                modemStatusDeltas |= Serial16550.msrTrailingEdgeRI
            }
        }
    }
}

extension Serial16550 {
    /// A fixed-capacity byte queue in a ring; never allocates after `init`.
    struct ByteFIFO {
        private var storage: [UInt8]
        private var head = 0
        private(set) var count = 0

        init(capacity: Int) { storage = [UInt8](repeating: 0, count: max(1, capacity)) }

        var capacity: Int { storage.count }
        var isEmpty: Bool { count == 0 }
        var isFull: Bool { count == storage.count }

        /// Appends `byte`; does nothing when full (callers check `isFull` and decide what a full
        /// queue means for them).
        mutating func append(_ byte: UInt8) {
            guard !isFull else { return }
            storage[(head + count) % storage.count] = byte
            count += 1
        }

        mutating func removeFirst() -> UInt8? {
            guard !isEmpty else { return nil }
            let byte = storage[head]
            head = (head + 1) % storage.count
            count -= 1
            return byte
        }

        mutating func removeAll() {
            head = 0
            count = 0
        }
    }
}
