import Devices
import FuzzSupport
import VMMCore

/// The 8254 PIT on port sequences (0x40–0x43 and the speaker port 0x61) with time moving by
/// fuzzer-chosen steps, as the VMM's timer thread would move it.
final class Line: InterruptLine { func setLevel(_ high: Bool) {} }
final class Clock: GuestClock { var nanoseconds: UInt64 = 1_000_000 }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    let clock = Clock()
    let pit = PIT8254(clock: clock, interruptLine: Line())
    let speaker = pit.speakerPort
    var operations = 0
    while !input.isAtEnd, operations < 8192 {
        operations += 1
        let kind = input.byte()
        let offset = UInt64(kind >> 4 & 7)
        switch kind & 7 {
        case 0, 1:
            [input.byte()].withUnsafeBytes { pit.write(offset: offset, data: $0) }
        case 2, 3:
            var bytes = [UInt8](repeating: 0, count: Int(kind >> 7) + 1)
            bytes.withUnsafeMutableBytes { pit.read(offset: offset, data: $0) }
        case 4:
            [input.byte()].withUnsafeBytes { speaker.write(offset: 0, data: $0) }
        case 5:
            var byte: [UInt8] = [0]
            byte.withUnsafeMutableBytes { speaker.read(offset: 0, data: $0) }
        case 6:
            // Time only moves forward; big steps too (a host that slept).
            let (sum, overflow) = clock.nanoseconds.addingReportingOverflow(UInt64(input.integer(UInt32.self)) << (kind >> 7 == 1 ? 16 : 0))
            clock.nanoseconds = overflow ? UInt64.max : sum
            pit.advance(to: clock.nanoseconds)
        default:
            _ = pit.nextDeadline
        }
    }
    return 0
}

@_cdecl("pit8254_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
