import Devices
import Testing
import VMMCore

// Status register bits (Linux's I8042_STR_*).
private let obf: UInt8 = 0x01
private let ibf: UInt8 = 0x02
private let systemFlag: UInt8 = 0x04
private let commandData: UInt8 = 0x08
private let keylock: UInt8 = 0x10
private let auxData: UInt8 = 0x20
private let timeout: UInt8 = 0x40

private final class LevelRecorder: InterruptLine {
    var levels: [Bool] = []
    func setLevel(_ high: Bool) { levels.append(high) }
}

/// A controller reached the way the VMM wires it: through its two single-port views.
private final class Controller {
    let line: LevelRecorder
    private let resets: ResetCounter
    let i8042: I8042
    let data: I8042.Port
    let command: I8042.Port

    init(withInterrupt: Bool = true) {
        let line = LevelRecorder()
        let resets = ResetCounter()
        i8042 = I8042(interrupt: withInterrupt ? line : nil) { resets.count += 1 }
        data = i8042.dataPort
        command = i8042.commandPort
        self.line = line
        self.resets = resets
    }

    var resetCount: Int { resets.count }

    func status() -> UInt8 { read(command) }
    func readData() -> UInt8 { read(data) }
    func sendCommand(_ value: UInt8) { write(command, value) }
    func writeData(_ value: UInt8) { write(data, value) }

    /// Linux's i8042_command: the command, its parameters on 0x60, then the replies once OBF is set.
    func linuxCommand(_ value: UInt8, parameters: [UInt8] = [], replies: Int = 0) -> [UInt8]? {
        #expect(status() & ibf == 0)
        sendCommand(value)
        for parameter in parameters {
            #expect(status() & ibf == 0)
            writeData(parameter)
        }
        var answers: [UInt8] = []
        for _ in 0..<replies {
            guard status() & obf != 0 else { return nil }  // Linux would time out here
            answers.append(readData())
        }
        return answers
    }

    func read(_ port: I8042.Port, width: Int = 1) -> UInt8 { readBytes(port, width: width)[0] }

    func readBytes(_ device: some BusDevice, offset: UInt64 = 0, width: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: width)
        bytes.withUnsafeMutableBytes { device.read(offset: offset, data: $0) }
        return bytes
    }

    func write(_ device: some BusDevice, offset: UInt64 = 0, _ bytes: UInt8...) {
        bytes.withUnsafeBytes { device.write(offset: offset, data: $0) }
    }
}

private final class ResetCounter { var count = 0 }

@Suite struct I8042Tests {
    // MARK: Linux's probe

    @Test func linuxProbeSequence() throws {
        let kbc = Controller()
        // i8042_controller_check / i8042_flush: a controller is there and nothing is waiting.
        #expect(kbc.status() != 0xFF)
        #expect(kbc.status() & obf == 0)

        // i8042_controller_selftest
        #expect(kbc.linuxCommand(0xAA, replies: 1) == [0x55])
        #expect(kbc.status() & obf == 0)

        // i8042_controller_init: two equal CTR reads, then the CTR written back with the keyboard
        // disabled and its interrupt off.
        let first = try #require(kbc.linuxCommand(0x20, replies: 1)?.first)
        let second = try #require(kbc.linuxCommand(0x20, replies: 1)?.first)
        #expect(first == second)
        #expect(first == 0x65)  // KBDINT | SYS | AUXDIS | XLATE, as firmware leaves it
        #expect(kbc.status() & keylock != 0)  // not inhibited, so no "Keylock active" warning
        let ctr = (first | 0x10) & ~0x01
        #expect(kbc.linuxCommand(0x60, parameters: [ctr]) == [])
        #expect(kbc.linuxCommand(0x20, replies: 1) == [ctr])

        // Keyboard interface test, then disabling both ports.
        #expect(kbc.linuxCommand(0xAB, replies: 1) == [0x00])
        _ = kbc.linuxCommand(0xAD)
        _ = kbc.linuxCommand(0xA7)
        #expect(kbc.linuxCommand(0x20, replies: 1) == [ctr | 0x10 | 0x20])
        _ = kbc.linuxCommand(0xAE)
        _ = kbc.linuxCommand(0xA8)
        #expect(kbc.linuxCommand(0x20, replies: 1) == [ctr & ~0x30])
        #expect(kbc.resetCount == 0)
    }

    /// i8042_check_aux: the AUX loop (0xD3 0x5A) must fail without a time-out, and the AUX interface
    /// test must then report an error, so Linux registers no AUX port.
    @Test func theAuxCheckFindsNoAuxPortWithoutATimeout() {
        let kbc = Controller()
        kbc.sendCommand(0xD3)
        kbc.writeData(0x5A)
        let status = kbc.status()
        #expect(status & obf != 0)  // an answer arrived: no 500 ms wait
        #expect(status & auxData == 0)  // but not from AUX: Linux's "auxerr"
        #expect(status & timeout != 0)
        let answer = kbc.linuxCommand(0xA9, replies: 1)
        #expect(answer == [0x02])  // not 0x00/0xFA/0xFF, so check_aux gives up
        #expect(kbc.status() & (obf | timeout) == 0)
    }

    @Test(arguments: [UInt8(0x00), 0x01, 0x44, 0x65, 0x7F, 0xFF])
    func theCommandByteRoundTrips(value: UInt8) {
        let kbc = Controller(withInterrupt: false)
        kbc.sendCommand(0x60)
        kbc.writeData(value)
        kbc.sendCommand(0x20)
        #expect(kbc.status() & obf != 0)
        #expect(kbc.readData() == value)
        #expect(kbc.status() & obf == 0)
    }

    @Test func controllerRAMBeyondTheCommandByteRoundTrips() {
        let kbc = Controller(withInterrupt: false)
        #expect(kbc.linuxCommand(0x7F, parameters: [0xA5]) == [])
        #expect(kbc.linuxCommand(0x61, parameters: [0x3C]) == [])
        #expect(kbc.linuxCommand(0x3F, replies: 1) == [0xA5])
        #expect(kbc.linuxCommand(0x21, replies: 1) == [0x3C])
        #expect(kbc.linuxCommand(0x20, replies: 1) == [0x65])  // the command byte was not touched
    }

    // MARK: Reset

    @Test func pulsingTheResetLineCallsOnResetOncePerCommand() {
        let kbc = Controller()
        kbc.sendCommand(0xFE)
        #expect(kbc.resetCount == 1)
        // reboot=k writes 0xFE up to ten times, waiting for IBF to clear before each.
        for _ in 0..<9 {
            #expect(kbc.status() & ibf == 0)
            kbc.sendCommand(0xFE)
        }
        #expect(kbc.resetCount == 10)
        kbc.sendCommand(0xFF)  // pulses nothing
        kbc.sendCommand(0xFD)  // pulses P21, not reset
        kbc.writeData(0xFE)  // on the data port it is a keyboard byte, not a command
        #expect(kbc.resetCount == 10)
        kbc.sendCommand(0xF0)  // pulses P23…P20, reset among them
        #expect(kbc.resetCount == 11)
    }

    @Test func writingTheOutputPortWithResetLowResets() {
        let kbc = Controller()
        #expect(kbc.linuxCommand(0xD0, replies: 1) == [0x03])  // reset inactive, A20 on
        #expect(kbc.linuxCommand(0xD1, parameters: [0xDF]) == [])  // the classic A20 enable
        #expect(kbc.resetCount == 0)
        #expect(kbc.linuxCommand(0xD0, replies: 1) == [0xDF])
        _ = kbc.linuxCommand(0xD1, parameters: [0xDE])
        #expect(kbc.resetCount == 1)
    }

    // MARK: Commands and status

    @Test(arguments: [UInt8(0x00), 0x10, 0x90, 0xA0, 0xC0, 0xC8, 0xD3, 0xD4, 0xE0, 0xED])
    func unknownCommandsAreIgnored(value: UInt8) {
        let kbc = Controller()
        kbc.sendCommand(value)
        #expect(kbc.status() == keylock | systemFlag | commandData)  // no reply, nothing else changed
        #expect(kbc.resetCount == 0)
        #expect(kbc.line.levels.isEmpty)
        // The next data byte is not taken as the unknown command's parameter.
        kbc.writeData(0x00)
        #expect(kbc.linuxCommand(0x20, replies: 1) == [0x65])
    }

    @Test func aNewCommandAbandonsOneWaitingForItsParameter() {
        let kbc = Controller(withInterrupt: false)
        kbc.sendCommand(0x60)  // write CTR: waits for a byte on 0x60...
        #expect(kbc.linuxCommand(0x20, replies: 1) == [0x65])  // ...but another command comes first
        kbc.writeData(0x00)  // so this byte is for the keyboard, not the command byte
        #expect(kbc.readData() == 0xFE)
        #expect(kbc.linuxCommand(0x20, replies: 1) == [0x65])
    }

    @Test func statusBitsDescribeTheController() {
        let kbc = Controller(withInterrupt: false)
        #expect(kbc.status() == keylock | systemFlag)
        kbc.sendCommand(0xAD)
        #expect(kbc.status() & commandData != 0)  // the last write went to 0x64
        kbc.sendCommand(0x60)
        kbc.writeData(0x00)  // CTR with the system flag clear
        #expect(kbc.status() == keylock)  // SYS follows CTR bit 2; A2 shows the data write
        kbc.sendCommand(0xAA)  // a passing self-test sets the system flag
        #expect(kbc.status() == obf | systemFlag | commandData | keylock)
        #expect(kbc.readData() == 0x55)
        #expect(kbc.status() & (obf | ibf) == 0)
        #expect(kbc.readData() == 0x55)  // an empty output buffer reads its last byte again
    }

    @Test func aByteForTheAbsentKeyboardTimesOut() {
        let kbc = Controller(withInterrupt: false)
        kbc.writeData(0xF2)  // atkbd's GET ID
        #expect(kbc.status() & (obf | timeout) == obf | timeout)
        #expect(kbc.readData() == 0xFE)
        #expect(kbc.status() & (obf | timeout) == 0)
    }

    @Test func aCommandDiscardsUnreadBytesSoItsAnswerComesNext() {
        let kbc = Controller(withInterrupt: false)
        kbc.writeData(0xED)
        kbc.writeData(0x00)
        #expect(kbc.linuxCommand(0xAA, replies: 2) == nil)  // exactly one byte: the answer
        #expect(kbc.readData() == 0x55)
    }

    @Test func theOutputBufferIsBounded() {
        let kbc = Controller(withInterrupt: false)
        for _ in 0..<40 { kbc.writeData(0xF4) }  // forty bytes for the absent keyboard: forty NAKs
        var count = 0
        while kbc.status() & obf != 0, count < 100 {
            #expect(kbc.readData() == 0xFE)
            count += 1
        }
        #expect(count == I8042.outputBufferCapacity)  // 16 queued, the rest dropped
    }

    @Test func writingTheKeyboardOutputBufferEchoesTheByte() {
        let kbc = Controller(withInterrupt: false)
        #expect(kbc.linuxCommand(0xD2, parameters: [0x1C], replies: 1) == [0x1C])
        #expect(kbc.status() & timeout == 0)
    }

    // MARK: Interrupt

    @Test func theKeyboardInterruptFollowsTheOutputBufferWhenEnabled() {
        let kbc = Controller()
        kbc.sendCommand(0xD2)
        kbc.writeData(0x1E)
        #expect(kbc.line.levels == [true])  // CTR bit 0 is set after POST
        #expect(kbc.status() & obf != 0)
        #expect(kbc.line.levels == [true])  // reading status changes nothing
        #expect(kbc.readData() == 0x1E)
        #expect(kbc.line.levels == [true, false])
        _ = kbc.linuxCommand(0x60, parameters: [0x64])  // interrupt off
        kbc.writeData(0x00)
        #expect(kbc.status() & obf != 0)
        #expect(kbc.line.levels == [true, false])  // a byte waits, but no interrupt
        _ = kbc.linuxCommand(0x60, parameters: [0x65])  // on again (the command dropped the byte)
        #expect(kbc.line.levels == [true, false])
        kbc.writeData(0xF2)
        kbc.writeData(0xF2)
        #expect(kbc.line.levels == [true, false, true])  // no duplicate call for the second byte
        _ = kbc.readData()
        _ = kbc.readData()
        #expect(kbc.line.levels == [true, false, true, false])
    }

    // MARK: Ports and untrusted accesses

    @Test func theSpanDeviceAnswersAtOffsetsZeroAndFourOnly() {
        let kbc = Controller()
        let span = kbc.i8042
        kbc.write(span, offset: 4, 0xAA)
        for offset: UInt64 in [1, 2, 3, 5, 0x10, .max] {
            #expect(kbc.readBytes(span, offset: offset, width: 1) == [0xFF])
            #expect(kbc.readBytes(span, offset: offset, width: 2) == [0xFF, 0xFF])
            kbc.write(span, offset: offset, 0xFE)
        }
        #expect(kbc.resetCount == 0)
        #expect(kbc.readBytes(span, offset: 4, width: 1) == [obf | systemFlag | commandData | keylock])
        #expect(kbc.readBytes(span, offset: 0, width: 1) == [0x55])
        #expect(I8042.dataPortAddress == 0x60 && I8042.commandPortAddress == 0x64)
        #expect(I8042.portLength == 1 && I8042.spanLength == 5 && I8042.keyboardIRQ == 1)
    }

    @Test func thePortViewsIgnoreOffsetsPastTheirOnePort() {
        let kbc = Controller()
        kbc.write(kbc.command, offset: 1, 0xFE)
        kbc.write(kbc.data, offset: 4, 0x00)
        #expect(kbc.resetCount == 0)
        #expect(kbc.readBytes(kbc.command, offset: 1, width: 1) == [0xFF])
        #expect(kbc.readBytes(kbc.data, offset: 4, width: 4) == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(kbc.status() & obf == 0)  // the stray data write did not reach the keyboard path
    }

    @Test func widerAndEmptyAccessesAreHandled() {
        let kbc = Controller()
        kbc.write(kbc.command)  // empty: nothing
        #expect(kbc.status() & commandData == 0)
        kbc.write(kbc.command, 0xAA, 0xFE, 0xFE, 0xFE)  // the first byte only: self-test, not reset
        #expect(kbc.resetCount == 0)
        #expect(kbc.readBytes(kbc.data, width: 0) == [])  // consumes nothing
        #expect(kbc.readBytes(kbc.data, width: 4) == [0x55, 0, 0, 0])
        #expect(kbc.readBytes(kbc.command, width: 2) == [keylock | systemFlag | commandData, 0])
    }
}

@Suite struct I8042TypingTests {
    final class Line: InterruptLine {
        var levels: [Bool] = []
        func setLevel(_ high: Bool) { levels.append(high) }
    }

    @Test func ctrlAltDeleteArrivesAsScanCodesWithTheKeyboardInterrupt() {
        let line = Line()
        let controller = I8042(interrupt: line) {}
        #expect(controller.type(I8042.ctrlAltDelete) == 8)
        #expect(line.levels == [true])
        var codes: [UInt8] = []
        for _ in 0..<8 {
            var byte: [UInt8] = [0]
            byte.withUnsafeMutableBytes { controller.dataPort.read(offset: 0, data: $0) }
            codes.append(byte[0])
        }
        #expect(codes == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D])
        #expect(line.levels == [true, false], "the line drops once the buffer is empty")
        // The buffer is bounded: a flood is cut at its capacity.
        #expect(controller.type([UInt8](repeating: 0x1E, count: 100)) == I8042.outputBufferCapacity)
    }
}
