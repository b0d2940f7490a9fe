import Devices
import FuzzSupport
import VMM
import VMMCore

/// Restored state is untrusted input: a whole state file (as it is, or its payload framed with a
/// correct checksum so the fuzzer reaches the checks behind the CRC), or one device's export
/// (16550, i8042, PM1 block, emulated PIT). Anything accepted is exported and read again.
final class Line: InterruptLine { func setLevel(_ high: Bool) {} }
final class Clock: GuestClock { var nanoseconds: UInt64 = 5_000_000_000 }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    let mode = input.byte()
    let bytes = input.take(1 << 20)
    switch mode % 6 {
    case 0, 1:
        let file = mode % 6 == 0 ? bytes : StateFile.encode(payload: bytes)
        if let snapshot = try? MachineSnapshot(decoding: file) {
            guard (try? MachineSnapshot(decoding: snapshot.encoded())) == snapshot else { fatalError("a decoded snapshot did not round-trip") }
        }
    case 2:
        let serial = Serial16550(interrupt: Line()) { _ in }
        if (try? serial.importState(bytes)) != nil { try! Serial16550 { _ in }.importState(serial.exportState()) }
    case 3:
        let controller = I8042(interrupt: Line()) {}
        if (try? controller.importState(bytes)) != nil { try! I8042 {}.importState(controller.exportState()) }
    case 4:
        let events = PowerManagementEvents(sci: Line())
        if (try? events.importState(bytes)) != nil { try! PowerManagementEvents(sci: nil).importState(events.exportState()) }
    default:
        let clock = Clock()
        let pit = PIT8254(clock: clock, interruptLine: Line())
        if (try? pit.importState(bytes)) != nil {
            clock.nanoseconds += 1_000_000
            pit.advance(to: clock.nanoseconds)
            _ = pit.nextDeadline
            try! PIT8254(clock: clock, interruptLine: Line()).importState(pit.exportState())
        }
    }
    return 0
}

@_cdecl("snapshot_state_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
