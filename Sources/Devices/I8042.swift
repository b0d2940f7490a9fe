import Synchronization
import VMMCore

/// The PC keyboard controller (Intel 8042 as programmed in the IBM PC/AT and PS/2), with no
/// keyboard or mouse attached: enough for Linux's `drivers/input/serio/i8042.c` to probe it and
/// find no devices quickly, and for `reboot=k` to end the VM through the reset line.
///
/// ## Ports
///
/// The controller answers on two ports: 0x60 (data: output buffer on read, input buffer on write)
/// and 0x64 (status register on read, controller command on write). Port 0x61 between them is the
/// PIT's speaker gate, another device, so insert the two single-port views:
///
/// ```swift
/// let i8042 = I8042(interrupt: irq1, onReset: requestReset)  // irq1: the line for GSI 1
/// try bus.insert(i8042.dataPort, at: UInt64(I8042.dataPortAddress), length: I8042.portLength)
/// try bus.insert(i8042.commandPort, at: UInt64(I8042.commandPortAddress), length: I8042.portLength)
/// ```
///
/// The controller is itself a `BusDevice` over the span 0x60…0x64 (`spanLength`; offset 0 data,
/// offset 4 status/command, offsets 1–3 read 0xFF) for a machine with nothing at 0x61–0x63.
///
/// ## Behaviour
///
/// Commands (written to 0x64) take effect at once, so the input buffer is never full (status IBF
/// reads 0). Implemented: 0x20–0x3F read controller RAM (byte 0 is the command byte, CTR),
/// 0x60–0x7F write it (the next byte written to 0x60), 0xA7/0xA8 disable/enable the AUX interface,
/// 0xA9 AUX interface test, 0xAA controller self-test (→ 0x55), 0xAB keyboard interface test
/// (→ 0x00), 0xAD/0xAE disable/enable the keyboard interface, 0xD0/0xD1 read/write the output
/// port, 0xD2 write the keyboard output buffer, and 0xF0–0xFF pulse output-port lines — bit 0 of
/// the command clear pulses P20, the CPU reset line, so 0xFE calls `onReset`. Any other command is
/// ignored.
///
/// With no keyboard, a byte written to 0x60 that is not a command's parameter is answered the way
/// a controller answers a transmission nobody clocks in: 0xFE with the status time-out bit set.
/// Linux's atkbd then gives up after two NAKs instead of waiting out its timeouts (when IRQ 1 is
/// wired). There is no AUX port: 0xD3 (write AUX output buffer) is not implemented, so Linux's AUX
/// loop test gets the keyboard's 0xFE without the AUX status bit, and the AUX interface test
/// (0xA9) reports 0x02, "clock line stuck high"; `i8042_check_aux` concludes there is no AUX port
/// without waiting for a time-out.
///
/// The real output buffer holds one byte; this one queues up to `outputBufferCapacity` (more are
/// dropped), but a controller command first discards bytes nobody read, so its answer is the next
/// byte read, as `i8042_command` expects. The keyboard interrupt (IRQ 1) is high while the output
/// buffer holds a byte and CTR bit 0 enables it.
///
/// ## Threads
///
/// Only vCPU threads touch it, but several may: state lives in a `Mutex`, the interrupt line is
/// driven inside it (levels reach the line in the order the state changed; the line must not call
/// back into the controller), and `onReset` is called outside it, once per reset command.
public final class I8042: BusDevice, @unchecked Sendable {
    // @unchecked: all mutable state is inside `state` (a Mutex); `onReset` and `interrupt` are
    // immutable references the caller provides.

    /// The data port (output buffer / input buffer).
    public static let dataPortAddress: UInt16 = 0x60
    /// The status register (read) / command register (write).
    public static let commandPortAddress: UInt16 = 0x64
    /// Each port view is one port wide.
    public static let portLength: UInt64 = 1
    /// The span 0x60…0x64, when the controller itself is inserted as one device.
    public static let spanLength: UInt64 = 5
    /// The keyboard interrupt.
    public static let keyboardIRQ: UInt32 = 1
    /// Bytes the output buffer queues before further ones are dropped.
    public static let outputBufferCapacity = 16

    /// Offsets within the span.
    static let dataOffset: UInt64 = 0
    static let commandOffset: UInt64 = 4

    private let onReset: () -> Void
    private let interrupt: (any InterruptLine)?
    let state = Mutex(State())

    /// - Parameters:
    ///   - interrupt: the keyboard interrupt (IRQ 1), or nil. Without it Linux's keyboard probe
    ///     waits for time-outs before it concludes there is no keyboard.
    ///   - onReset: called for each command that pulses the CPU reset line (0xFE, as Linux's
    ///     `reboot=k` writes up to ten times, or 0xD1 with bit 0 clear). The VM should stop or reset.
    public init(interrupt: (any InterruptLine)? = nil, onReset: @escaping () -> Void) {
        self.interrupt = interrupt
        self.onReset = onReset
    }

    /// Port 0x60 alone, to insert with length `portLength`.
    public var dataPort: Port { Port(controller: self, offset: Self.dataOffset) }
    /// Port 0x64 alone, to insert with length `portLength`.
    public var commandPort: Port { Port(controller: self, offset: Self.commandOffset) }

    /// One port of the controller as a device of its own.
    public final class Port: BusDevice {
        let controller: I8042
        let offset: UInt64

        init(controller: I8042, offset: UInt64) {
            self.controller = controller
            self.offset = offset
        }

        public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
            guard offset == 0 else {
                for index in data.indices { data[index] = 0xFF }
                return
            }
            controller.read(offset: self.offset, data: data)
        }

        public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
            guard offset == 0 else { return }
            controller.write(offset: self.offset, data: data)
        }
    }

    // MARK: BusDevice (the span 0x60…0x64)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard !data.isEmpty else { return }
        guard offset == Self.dataOffset || offset == Self.commandOffset else {
            for index in data.indices { data[index] = 0xFF }
            return
        }
        // A wider access reads the register at `offset` only; the other bytes stay as they came (0).
        data[0] = state.withLock { state in
            let value = offset == Self.dataOffset ? state.readData() : state.status
            updateInterruptLine(&state)
            return value
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let value = data.first else { return }
        let reset: Bool
        switch offset {
        case Self.dataOffset:
            reset = state.withLock { state in
                let reset = state.writeData(value)
                updateInterruptLine(&state)
                return reset
            }
        case Self.commandOffset:
            reset = state.withLock { state in
                let reset = state.writeCommand(value)
                updateInterruptLine(&state)
                return reset
            }
        default:
            return
        }
        if reset { onReset() }
    }

    /// Scan codes (set 1, as the controller's translation delivers them) of Ctrl, Alt and Delete
    /// pressed and released: what Linux's keyboard driver turns into `ctrl_alt_del()`.
    public static let ctrlAltDelete: [UInt8] = [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]

    /// Puts `scancodes` in the output buffer as if typed on a keyboard and raises IRQ 1 when the
    /// command byte enables it. Returns how many fit (the buffer holds `outputBufferCapacity`).
    @discardableResult
    public func type(_ scancodes: [UInt8]) -> Int {
        state.withLock { state in
            let room = max(0, I8042.outputBufferCapacity - state.outputBuffer.count)
            for code in scancodes.prefix(room) { state.push(code) }
            updateInterruptLine(&state)
            return min(room, scancodes.count)
        }
    }

    /// Drives the keyboard interrupt to the level the state asks for, only on change.
    func updateInterruptLine(_ state: inout State) {
        let level = state.interruptLevel
        guard level != state.lineLevel else { return }
        state.lineLevel = level
        interrupt?.setLevel(level)
    }
}

// MARK: - State

extension I8042 {
    // Status register bits.
    static let statusOutputFull: UInt8 = 0x01  // OBF
    static let statusInputFull: UInt8 = 0x02  // IBF: never set, commands complete at once
    static let statusSystemFlag: UInt8 = 0x04  // SYS, mirrors CTR bit 2
    static let statusLastWriteWasCommand: UInt8 = 0x08  // A2: the last write went to 0x64
    static let statusNotInhibited: UInt8 = 0x10  // keyboard inhibit switch off (Linux: KEYLOCK)
    static let statusAuxData: UInt8 = 0x20  // the output buffer byte is from AUX (never, here)
    static let statusTimeout: UInt8 = 0x40  // general time-out
    static let statusParityError: UInt8 = 0x80

    // Command byte (CTR, controller RAM byte 0) bits.
    static let ctrKeyboardInterrupt: UInt8 = 0x01
    static let ctrAuxInterrupt: UInt8 = 0x02
    static let ctrSystemFlag: UInt8 = 0x04
    static let ctrKeyboardDisabled: UInt8 = 0x10
    static let ctrAuxDisabled: UInt8 = 0x20
    static let ctrTranslate: UInt8 = 0x40
    /// What the firmware leaves behind after POST: keyboard interrupt on, system flag set (self-test
    /// passed), AUX disabled (there is none), scan-code translation on.
    static let initialCommandByte: UInt8 = ctrKeyboardInterrupt | ctrSystemFlag | ctrAuxDisabled | ctrTranslate

    // Output port (P2) bits.
    static let outputPortReset: UInt8 = 0x01  // P20, active low: 0 resets the CPU
    static let outputPortA20: UInt8 = 0x02  // P21, the A20 gate
    /// Reset line inactive, A20 enabled (KVM never masks A20; the bit is stored, not acted on).
    static let initialOutputPort: UInt8 = outputPortReset | outputPortA20

    // Replies.
    static let selfTestPassed: UInt8 = 0x55
    static let interfaceTestPassed: UInt8 = 0x00
    /// AUX interface test result: clock line stuck high, i.e. no AUX interface.
    static let auxInterfaceAbsent: UInt8 = 0x02
    /// What an unanswered keyboard transmission leaves in the output buffer (with the time-out bit).
    static let keyboardNoResponse: UInt8 = 0xFE

    /// A byte waiting in the output buffer, with the status bits that describe it.
    struct OutputByte {
        var value: UInt8
        var timedOut = false
    }

    struct State {
        /// The controller's 32 bytes of RAM reachable by 0x20–0x3F/0x60–0x7F; byte 0 is the command byte.
        var ram: [UInt8] = [I8042.initialCommandByte] + [UInt8](repeating: 0, count: 31)
        var outputPort = I8042.initialOutputPort
        var outputBuffer: [OutputByte] = []
        /// What port 0x60 reads when the output buffer is empty: the last byte read (the buffer
        /// register keeps its contents).
        var lastOutput: UInt8 = 0
        /// A command waiting for its parameter on port 0x60.
        var pendingCommand: UInt8?
        var lastWriteWasCommand = false
        /// The level last given to the interrupt line.
        var lineLevel = false

        var commandByte: UInt8 {
            get { ram[0] }
            set { ram[0] = newValue }
        }

        var status: UInt8 {
            var status = I8042.statusNotInhibited
            if let first = outputBuffer.first {
                status |= I8042.statusOutputFull
                if first.timedOut { status |= I8042.statusTimeout }
            }
            if commandByte & I8042.ctrSystemFlag != 0 { status |= I8042.statusSystemFlag }
            if lastWriteWasCommand { status |= I8042.statusLastWriteWasCommand }
            return status
        }

        /// IRQ 1: a byte is waiting and the command byte enables the keyboard interrupt.
        var interruptLevel: Bool {
            !outputBuffer.isEmpty && commandByte & I8042.ctrKeyboardInterrupt != 0
        }

        mutating func push(_ value: UInt8, timedOut: Bool = false) {
            guard outputBuffer.count < I8042.outputBufferCapacity else { return }
            outputBuffer.append(OutputByte(value: value, timedOut: timedOut))
        }

        mutating func readData() -> UInt8 {
            guard !outputBuffer.isEmpty else { return lastOutput }
            lastOutput = outputBuffer.removeFirst().value
            return lastOutput
        }

        /// A byte on port 0x60: the parameter of a pending command, or else a byte for the keyboard.
        /// Returns whether the CPU reset line was pulsed.
        mutating func writeData(_ value: UInt8) -> Bool {
            lastWriteWasCommand = false
            guard let command = pendingCommand else {
                // For the keyboard, which is not there: nobody clocks the byte in.
                push(I8042.keyboardNoResponse, timedOut: true)
                return false
            }
            pendingCommand = nil
            switch command {
            case 0x60...0x7F:  // write controller RAM (0x60: the command byte)
                ram[Int(command & 0x1F)] = value
            case 0xD1:  // write output port
                outputPort = value
                return value & I8042.outputPortReset == 0
            case 0xD2:  // write keyboard output buffer: the byte comes back as if from the keyboard
                push(value)
            default:
                break
            }
            return false
        }

        /// A command on port 0x64. Returns whether the CPU reset line was pulsed.
        mutating func writeCommand(_ command: UInt8) -> Bool {
            lastWriteWasCommand = true
            pendingCommand = nil  // a new command abandons one still waiting for its parameter
            outputBuffer.removeAll()  // so the answer is the next byte read
            switch command {
            case 0x20...0x3F:  // read controller RAM (0x20: the command byte)
                push(ram[Int(command & 0x1F)])
            case 0x60...0x7F, 0xD1, 0xD2:  // these take a parameter on port 0x60
                pendingCommand = command
            case 0xA7:  // disable AUX interface
                commandByte |= I8042.ctrAuxDisabled
            case 0xA8:  // enable AUX interface
                commandByte &= ~I8042.ctrAuxDisabled
            case 0xA9:  // AUX interface test
                push(I8042.auxInterfaceAbsent)
            case 0xAA:  // controller self-test; passing sets the system flag
                commandByte |= I8042.ctrSystemFlag
                push(I8042.selfTestPassed)
            case 0xAB:  // keyboard interface test
                push(I8042.interfaceTestPassed)
            case 0xAD:  // disable keyboard interface
                commandByte |= I8042.ctrKeyboardDisabled
            case 0xAE:  // enable keyboard interface
                commandByte &= ~I8042.ctrKeyboardDisabled
            case 0xD0:  // read output port
                push(outputPort)
            case 0xF0...0xFF:  // pulse output port bits 3:0 low where the command's bit is 0
                return command & I8042.outputPortReset == 0
            default:
                break  // unknown (or AUX-only, such as 0xD3/0xD4): ignored
            }
            return false
        }
    }
}
