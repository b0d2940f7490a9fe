import Devices
import Testing

/// `isReceiving`: when a host may offer input without Linux throwing it away. The register writes
/// below are those of Debian's Linux 6.1 opening its console (drivers/tty/serial/8250/8250_port.c:
/// `serial8250_do_startup` clears the FIFOs and only sets the IER shadow; `serial8250_do_set_termios`
/// then writes IER, the divisor and LCR, and last FCR, turning the FIFOs back on).
@Suite struct Serial16550ReceiverTests {
    private let serial = Serial16550 { _ in }

    private func write(_ offset: UInt64, _ value: UInt8) {
        [value].withUnsafeBytes { serial.write(offset: offset, data: $0) }
    }

    private var dataReady: Bool {
        var status: UInt8 = 0
        withUnsafeMutableBytes(of: &status) { serial.read(offset: 5, data: $0) }  // LSR
        return status & 0x01 != 0
    }

    @Test func inputOfferedOnlyWhileReceivingSurvivesTheConsoleOpening() {
        let ier: UInt64 = 1, fcr: UInt64 = 2, lcr: UInt64 = 3
        #expect(!serial.isReceiving, "after reset: interrupts off, FIFOs off")
        #expect(serial.enqueueInput(Array("early".utf8)) == 5)

        // serial8250_do_startup → serial8250_clear_fifos: FIFOs on, both cleared, off.
        write(fcr, 0x01)
        write(fcr, 0x07)
        write(fcr, 0x00)
        #expect(!dataReady, "the early bytes are gone")

        // serial8250_do_set_termios: IER first — receive interrupts on, FIFOs still off …
        write(ier, 0x05)
        #expect(!serial.isReceiving)
        #expect(serial.enqueueInput(Array("lost".utf8)) == 4)
        write(lcr, 0x83)  // the divisor latch, then back
        write(lcr, 0x03)
        // … then FCR, which turns the FIFOs on and so clears the receive FIFO once more.
        write(fcr, 0x01)
        write(fcr, 0x81)
        #expect(!dataReady, "bytes offered while IER was on but the FIFOs off are gone too")
        #expect(serial.isReceiving)

        // From here the port keeps what it is given: set_termios again (a shell's tcsetattr)
        // rewrites FCR with bit 0 already set, which clears nothing.
        #expect(serial.enqueueInput(Array("uname -r\n".utf8)) == 9)
        write(fcr, 0x01)
        write(fcr, 0x81)
        #expect(dataReady, "the input is still there")

        // Loopback disconnects the receiver from the host.
        write(4, 0x10)
        #expect(!serial.isReceiving)
    }
}
