import Devices
import Testing
import VMMCore

/// Device state for snapshots: each device exports what the guest sees and is rebuilt from it,
/// and an export with values the registers cannot hold is refused like a bad guest write.
struct DeviceStateTests {
    final class Line: InterruptLine, @unchecked Sendable {
        var levels: [Bool] = []
        func setLevel(_ high: Bool) { levels.append(high) }
    }

    static func write(_ device: some BusDevice, _ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { device.write(offset: offset, data: $0) }
    }

    static func read(_ device: some BusDevice, _ offset: UInt64) -> UInt8 {
        var value: UInt8 = 0
        withUnsafeMutableBytes(of: &value) { device.read(offset: offset, data: $0) }
        return value
    }

    static func expectRefused(_ words: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("accepted; expected a refusal saying '\(words)'", sourceLocation: sourceLocation)
        } catch {
            #expect("\(error)".contains(words), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func aSerialPortComesBackWithItsRegistersFIFOAndInterrupt() throws {
        let serial = Serial16550 { _ in }
        Self.write(serial, 3, 0x83)  // DLAB
        Self.write(serial, 0, 1)  // 115200 baud
        Self.write(serial, 3, 0x03)  // 8N1
        Self.write(serial, 2, 0x01)  // FIFOs on
        Self.write(serial, 1, 0x01)  // received-data interrupt
        Self.write(serial, 7, 0x5A)  // scratch
        #expect(serial.enqueueInput(Array("hello".utf8)) == 5)
        let line = Line()
        let restored = Serial16550(interrupt: line) { _ in }
        try restored.importState(serial.exportState())
        #expect(restored.exportState() == serial.exportState())
        #expect(line.levels == [true], "the pending received-data interrupt is raised again")
        #expect(Self.read(restored, 7) == 0x5A)
        #expect(restored.isReceiving)
        #expect((0..<5).map { _ in Self.read(restored, 0) } == Array("hello".utf8))
    }

    @Test func impossibleSerialStateIsRefused() throws {
        let good = Serial16550 { _ in }.exportState()
        var reservedIER = good
        reservedIER[1] = 0xF1
        Self.expectRefused("IER 0xf1 has reserved bits") { try Serial16550 { _ in }.importState(reservedIER) }
        var reservedMCR = good
        reservedMCR[3] = 0xE0
        Self.expectRefused("MCR 0xe0 has reserved bits") { try Serial16550 { _ in }.importState(reservedMCR) }
        var longFIFO = Array(good.prefix(good.count - 4))
        longFIFO += [65, 0, 0, 0] + [UInt8](repeating: 0x41, count: 65)
        Self.expectRefused("receive FIFO of 65 bytes (at most 64)") { try Serial16550 { _ in }.importState(longFIFO) }
        Self.expectRefused("truncated") { try Serial16550 { _ in }.importState(Array(good.prefix(5))) }
        Self.expectRefused("unexpected bytes") { try Serial16550 { _ in }.importState(good + [0]) }
        var version = good
        version[0] = 9
        Self.expectRefused("serial port state version 9") { try Serial16550 { _ in }.importState(version) }
        var notBoolean = good
        notBoolean[8] = 2
        Self.expectRefused("not a boolean") { try Serial16550 { _ in }.importState(notBoolean) }
    }

    @Test func anI8042ComesBackWithItsCommandByteAndOutputBuffer() throws {
        let controller = I8042 {}
        Self.write(controller.commandPort, 0, 0x60)  // write the command byte…
        Self.write(controller.dataPort, 0, 0x47)  // …keyboard interrupt on, translate
        #expect(controller.type([0x1C, 0x9C]) == 2)
        let line = Line()
        let restored = I8042(interrupt: line) {}
        try restored.importState(controller.exportState())
        #expect(restored.exportState() == controller.exportState())
        #expect(line.levels == [true])
        #expect(Self.read(restored.dataPort, 0) == 0x1C)
        #expect(Self.read(restored.dataPort, 0) == 0x9C)
    }

    @Test func impossibleI8042StateIsRefused() throws {
        let controller = I8042 {}
        Self.write(controller.commandPort, 0, 0xD1)  // waits for the output port's value
        var state = controller.exportState()
        let pending = 1 + 32 + 2 + 1  // version, RAM, output port, last output, presence byte
        #expect(state[pending] == 0xD1)
        state[pending] = 0xAA
        Self.expectRefused("command 0xaa, which takes none") { try I8042 {}.importState(state) }
        var overfull = I8042 {}.exportState()
        overfull.removeLast(4)
        overfull += [17, 0, 0, 0] + [UInt8](repeating: 0, count: 34)
        Self.expectRefused("17 bytes in the i8042's output buffer (at most 16)") { try I8042 {}.importState(overfull) }
    }

    @Test func thePowerButtonBlockComesBackAndRefusesBitsItLacks() throws {
        let events = PowerManagementEvents(sci: nil)
        withUnsafeBytes(of: UInt16(0x100).littleEndian) { events.write(offset: 2, data: $0) }
        events.pressPowerButton()
        let line = Line()
        let restored = PowerManagementEvents(sci: line)
        try restored.importState(events.exportState())
        #expect(restored.registers == (0x100, 0x100))
        #expect(line.levels == [true], "the SCI is raised again")
        Self.expectRefused("set bits this block does not have") { try PowerManagementEvents(sci: nil).importState([1, 0x01, 0, 0, 0, 0]) }
    }
}
