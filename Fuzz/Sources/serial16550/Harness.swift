import Devices
import FuzzSupport
import VMMCore

/// The 16550 UART on register sequences (reads and writes of its eight registers, with DLAB) and
/// host input arriving in between; its RX FIFO must stay bounded.
final class Line: InterruptLine { func setLevel(_ high: Bool) {} }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    var written = 0
    let serial = Serial16550(interrupt: Line()) { _ in written += 1 }
    var operations = 0
    while !input.isAtEnd, operations < 8192 {
        operations += 1
        let kind = input.byte()
        let offset = UInt64(kind >> 4 & 7)
        let width = kind & 0x80 != 0 ? 2 : 1
        switch kind & 3 {
        case 0:
            let bytes = input.take(width)
            bytes.withUnsafeBytes { serial.write(offset: offset, data: $0) }
        case 1:
            var bytes = [UInt8](repeating: 0, count: width)
            bytes.withUnsafeMutableBytes { serial.read(offset: offset, data: $0) }
        case 2:
            _ = serial.enqueueInput(input.take(Int(input.byte() & 0x7F)))
        default:
            _ = serial.enqueueInput([UInt8](repeating: 0x41, count: Int(input.byte()) * 4))
        }
    }
    return 0
}

@_cdecl("serial16550_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
