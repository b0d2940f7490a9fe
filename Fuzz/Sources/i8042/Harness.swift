import Devices
import FuzzSupport
import VMMCore

/// The i8042 keyboard controller on sequences of data-port (0x60) and command-port (0x64)
/// reads and writes, commands with and without their parameter bytes.
final class Line: InterruptLine { func setLevel(_ high: Bool) {} }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    var resets = 0
    let controller = I8042(interrupt: Line()) { resets += 1 }
    let ports = [controller.dataPort, controller.commandPort]
    var operations = 0
    while !input.isAtEnd, operations < 8192 {
        operations += 1
        let kind = input.byte()
        let port = ports[Int(kind & 1)]
        let offset = UInt64(kind >> 5 & 1)  // mostly 0; 1 is outside the one-byte port
        if kind & 2 == 0 {
            [input.byte()].withUnsafeBytes { port.write(offset: offset, data: $0) }
        } else {
            var bytes = [UInt8](repeating: 0, count: Int(kind >> 6) + 1)
            bytes.withUnsafeMutableBytes { port.read(offset: offset, data: $0) }
        }
    }
    return 0
}

@_cdecl("i8042_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
