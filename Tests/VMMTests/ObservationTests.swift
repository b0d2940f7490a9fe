import Devices
import Glibc
import KVM
import Testing
import VMMCore

@testable import VMM

/// `--trace` and `--stats` as the API offers them: exact exit sequences of firmware guests, the
/// line format, and the statistics table's sums.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct ExitTraceGuestTests {
    @Test func exitCodeGuestMakesExactlyOneExit() throws {
        var guest = try UnitGuest(contentsOf: "\(Firmware.directory)/exit-code.bin", mode: .real, timeLimit: .seconds(30))
        let trace = ExitTrace.inMemory()
        guest.trace = trace
        let run = try guest.run()
        #expect(run.outcome == .exited(status: 42))
        #expect(trace.lines == ["vcpu0 io out port=0xf4 size=1 data=2a DebugExitPort 0xf4"])
    }

    /// hello-long polls the line status register before each byte, then writes it, then exits.
    @Test func helloLongTraceIsPollThenWritePerByteThenExit() throws {
        var guest = try UnitGuest(contentsOf: "\(Firmware.directory)/hello-long.bin", mode: .long, timeLimit: .seconds(30))
        let trace = ExitTrace.inMemory()
        guest.trace = trace
        let run = try guest.run()
        #expect(run.outcome == .exited(status: 0))
        let serial = "TransmitOnlySerial 0x3f8-0x3ff"
        var expected: [String] = []
        for byte in "Hello from long mode!\n".utf8 {
            expected.append("vcpu0 io in port=0x3fd size=1 data=60 \(serial)")
            expected.append("vcpu0 io out port=0x3f8 size=1 data=\(String(format2: byte)) \(serial)")
        }
        expected.append("vcpu0 io out port=0xf4 size=1 data=00 DebugExitPort 0xf4")
        #expect(trace.lines == expected)
        // The statistics agree with the trace, exit for exit.
        #expect(run.statistics.total == trace.lines.count)
        #expect(run.statistics.deviceExits == ["\(serial) (ports)": 44, "DebugExitPort 0xf4 (ports)": 1])
        #expect(run.vcpus.count == 1)
        #expect(run.vcpus[0].statistics.total == 45)
    }

    @Test func aTraceFileHoldsTheSameLines() throws {
        let path = "/tmp/swiftkvm-trace-\(getpid()).txt"
        defer { unlink(path) }
        var guest = try UnitGuest(contentsOf: "\(Firmware.directory)/exit-code.bin", mode: .real, timeLimit: .seconds(30))
        guest.trace = try ExitTrace(path: path)
        _ = try guest.run()
        guest.trace = nil  // closes the file
        #expect(String(decoding: try readHostFile(path), as: UTF8.self) == "vcpu0 io out port=0xf4 size=1 data=2a DebugExitPort 0xf4\n")
    }
}

@Suite struct ExitTraceFormatTests {
    @Test func linesForEachKindOfExit() {
        var bytes: [UInt8] = [0x48, 0x69, 0x21, 0x0A, 0x01, 0x00, 0x00, 0x00]
        bytes.withUnsafeMutableBytes { raw in
            let four = UnsafeMutableRawBufferPointer(rebasing: raw[0..<4])
            let string = PortIOExit(direction: .write, port: 0x3F8, size: 1, count: 4, data: four)
            #expect(ExitTrace.line(vcpu: 1, exit: .portIO(string), device: "Serial16550 0x3f8-0x3ff") == "vcpu1 io out port=0x3f8 size=1 count=4 data=4869210a Serial16550 0x3f8-0x3ff")
            let word = PortIOExit(direction: .read, port: 0x80, size: 2, count: 1, data: UnsafeMutableRawBufferPointer(rebasing: raw[4..<6]))
            #expect(ExitTrace.line(vcpu: 0, exit: .portIO(word), device: nil) == "vcpu0 io in port=0x80 size=2 data=0100 unclaimed")
            let mmio = MMIOExit(direction: .write, address: 0xD000_0070, data: UnsafeMutableRawBufferPointer(rebasing: raw[4..<8]))
            #expect(ExitTrace.line(vcpu: 0, exit: .mmio(mmio), device: "VirtioMMIOTransport 0xd0000000-0xd0000fff") == "vcpu0 mmio write addr=0xd0000070 size=4 data=01000000 VirtioMMIOTransport 0xd0000000-0xd0000fff")
        }
        #expect(ExitTrace.line(vcpu: 0, exit: .halt, device: nil) == "vcpu0 hlt")
        #expect(ExitTrace.line(vcpu: 2, exit: .shutdown, device: nil) == "vcpu2 shutdown")
        #expect(ExitTrace.line(vcpu: 0, exit: .internalError(suberror: 1, data: []), device: nil) == "vcpu0 internal-error suberror=1")
    }

    @Test func theTableSumsEachRowAcrossVCPUs() {
        var first = ExitStatistics()
        first.portReads = 1200
        first.portWrites = 3
        first.deviceExits = ["Serial16550 0x3f8-0x3ff (ports)": 1203]
        var second = ExitStatistics()
        second.portReads = 800
        second.halts = 2
        second.unclaimedPortAccesses = 800
        let vcpus = [
            VCPUReport(index: 0, statistics: first, timeInKVMRun: .milliseconds(1500), timeInVMM: .milliseconds(500)),
            VCPUReport(index: 1, statistics: second, timeInKVMRun: .seconds(2), timeInVMM: .zero),
        ]
        let table = StatisticsTable.render(duration: .seconds(2), statistics: first + second, vcpus: vcpus, milestones: nil)
        let lines = table.split(separator: "\n").map(String.init)
        #expect(lines[0] == "swiftkvm statistics (2.000 s of guest run)")
        #expect(lines.contains { $0.hasPrefix("    io in") && $0.hasSuffix("1,200           800         2,000") }, "\(table)")
        #expect(lines.contains { $0.hasPrefix("    total") && $0.hasSuffix("1,203           802         2,005") }, "\(table)")
        #expect(lines.contains { $0.hasPrefix("    Serial16550 0x3f8-0x3ff (ports)") && $0.hasSuffix(" 1,203") })
        #expect(lines.contains { $0.hasPrefix("    (no device: unclaimed)") && $0.hasSuffix(" 800") })
        #expect(lines.contains { $0.hasPrefix("    vcpu0") && $0.contains("1.500 s") && $0.contains("0.500 s") && $0.hasSuffix("(75% in KVM_RUN)") })
    }

    @Test func milestonesAreRecordedOnceInOrder() {
        let milestones = BootMilestones()
        milestones.record(.firstConsoleByte)
        milestones.record(.guestEntry)
        usleep(2000)
        milestones.record(.firstConsoleByte)  // a second byte does not move the first
        let recorded = milestones.sinceStart
        #expect(recorded.map(\.milestone) == [.vmmStart, .guestEntry, .firstConsoleByte])
        #expect(recorded[0].after == .zero)
        #expect(recorded[2].after < .milliseconds(2))
    }
}

extension String {
    /// Two lowercase hex digits.
    init(format2 byte: UInt8) {
        self = (byte < 16 ? "0" : "") + String(byte, radix: 16)
    }
}

@Suite struct PanicWatcherTests {
    func watch(_ text: String) -> PanicWatcher {
        let watcher = PanicWatcher()
        for byte in text.utf8 { watcher.observe(byte) }
        return watcher
    }

    @Test func findsThePanicLineAmongConsoleOutput() {
        let console = "[ 1.0] Run /init\r\n[ 9.9] Kernel pKernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\r\n[ 9.9] CPU: 0\r\n"
        #expect(watch(console).message == "Attempted to kill init! exitcode=0x00000000")
        #expect(watch("[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs").message == "VFS: Unable to mount root fs")
        #expect(watch("Kernel panic - not synced\r\nreboot: Restarting system\r\n").message == nil)
        #expect(watch("").message == nil)
        let first = watch("Kernel panic - not syncing: first\nKernel panic - not syncing: second\n")
        #expect(first.message == "first", "the first panic is the one reported")
    }
}
