import VMMCore

// Device state for snapshots (rust-vmm vm-superio's `state()` / `from_state()`): each device
// exports what the guest can observe as plain bytes, and is rebuilt from such bytes through the
// same limits the guest's own writes meet — restored state is untrusted input. Each export
// starts with a version byte of its own, so a device can change its format without the others.
// The interrupt line is driven again from the imported state (it is an output: the in-kernel
// irqchip, restored before the devices, holds the level it last saw).

extension Serial16550 {
    static let stateVersion: UInt8 = 1

    /// The guest-visible registers and the receive FIFO. Call while the VM is paused (no vCPU in
    /// the middle of a register access, so no byte is half-transmitted).
    public func exportState() -> [UInt8] {
        state.withLock { state in
            var writer = StateWriter()
            writer.u8(Self.stateVersion)
            for value in [
                state.interruptEnable, state.lineControl, state.modemControl, state.scratch, state.divisorLatchLow, state.divisorLatchHigh,
                state.modemStatusDeltas,
            ] { writer.u8(value) }
            writer.bool(state.fifosEnabled)
            writer.bool(state.overrunError)
            writer.bool(state.transmitterEmptyPending)
            var fifo = state.receiveFIFO
            var bytes: [UInt8] = []
            while let byte = fifo.removeFirst() { bytes.append(byte) }
            writer.data(bytes)
            return writer.bytes
        }
    }

    /// Replaces the state with an export's, after checking every value against what the registers
    /// can hold: reserved bits set, a FIFO longer than the UART's, trailing bytes — refused.
    public func importState(_ bytes: [UInt8]) throws(StateFormatError) {
        var reader = StateReader(bytes)
        let version = try reader.u8("the serial port's state")
        guard version == Self.stateVersion else { throw .impossible("serial port state version \(version) (this swiftkvm has \(Self.stateVersion))") }
        var restored = State()
        restored.interruptEnable = try reader.u8("the serial port's IER")
        restored.lineControl = try reader.u8("the serial port's LCR")
        restored.modemControl = try reader.u8("the serial port's MCR")
        restored.scratch = try reader.u8("the serial port's SCR")
        restored.divisorLatchLow = try reader.u8("the serial port's DLL")
        restored.divisorLatchHigh = try reader.u8("the serial port's DLM")
        restored.modemStatusDeltas = try reader.u8("the serial port's MSR")
        guard restored.interruptEnable & 0xF0 == 0 else { throw .impossible("the serial port's IER 0x\(String(restored.interruptEnable, radix: 16)) has reserved bits set") }
        guard restored.modemControl & ~Self.mcrWritable == 0 else { throw .impossible("the serial port's MCR 0x\(String(restored.modemControl, radix: 16)) has reserved bits set") }
        guard restored.modemStatusDeltas & 0xF0 == 0 else { throw .impossible("the serial port's MSR deltas 0x\(String(restored.modemStatusDeltas, radix: 16)) have reserved bits set") }
        restored.fifosEnabled = try reader.bool("the serial port's FIFO mode")
        restored.overrunError = try reader.bool("the serial port's overrun flag")
        restored.transmitterEmptyPending = try reader.bool("the serial port's THRE interrupt")
        let received = try reader.data(limit: Self.receiveFIFOCapacity, "the serial port's receive FIFO")
        for byte in received { restored.receiveFIFO.append(byte) }
        try reader.finish("the serial port's state")
        state.withLock { state in
            restored.lineLevel = state.lineLevel
            state = restored
            updateInterruptLine(&state)
        }
    }
}

extension I8042 {
    static let stateVersion: UInt8 = 1

    public func exportState() -> [UInt8] {
        state.withLock { state in
            var writer = StateWriter()
            writer.u8(Self.stateVersion)
            writer.raw(state.ram)
            writer.u8(state.outputPort)
            writer.u8(state.lastOutput)
            writer.optional(state.pendingCommand) { $0.u8($1) }
            writer.bool(state.lastWriteWasCommand)
            writer.u32(UInt32(state.outputBuffer.count))
            for byte in state.outputBuffer {
                writer.u8(byte.value)
                writer.bool(byte.timedOut)
            }
            return writer.bytes
        }
    }

    /// Checked like the guest's writes: the output buffer no longer than the controller's, a
    /// pending command only one that takes a parameter.
    public func importState(_ bytes: [UInt8]) throws(StateFormatError) {
        var reader = StateReader(bytes)
        let version = try reader.u8("the i8042's state")
        guard version == Self.stateVersion else { throw .impossible("i8042 state version \(version) (this swiftkvm has \(Self.stateVersion))") }
        var restored = State()
        restored.ram = try reader.raw(count: 32, "the i8042's RAM")
        restored.outputPort = try reader.u8("the i8042's output port")
        restored.lastOutput = try reader.u8("the i8042's last output")
        restored.pendingCommand = try reader.optional("the i8042's pending command") { (r: inout StateReader) throws(StateFormatError) in
            try r.u8("the i8042's pending command")
        }
        if let command = restored.pendingCommand, !(0x60...0x7F).contains(command), command != 0xD1, command != 0xD2 {
            throw .impossible("the i8042 waits for a parameter of command 0x\(String(command, radix: 16)), which takes none")
        }
        restored.lastWriteWasCommand = try reader.bool("the i8042's status")
        let count = try reader.count(limit: Self.outputBufferCapacity, minimumSize: 2, "bytes in the i8042's output buffer")
        for _ in 0..<count {
            restored.outputBuffer.append(OutputByte(value: try reader.u8("the i8042's output buffer"), timedOut: try reader.bool("the i8042's output buffer")))
        }
        try reader.finish("the i8042's state")
        state.withLock { state in
            restored.lineLevel = state.lineLevel
            state = restored
            updateInterruptLine(&state)
        }
    }
}

extension PowerManagementEvents {
    static let stateVersion: UInt8 = 1

    public func exportState() -> [UInt8] {
        state.withLock { state in
            var writer = StateWriter()
            writer.u8(Self.stateVersion)
            writer.u16(state.status)
            writer.u16(state.enable)
            writer.bool(state.heldPress)
            return writer.bytes
        }
    }

    /// Only the bits this block implements may be set, as for the guest's writes.
    public func importState(_ bytes: [UInt8]) throws(StateFormatError) {
        var reader = StateReader(bytes)
        let version = try reader.u8("the PM1 event block's state")
        guard version == Self.stateVersion else { throw .impossible("PM1 state version \(version) (this swiftkvm has \(Self.stateVersion))") }
        let status = try reader.u16("PM1_STS")
        let enable = try reader.u16("PM1_EN")
        let held = try reader.bool("the held power-button press")
        try reader.finish("the PM1 event block's state")
        guard status & ~Self.implemented == 0, enable & ~Self.implemented == 0 else {
            throw .impossible("PM1_STS 0x\(String(status, radix: 16)) / PM1_EN 0x\(String(enable, radix: 16)) set bits this block does not have")
        }
        update { state in
            state.status = status
            state.enable = enable
            state.heldPress = held
        }
    }
}
