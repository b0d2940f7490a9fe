import Devices
import Testing
import VMMCore

/// Collects what a device hands to its callback.
private final class Recorder<Value> {
    var values: [Value] = []
    func append(_ value: Value) { values.append(value) }
}

private func write(_ device: some BusDevice, offset: UInt64, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { device.write(offset: offset, data: $0) }
}

/// Reads `width` bytes the way the exit handler does: into a zeroed buffer.
private func read(_ device: some BusDevice, offset: UInt64, width: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: width)
    bytes.withUnsafeMutableBytes { device.read(offset: offset, data: $0) }
    return bytes
}

@Suite struct DebugExitPortTests {
    @Test func theFirstByteWrittenAtOffsetZeroIsTheStatus() {
        let statuses = Recorder<UInt8>()
        let port = DebugExitPort { statuses.append($0) }
        write(port, offset: 0, [7])
        write(port, offset: 0, [0x2A, 0x99, 0x98, 0x97])  // a wider write: only its first byte counts
        write(port, offset: 0, [0])
        #expect(statuses.values == [7, 0x2A, 0])
    }

    @Test(arguments: [UInt64(1), 2, 3, 0xFF])
    func writesAtOtherOffsetsAreIgnored(offset: UInt64) {
        let statuses = Recorder<UInt8>()
        let port = DebugExitPort { statuses.append($0) }
        write(port, offset: offset, [1])
        write(port, offset: offset, [1, 2, 3, 4])
        #expect(statuses.values.isEmpty)
    }

    @Test func anEmptyWriteIsIgnored() {
        let statuses = Recorder<UInt8>()
        let port = DebugExitPort { statuses.append($0) }
        write(port, offset: 0, [])
        #expect(statuses.values.isEmpty)
    }

    @Test func readsGiveAllOnes() {
        let port = DebugExitPort { _ in }
        #expect(read(port, offset: 0, width: 1) == [0xFF])
        #expect(read(port, offset: 0, width: 4) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(DebugExitPort.port == 0xF4)
    }
}

@Suite struct ReportPortTests {
    @Test func writesOfOneTwoAndFourBytesAreZeroExtended() {
        let port = ReportPort()
        write(port, offset: 0, [0x81])
        write(port, offset: 0, [0x34, 0x92])
        write(port, offset: 0, [0x78, 0x56, 0x34, 0xF2])
        write(port, offset: 0, [0xFF, 0xFF])
        #expect(port.values == [0x81, 0x9234, 0xF234_5678, 0xFFFF])
    }

    @Test(arguments: [UInt64(1), 2, 3, 4, 0x100])
    func writesAtOtherOffsetsAreIgnored(offset: UInt64) {
        let port = ReportPort()
        write(port, offset: offset, [1, 2, 3, 4])
        write(port, offset: 0, [5])
        write(port, offset: offset, [6])
        #expect(port.values == [5])
    }

    @Test(arguments: [0, 1, 3, 16])
    func valuesAreCappedAtCapacity(capacity: Int) {
        let port = ReportPort(capacity: capacity)
        for value in 0..<UInt8(capacity + 5) { write(port, offset: 0, [value]) }
        #expect(port.values == (0..<UInt32(capacity)).map { $0 })
    }

    @Test func readsGiveAllOnesAndRecordNothing() {
        let port = ReportPort()
        #expect(read(port, offset: 0, width: 4) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(read(port, offset: 0, width: 2) == [0xFF, 0xFF])
        #expect(port.values.isEmpty)
        #expect(ReportPort.port == 0xF8)
        #expect(ReportPort().capacity == 1 << 16)
    }
}

@Suite struct TransmitOnlySerialTests {
    @Test func bytesWrittenToTheTransmitRegisterAreForwarded() {
        let output = Recorder<UInt8>()
        let serial = TransmitOnlySerial { output.append($0) }
        for byte in Array("Hi\n".utf8) { write(serial, offset: 0, [byte]) }
        write(serial, offset: 0, [0x21, 0x22])  // a 16-bit out: the low byte is the character
        #expect(output.values == [0x48, 0x69, 0x0A, 0x21])
    }

    @Test(arguments: UInt64(1)...7)
    func writesToOtherRegistersAreNotOutput(offset: UInt64) {
        let output = Recorder<UInt8>()
        let serial = TransmitOnlySerial { output.append($0) }
        write(serial, offset: offset, [0x41])
        #expect(output.values.isEmpty)
    }

    @Test func lineStatusSaysTheTransmitterIsEmpty() {
        let serial = TransmitOnlySerial { _ in }
        #expect(read(serial, offset: 5, width: 1) == [0x60])
    }

    @Test(arguments: [UInt64(0), 1, 2, 3, 4, 6, 7])
    func otherRegistersReadZero(offset: UInt64) {
        let serial = TransmitOnlySerial { _ in }
        var byte: [UInt8] = [0xAB]  // not zeroed: the device itself must write the 0
        byte.withUnsafeMutableBytes { serial.read(offset: offset, data: $0) }
        #expect(byte == [0])
    }

    @Test func theUARTSitsAtCOM1OnEightPorts() {
        #expect(TransmitOnlySerial.com1 == 0x3F8)
        #expect(TransmitOnlySerial.portCount == 8)
    }
}

@Suite struct PowerAndPanicPortTests {
    @Test func pvpanicReportsOnlyThePanickedBit() {
        var panics = 0
        let port = PanicPort { panics += 1 }
        var supported: UInt8 = 0
        withUnsafeMutableBytes(of: &supported) { port.read(offset: 0, data: $0) }
        #expect(supported == 0b11, "PANICKED and CRASH_LOADED are offered")
        for value: UInt8 in [0, 2] { withUnsafeBytes(of: value) { port.write(offset: 0, data: $0) } }
        #expect(panics == 0)
        withUnsafeBytes(of: UInt8(1)) { port.write(offset: 0, data: $0) }
        #expect(panics == 1)
    }

    @Test func powerControlReadsBackItsValueAndReportsOnlyWhatItIsTold() {
        var offs = 0
        let port = PowerControlPort(readValue: 0x0001, isPowerOff: { $0 == 0x3400 }) { offs += 1 }
        var value: UInt16 = 0xFFFF
        withUnsafeMutableBytes(of: &value) { port.read(offset: 0, data: $0) }
        #expect(value == 1, "SCI_EN reads back")
        for written: UInt16 in [0x1400, 0x2000, 0x0034] { withUnsafeBytes(of: written) { port.write(offset: 0, data: $0) } }
        #expect(offs == 0)
        withUnsafeBytes(of: UInt16(0x3400)) { port.write(offset: 1, data: $0) }
        #expect(offs == 0, "another offset")
        withUnsafeBytes(of: UInt16(0x3400)) { port.write(offset: 0, data: $0) }
        #expect(offs == 1)
        let byteWide = PowerControlPort(isPowerOff: { $0 == 0x34 }) { offs += 1 }
        withUnsafeBytes(of: UInt8(0x34)) { byteWide.write(offset: 0, data: $0) }
        #expect(offs == 2, "an 8-bit register (hardware-reduced sleep control)")
    }
}
