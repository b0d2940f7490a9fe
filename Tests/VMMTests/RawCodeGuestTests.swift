import Testing
import VMM
import VMMCore

/// Guests given as raw machine code: the fastest, most exact tests of the vCPU setup and exit path.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct RawCodeGuestTests {
    @Test func realModeWritesConsoleAndExitStatus() throws {
        // mov dx, 0x3F8; mov al, 'A'; out dx, al; mov al, 7; out 0xF4, al
        let code: [UInt8] = [0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xB0, 0x07, 0xE6, 0xF4]
        let run = try UnitGuest(program: code, mode: .real, timeLimit: .seconds(20)).run()
        #expect(run.outcome == .exited(status: 7))
        #expect(run.consoleText == "A")
    }

    @Test(arguments: [CPUMode.protected, .long, .user])
    func everyModeRunsTheSameCode(mode: CPUMode) throws {
        // mov edx, 0x3F8 (no 66 prefix in 32/64-bit: BA imm32); mov al,'B'; out dx,al; mov al, 9; out 0xF4, al
        let code: [UInt8] = [0xBA, 0xF8, 0x03, 0x00, 0x00, 0xB0, 0x42, 0xEE, 0xB0, 0x09, 0xE6, 0xF4]
        let run = try UnitGuest(program: code, mode: mode, timeLimit: .seconds(20)).run()
        #expect(run.outcome == .exited(status: 9), "\(mode): \(run.outcome)")
        #expect(run.consoleText == "B")
    }
}
