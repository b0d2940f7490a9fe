import Dispatch
import Devices
import Synchronization
import Testing
import VMMCore

// Register offsets (16550A datasheet, table II).
private let rbrTHR: UInt64 = 0  // DLL with DLAB
private let ier: UInt64 = 1  // DLM with DLAB
private let iirFCR: UInt64 = 2
private let lcr: UInt64 = 3
private let mcr: UInt64 = 4
private let lsr: UInt64 = 5
private let msr: UInt64 = 6
private let scr: UInt64 = 7

/// Records every level the device drives, in order. Thread-safe so the concurrency test can use it.
private final class RecordingLine: InterruptLine, @unchecked Sendable {
    private let recorded = Mutex<[Bool]>([])
    var levels: [Bool] { recorded.withLock { $0 } }
    func setLevel(_ high: Bool) { recorded.withLock { $0.append(high) } }
}

/// Collects transmitted bytes; thread-safe like the line.
private final class ByteRecorder: @unchecked Sendable {
    private let recorded = Mutex<[UInt8]>([])
    var bytes: [UInt8] { recorded.withLock { $0 } }
    func append(_ byte: UInt8) { recorded.withLock { $0.append(byte) } }
}

/// A serial port whose transmitted bytes and interrupt levels are recorded.
private final class Harness {
    let line: RecordingLine
    private let transmitted: ByteRecorder
    let serial: Serial16550
    var output: [UInt8] { transmitted.bytes }

    init(withInterrupt: Bool = true) {
        let line = RecordingLine()
        let transmitted = ByteRecorder()
        serial = Serial16550(interrupt: withInterrupt ? line : nil) { transmitted.append($0) }
        self.line = line
        self.transmitted = transmitted
    }

    func write(_ offset: UInt64, _ value: UInt8) { writeBytes(offset, [value]) }

    func writeBytes(_ offset: UInt64, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { serial.write(offset: offset, data: $0) }
    }

    func read(_ offset: UInt64) -> UInt8 { readBytes(offset, width: 1)[0] }

    /// Reads `width` bytes the way the exit handler does: into a zeroed buffer.
    func readBytes(_ offset: UInt64, width: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: width)
        bytes.withUnsafeMutableBytes { serial.read(offset: offset, data: $0) }
        return bytes
    }
}

@Suite struct Serial16550Tests {
    // MARK: Linux's autoconfig probe

    @Test func resetValuesAreTheDatasheets() {
        let uart = Harness()
        #expect(uart.read(ier) == 0)
        #expect(uart.read(iirFCR) == 0x01)  // no interrupt pending, FIFOs off
        #expect(uart.read(lcr) == 0)
        #expect(uart.read(mcr) == 0)
        #expect(uart.read(lsr) == 0x60)  // THRE | TEMT
        #expect(uart.read(msr) == 0xB0)  // DCD | DSR | CTS from a ready peer, no deltas
        #expect(uart.line.levels.isEmpty)
        #expect(Serial16550.com1 == 0x3F8 && Serial16550.com1IRQ == 4 && Serial16550.portCount == 8)
    }

    @Test func theScratchRegisterKeepsWhatIsWritten() {
        let uart = Harness()
        for value: UInt8 in [0x55, 0xAA, 0x00, 0xFF, 0x5A] {
            uart.write(scr, value)
            #expect(uart.read(scr) == value)
        }
    }

    /// autoconfig: IER written 0 reads 0, written 0x0F reads 0x0F; its upper nibble reads 0.
    @Test func theInterruptEnableRegisterKeepsItsLowNibble() {
        let uart = Harness(withInterrupt: false)
        uart.write(ier, 0)
        #expect(uart.read(ier) & 0x0F == 0)
        uart.write(ier, 0x0F)
        #expect(uart.read(ier) & 0x0F == 0x0F)
        uart.write(ier, 0xF5)
        #expect(uart.read(ier) == 0x05)
    }

    @Test func dlabSwitchesOffsetsZeroAndOneToTheDivisorLatch() {
        let uart = Harness()
        uart.write(ier, 0x05)
        uart.write(lcr, 0x83)  // DLAB | 8 data bits
        #expect(uart.read(lcr) == 0x83)
        #expect(uart.read(rbrTHR) == 12)  // DLL after reset: 9600 baud
        uart.write(rbrTHR, 0x01)  // DLL: 115200 baud
        uart.write(ier, 0x02)  // DLM
        #expect(uart.read(rbrTHR) == 0x01)
        #expect(uart.read(ier) == 0x02)
        #expect(uart.output.isEmpty)  // a DLL write is not a transmission

        uart.write(lcr, 0x03)  // DLAB off: offsets 0/1 are THR/IER again
        #expect(uart.read(ier) == 0x05)  // IER kept its value under the latch
        uart.write(rbrTHR, 0x41)
        #expect(uart.output == [0x41])

        uart.write(lcr, 0x80)
        #expect(uart.read(rbrTHR) == 0x01)  // DLL survived the THR write
        #expect(uart.read(ier) == 0x02)
    }

    /// autoconfig: LCR = 0xBF, write "EFR" (offset 2, which is FCR here), LCR = 0, FCR = enable,
    /// then IIR >> 6 must be 3 for a 16550A.
    @Test func enablingTheFIFOsSetsIIRBitsSevenAndSix() {
        let uart = Harness()
        uart.write(lcr, 0xBF)
        uart.write(iirFCR, 0)
        uart.write(lcr, 0)
        #expect(uart.read(iirFCR) >> 6 == 0)
        uart.write(iirFCR, 0x01)
        #expect(uart.read(iirFCR) >> 6 == 3)
        #expect(uart.read(iirFCR) == 0xC1)
        // The 16750 check (FCR bit 5) must not find a 64-byte FIFO: IIR bit 5 stays clear.
        uart.write(iirFCR, 0x21)
        #expect(uart.read(iirFCR) & 0xE0 == 0xC0)
        uart.write(iirFCR, 0x00)
        #expect(uart.read(iirFCR) == 0x01)
    }

    /// autoconfig's loopback test: MCR = LOOP | OUT2 | RTS must read MSR & 0xF0 == DCD | CTS.
    @Test func loopbackMirrorsModemControlIntoModemStatus() {
        let uart = Harness()
        uart.write(mcr, 0x10 | 0x0A)
        #expect(uart.read(msr) & 0xF0 == 0x90)
        let mapping: [(mcr: UInt8, msr: UInt8)] = [
            (0x01, 0x20),  // DTR → DSR
            (0x02, 0x10),  // RTS → CTS
            (0x04, 0x40),  // OUT1 → RI
            (0x08, 0x80),  // OUT2 → DCD
            (0x0F, 0xF0),
            (0x00, 0x00),
        ]
        for (control, status) in mapping {
            uart.write(mcr, 0x10 | control)
            #expect(uart.read(msr) & 0xF0 == status, "MCR \(control)")
        }
        uart.write(mcr, 0xFF)
        #expect(uart.read(mcr) == 0x1F)  // MCR bits 7:5 read 0
        uart.write(mcr, 0x0F)  // leave loopback: the outside lines come back
        #expect(uart.read(msr) & 0xF0 == 0xB0)
    }

    @Test func modemStatusDeltaBitsFollowChangesAndClearOnRead() {
        let uart = Harness()
        uart.write(mcr, 0x10 | 0x0F)  // loopback, all outputs on: inputs 0xB0 → 0xF0, only RI changed
        #expect(uart.read(msr) == 0xF0)  // RI rising is no delta (TERI is for the trailing edge)
        uart.write(mcr, 0x10)  // all off: CTS, DSR, RI, DCD fall
        #expect(uart.read(msr) == 0x0F)
        #expect(uart.read(msr) == 0x00)  // deltas cleared by the read
    }

    @Test func loopbackSendsTransmittedBytesToTheReceiver() {
        let uart = Harness()
        uart.write(mcr, 0x10)
        #expect(uart.read(lsr) & 0x01 == 0)
        uart.write(rbrTHR, 0x5A)
        uart.write(rbrTHR, 0xA5)
        #expect(uart.output.isEmpty)
        #expect(uart.read(lsr) == 0x61)  // DR | THRE | TEMT
        #expect(uart.read(rbrTHR) == 0x5A)
        #expect(uart.read(rbrTHR) == 0xA5)
        #expect(uart.read(lsr) == 0x60)
        uart.write(mcr, 0x00)
        uart.write(rbrTHR, 0x33)
        #expect(uart.output == [0x33])
        #expect(uart.read(lsr) & 0x01 == 0)
    }

    @Test func loopbackRefusesHostInputAndOverrunsWhenFull() {
        let uart = Harness()
        uart.write(mcr, 0x10)
        #expect(uart.serial.enqueueInput([1, 2, 3]) == 0)  // the serial input is disconnected
        #expect(uart.serial.inputCapacityRemaining == 0)
        for byte in 0..<Serial16550.receiveFIFOCapacity { uart.write(rbrTHR, UInt8(byte)) }
        #expect(uart.read(lsr) & 0x02 == 0)
        uart.write(ier, 0x04)  // receiver line status interrupt
        uart.write(rbrTHR, 0xEE)  // the 65th byte: dropped, OE
        #expect(uart.read(iirFCR) & 0x0F == 0x06)
        #expect(uart.line.levels == [true])
        #expect(uart.read(lsr) == 0x63)  // DR | OE | THRE | TEMT
        #expect(uart.line.levels == [true, false])  // reading LSR cleared OE and its interrupt
        #expect(uart.read(lsr) == 0x61)
        for byte in 0..<Serial16550.receiveFIFOCapacity { #expect(uart.read(rbrTHR) == UInt8(byte)) }
        #expect(uart.read(lsr) & 0x01 == 0)
    }

    @Test func isReceivingOnceTheDriverEnablesReceiveInterruptsAndNotInLoopback() {
        let uart = Harness()
        #expect(!uart.serial.isReceiving)  // a console-only port: nobody reads yet
        uart.write(ier, 0x02)
        #expect(!uart.serial.isReceiving)
        uart.write(ier, 0x05)  // what serial8250_startup enables: RLSI | RDI
        #expect(!uart.serial.isReceiving)  // FIFOs still off: turning them on clears the receive FIFO
        uart.write(iirFCR, 0x81)
        #expect(uart.serial.isReceiving)
        uart.write(mcr, 0x10)
        #expect(!uart.serial.isReceiving)
        uart.write(mcr, 0x00)
        uart.write(ier, 0x00)
        #expect(!uart.serial.isReceiving)
    }

    // MARK: Transmit and receive

    @Test func transmittedBytesGoToOutputInOrder() {
        let uart = Harness()
        for byte in Array("Linux\r\n".utf8) {
            #expect(uart.read(lsr) & 0x20 != 0)  // THRE: ready for the next byte
            uart.write(rbrTHR, byte)
        }
        #expect(uart.output == Array("Linux\r\n".utf8))
        #expect(uart.read(lsr) == 0x60)
    }

    @Test func theReceiveFIFOHoldsSixtyFourBytesAndRefusesTheRest() {
        let uart = Harness()
        let input = (0..<70).map { UInt8($0) }
        #expect(uart.serial.inputCapacityRemaining == 64)
        #expect(uart.serial.enqueueInput(input) == 64)
        #expect(uart.serial.inputCapacityRemaining == 0)
        #expect(uart.serial.enqueueInput([0xFF]) == 0)  // the 65th byte is refused
        #expect(uart.read(lsr) == 0x61)  // DR, and no OE: refused is not lost
        #expect(uart.read(rbrTHR) == 0)
        #expect(uart.serial.inputCapacityRemaining == 1)
        #expect(uart.serial.enqueueInput(input[64...]) == 1)  // the host offers the rest again
        for expected in 1...64 { #expect(uart.read(rbrTHR) == UInt8(expected)) }
        #expect(uart.read(lsr) == 0x60)
        #expect(uart.read(rbrTHR) == 0)  // empty
        #expect(uart.serial.inputCapacityRemaining == 64)
    }

    @Test func enqueueStopsTakingElementsWhenFull() {
        let uart = Harness()
        var iterator = (0..<100).map { UInt8($0) }.makeIterator()
        let sequence = AnySequence { () -> AnyIterator<UInt8> in AnyIterator { iterator.next() } }
        #expect(uart.serial.enqueueInput(sequence) == 64)
        #expect(iterator.next() == 64)  // the element after the last accepted was not consumed
    }

    @Test func fifoControlClearsTheReceiver() {
        let uart = Harness()
        uart.write(iirFCR, 0x01)
        uart.serial.enqueueInput(Array("abc".utf8))
        uart.write(iirFCR, 0x01)  // no change, no clear bit: kept
        #expect(uart.read(lsr) & 0x01 == 1)
        uart.write(iirFCR, 0x03)  // clear receive FIFO
        #expect(uart.read(lsr) & 0x01 == 0)
        uart.serial.enqueueInput([0x78])
        uart.write(iirFCR, 0x00)  // leaving FIFO mode clears the FIFOs
        #expect(uart.read(lsr) & 0x01 == 0)
        #expect(uart.serial.inputCapacityRemaining == 64)
    }

    // MARK: Interrupts

    @Test func enablingTHREWithAnEmptyTransmitterRaisesAndReadingIIRLowers() {
        let uart = Harness()
        uart.write(ier, 0x02)
        #expect(uart.line.levels == [true])
        #expect(uart.read(iirFCR) == 0x02)
        #expect(uart.line.levels == [true, false])
        #expect(uart.read(iirFCR) == 0x01)  // cleared by the read that reported it
        uart.write(ier, 0x02)  // no rising edge of ETBEI: nothing re-armed
        #expect(uart.line.levels == [true, false])
    }

    /// serial8250's THRE test toggles IER.THRI and expects IIR to report THRE both times.
    @Test func togglingTHREEnableRearmsTheInterrupt() {
        let uart = Harness()
        uart.write(ier, 0x02)
        let first = uart.read(iirFCR)
        uart.write(ier, 0x00)
        uart.write(ier, 0x02)
        let second = uart.read(iirFCR)
        #expect(first == 0x02 && second == 0x02)
        #expect(uart.line.levels == [true, false, true, false])
        uart.write(ier, 0x00)
        uart.write(ier, 0x02)
        uart.write(ier, 0x00)  // disabling forgets a pending THRE interrupt...
        #expect(uart.line.levels == [true, false, true, false, true, false])
        uart.write(ier, 0x01)
        #expect(uart.read(iirFCR) == 0x01)  // ...and does not bring it back under another source
    }

    @Test func writingTHRBringsTHREBackWithoutPulsingTheLine() {
        let uart = Harness()
        uart.write(ier, 0x02)
        uart.write(rbrTHR, 0x61)
        uart.write(rbrTHR, 0x62)
        #expect(uart.line.levels == [true])  // the level did not change, so no calls
        #expect(uart.read(iirFCR) == 0x02)
        #expect(uart.line.levels == [true, false])
        uart.write(rbrTHR, 0x63)  // the byte left: THR is empty again
        #expect(uart.line.levels == [true, false, true])
        #expect(uart.output == [0x61, 0x62, 0x63])
    }

    @Test func receivedDataRaisesTheLineUntilTheFIFOIsDrained() {
        let uart = Harness()
        uart.write(ier, 0x01)
        #expect(uart.line.levels.isEmpty)
        uart.serial.enqueueInput(Array("ab".utf8))
        #expect(uart.line.levels == [true])
        uart.serial.enqueueInput(Array("c".utf8))
        #expect(uart.line.levels == [true])  // still high: no duplicate call
        #expect(uart.read(iirFCR) == 0x04)
        #expect(uart.read(iirFCR) == 0x04)  // reading IIR does not clear received data
        #expect(uart.read(rbrTHR) == 0x61)
        #expect(uart.read(rbrTHR) == 0x62)
        #expect(uart.line.levels == [true])
        #expect(uart.read(rbrTHR) == 0x63)
        #expect(uart.line.levels == [true, false])
        #expect(uart.read(iirFCR) == 0x01)
    }

    @Test func receivedDataWithoutItsEnableBitRaisesNothing() {
        let uart = Harness()
        uart.write(ier, 0x0C)  // line status and modem status only
        uart.serial.enqueueInput([1, 2])
        #expect(uart.line.levels.isEmpty)
        #expect(uart.read(iirFCR) == 0x01)
        uart.write(ier, 0x0D)  // enabling it with data waiting raises the line
        #expect(uart.line.levels == [true])
    }

    @Test func iirReportsTheHighestPrioritySource() {
        let uart = Harness()
        uart.write(iirFCR, 0x01)
        uart.write(ier, 0x03)
        uart.serial.enqueueInput([0x41])
        #expect(uart.read(iirFCR) == 0xC4)  // received data outranks THRE, with the FIFO bits
        #expect(uart.read(rbrTHR) == 0x41)
        #expect(uart.read(iirFCR) == 0xC2)  // THRE was not cleared by the earlier IIR read
        #expect(uart.read(iirFCR) == 0xC1)
        #expect(uart.line.levels == [true, false])
    }

    @Test func modemStatusChangesInterruptUntilMSRIsRead() {
        let uart = Harness()
        uart.write(ier, 0x08)
        #expect(uart.line.levels.isEmpty)
        uart.write(mcr, 0x10)  // loopback: the modem inputs drop
        #expect(uart.line.levels == [true])
        #expect(uart.read(iirFCR) == 0x00)
        #expect(uart.read(msr) == 0x0B)  // DDCD | DDSR | DCTS
        #expect(uart.line.levels == [true, false])
    }

    @Test func withoutAnInterruptLineEverythingStillWorks() {
        let uart = Harness(withInterrupt: false)
        uart.write(ier, 0x03)
        uart.serial.enqueueInput([9])
        #expect(uart.read(iirFCR) == 0x04)
        #expect(uart.read(rbrTHR) == 9)
        #expect(uart.read(iirFCR) == 0x02)
        #expect(uart.line.levels.isEmpty)
    }

    // MARK: Untrusted accesses

    @Test(arguments: [UInt64(8), 9, 0xFF, 0x3F8, UInt64.max])
    func offsetsPastTheRegistersReadAllOnesAndIgnoreWrites(offset: UInt64) {
        let uart = Harness()
        uart.write(scr, 0x12)
        uart.writeBytes(offset, [0x41, 0x42])
        uart.write(offset, 0x80)
        #expect(uart.readBytes(offset, width: 1) == [0xFF])
        #expect(uart.readBytes(offset, width: 4) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(uart.output.isEmpty)
        #expect(uart.read(scr) == 0x12)
        #expect(uart.read(lcr) == 0)
        #expect(uart.line.levels.isEmpty)
    }

    @Test func widerAccessesUseTheFirstByteAndEmptyOnesDoNothing() {
        let uart = Harness()
        uart.writeBytes(scr, [0x34, 0x12, 0xFF, 0xFF])
        #expect(uart.readBytes(scr, width: 4) == [0x34, 0, 0, 0])
        uart.writeBytes(rbrTHR, [0x41, 0x42])
        #expect(uart.output == [0x41])  // one byte transmitted, not two
        uart.writeBytes(rbrTHR, [])
        #expect(uart.output == [0x41])
        uart.serial.enqueueInput([7, 8])
        #expect(uart.readBytes(rbrTHR, width: 0) == [])  // consumes nothing
        #expect(uart.readBytes(rbrTHR, width: 2) == [7, 0])
        #expect(uart.read(rbrTHR) == 8)
    }

    @Test func everyOffsetAndWidthIsSurvivable() {
        let uart = Harness()
        uart.serial.enqueueInput(Array(0..<40))
        for offset in UInt64(0)..<16 {
            for width in [0, 1, 2, 3, 4, 8] {
                for value: UInt8 in [0x00, 0x1F, 0x80, 0xFF] {
                    uart.writeBytes(offset, [UInt8](repeating: value, count: width))
                    _ = uart.readBytes(offset, width: width)
                }
            }
        }
        // Whatever that did, the UART still transmits and receives.
        uart.write(lcr, 0x03)
        uart.write(mcr, 0x00)
        uart.write(iirFCR, 0x07)
        let before = uart.output.count
        uart.write(rbrTHR, 0x5A)
        #expect(uart.output.count == before + 1 && uart.output.last == 0x5A)
        #expect(uart.serial.enqueueInput([0x42]) == 1)
        #expect(uart.read(rbrTHR) == 0x42)
    }

    // MARK: Threads

    /// A host thread feeds 20 000 bytes while a "vCPU" thread drains them: nothing is lost or
    /// reordered, and the line only ever changes level (never two equal calls in a row).
    @Test func hostInputAndGuestReadsRaceWithoutLossOrStaleLevels() {
        let uart = Harness()
        uart.write(ier, 0x01)
        let total = 20_000
        let input = (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let group = DispatchGroup()
        let serial = uart.serial
        // Both loops are bounded, so a broken device fails the test instead of hanging it.
        let attempts = 20_000_000
        DispatchQueue.global().async(group: group) {
            var sent = 0
            var tries = 0
            while sent < total, tries < attempts {
                sent += serial.enqueueInput(input[sent...])
                tries += 1
            }
        }
        var received: [UInt8] = []
        received.reserveCapacity(total)
        var polls = 0
        while received.count < total, polls < attempts {
            polls += 1
            var status: UInt8 = 0
            withUnsafeMutableBytes(of: &status) { serial.read(offset: lsr, data: $0) }
            guard status & 0x01 != 0 else { continue }
            var byte: UInt8 = 0
            withUnsafeMutableBytes(of: &byte) { serial.read(offset: rbrTHR, data: $0) }
            received.append(byte)
        }
        group.wait()
        #expect(received == input)
        let levels = uart.line.levels
        #expect(!levels.isEmpty)
        #expect(zip(levels, levels.dropFirst()).allSatisfy { $0 != $1 })
        #expect(levels.last == false)  // drained: the line ends low
    }
}
