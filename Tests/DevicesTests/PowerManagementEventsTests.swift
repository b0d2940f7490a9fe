import Devices
import Testing
import VMMCore

/// The PM1 event block's fixed power button: status and enable bits, write-1-to-clear, the SCI
/// level, and a press held until the guest enables the event.
@Suite struct PowerManagementEventsTests {
    final class Line: InterruptLine {
        var levels: [Bool] = []
        func setLevel(_ high: Bool) { levels.append(high) }
    }

    func write16(_ device: PowerManagementEvents, offset: UInt64, _ value: UInt16) {
        let bytes = [UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8)]
        bytes.withUnsafeBytes { device.write(offset: offset, data: $0) }
    }

    func read16(_ device: PowerManagementEvents, offset: UInt64) -> UInt16 {
        var bytes: [UInt8] = [0, 0]
        bytes.withUnsafeMutableBytes { device.read(offset: offset, data: $0) }
        return UInt16(bytes[0]) | UInt16(bytes[1]) << 8
    }

    @Test func aPressWithTheEventEnabledRaisesTheSCIUntilCleared() {
        let line = Line()
        let events = PowerManagementEvents(sci: line)
        write16(events, offset: 2, 0x0100)  // PWRBTN_EN
        #expect(events.isPowerButtonEnabled)
        #expect(line.levels.isEmpty)
        events.pressPowerButton()
        #expect(read16(events, offset: 0) == 0x0100)
        #expect(line.levels == [true])
        // Writing 0 changes nothing; writing 1 clears (§4.8.3.1.1: write-1-to-clear).
        write16(events, offset: 0, 0)
        #expect(read16(events, offset: 0) == 0x0100)
        write16(events, offset: 0, 0x0100)
        #expect(read16(events, offset: 0) == 0)
        #expect(line.levels == [true, false])
    }

    @Test func aPressBeforeTheGuestListensIsHeldUntilItDoes() {
        let line = Line()
        let events = PowerManagementEvents(sci: line)
        events.pressPowerButton()
        #expect(line.levels.isEmpty, "no SCI while the event is disabled")
        // Linux's ACPI start-up clears every status bit before it enables the events it handles.
        write16(events, offset: 0, 0xFFFF)
        #expect(read16(events, offset: 0) == 0)
        write16(events, offset: 2, 0x0100)
        #expect(read16(events, offset: 0) == 0x0100, "the held press is delivered")
        #expect(line.levels == [true])
    }

    @Test func onlyThePowerButtonBitsExistAndOddAccessesAreHarmless() {
        let line = Line()
        let events = PowerManagementEvents(sci: line)
        write16(events, offset: 2, 0xFFFF)
        #expect(read16(events, offset: 2) == 0x0100)
        events.pressPowerButton()
        // Byte-wide accesses: the high byte of PM1_STS holds PWRBTN_STS.
        var byte: [UInt8] = [0]
        byte.withUnsafeMutableBytes { events.read(offset: 1, data: $0) }
        #expect(byte == [0x01])
        [UInt8(0x01)].withUnsafeBytes { events.write(offset: 1, data: $0) }
        #expect(read16(events, offset: 0) == 0)
        // Beyond the block, and offsets that would overflow: ignored, read as zero.
        var wide: [UInt8] = [0xAA, 0xAA, 0xAA, 0xAA]
        wide.withUnsafeMutableBytes { events.read(offset: UInt64.max - 1, data: $0) }
        #expect(wide == [0, 0, 0, 0])
        [UInt8](repeating: 0xFF, count: 8).withUnsafeBytes { events.write(offset: UInt64.max - 2, data: $0) }
        #expect(line.levels == [true, false])
    }
}
