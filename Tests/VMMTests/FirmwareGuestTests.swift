import Glibc
import Testing
import VMM
import VMMCore

/// The guests in Firmware/, built by `make firmware`, each run in a fresh VM on /dev/kvm and
/// checked for exactly what its source says it does.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct FirmwareGuestTests {
    @Test(arguments: [
        ("hello-real", CPUMode.real, "Hello from real mode!\n"),
        ("hello-protected", .protected, "Hello from protected mode!\n"),
        ("hello-long", .long, "Hello from long mode!\n"),
        ("hello-user", .user, "Hello from user mode!\n"),
    ])
    func helloInEveryMode(name: String, mode: CPUMode, greeting: String) throws {
        let run = try Firmware.guest(name, mode: mode).run()
        #expect(run.outcome == .exited(status: 0))
        #expect(run.consoleText == greeting)
        // Each character costs an LSR poll (a read) and a write; each report and the exit one more write.
        #expect(run.statistics.portWrites == greeting.utf8.count + run.reports.count + 1)
        #expect(run.statistics.portReads >= greeting.utf8.count)
        if mode == .user { #expect(run.reports == [3], "the guest runs at CPL 3") }
    }

    @Test func userModeStartsAtPrivilegeLevelThree() throws {
        let run = try Firmware.guest("hello-user", mode: .user).run()
        #expect(run.reports == [3])
        let special = try #require(run.specialRegisters)
        #expect(special.cs.privilegeLevel == 3)
        #expect(special.efer & 0x500 == 0x500, "long mode active")
    }

    @Test func haltEndsTheRunAndLeavesRegistersReadable() throws {
        let run = try Firmware.guest("halt", mode: .long).run()
        #expect(run.outcome == .halted)
        #expect(run.reports == [0x600D_F00D])
        let registers = try #require(run.registers)
        // The guest's last report left the value in EAX.
        #expect(registers.rax & 0xFFFF_FFFF == 0x600D_F00D)
        #expect(registers.rflags & 0x200 == 0, "the guest cleared IF before HLT")
    }

    @Test func stringPortIOMovesCountTimesSizeBytes() throws {
        let run = try Firmware.guest("string-io", mode: .long).run()
        #expect(run.outcome == .exited(status: 0))
        #expect(run.consoleText == "string I/O works\n")
        #expect(run.reports == [0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444])
        #expect(try run.memory.read(count: 16, at: 0x6000) == [UInt8](repeating: 0xFF, count: 16))
        #expect(try run.memory.read(count: 16, at: 0x6010) == [UInt8](repeating: 0, count: 16))
        #expect(run.statistics.unclaimedPortAccesses >= 1, "port 0xCF0 has no device")
    }

    @Test func guestReadsAndWritesMemoryTheTestChecks() throws {
        let values: [UInt32] = (0..<16).map { 0x0101_0101 &* UInt32($0 + 1) &+ 0xF000_0000 }
        let expectedSum = values.reduce(0, &+)
        let run = try Firmware.guest("memory", mode: .long).run(prepare: { memory in
            for (index, value) in values.enumerated() {
                try memory.store(value, at: GuestAddress(0x8000 + UInt64(index) * 4))
            }
        })
        #expect(run.outcome == .exited(status: 0))
        #expect(run.reports == [expectedSum])
        #expect(try run.memory.load(UInt32.self, at: 0x9000) == expectedSum)
        #expect(try run.memory.read(count: 256, at: 0xA000) == (0..<256).map { UInt8($0) })
        #expect(try run.memory.load(UInt8.self, at: 0xA100) == 0, "nothing written past the pattern")
    }

    /// The last vCPU triple-faults while the others spin: the run ends as a shutdown, and says
    /// which vCPU's exit ended it.
    @Test(arguments: [1, 3])
    func tripleFaultIsShutdown(cpus: Int) throws {
        var guest = try Firmware.guest("triple-fault", mode: .protected)
        guest.cpus = cpus
        let run = try guest.run()
        #expect(run.consoleText == "faulting\n")
        #expect(run.outcome == .shutdown)
        #expect(run.stoppedBy == cpus - 1)
    }

    @Test func userModeExceptionIsReportedWithVectorAndAddress() throws {
        let run = try Firmware.guest("fault-user", mode: .user).run()
        #expect(run.consoleText == "about to fault\n")
        #expect(run.outcome == .exception(vector: 13, errorCode: 0, rip: 0x100))
    }

    @Test(arguments: [("spin", CPUMode.long), ("spin-user", .user)])
    func timeLimitKicksASpinningGuest(name: String, mode: CPUMode) throws {
        let clock = ContinuousClock()
        let start = clock.now
        let run = try Firmware.guest(name, mode: mode, timeLimit: .milliseconds(500)).run()
        let elapsed = clock.now - start
        #expect(run.outcome == .timedOut)
        #expect(run.consoleText == "spinning\n")
        #expect(elapsed >= .milliseconds(500))
        #expect(elapsed < .seconds(10), "the kick must end KVM_RUN promptly, took \(elapsed)")
    }

    /// A vCPU thread inherits its creator's signal mask; pool threads block most signals. The kick
    /// must still get through when the caller blocks everything.
    @Test func timeLimitWorksWhenTheCallerBlocksAllSignals() throws {
        var all = sigset_t()
        var previous = sigset_t()
        sigfillset(&all)
        #expect(pthread_sigmask(SIG_BLOCK, &all, &previous) == 0)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        let run = try Firmware.guest("spin-user", mode: .user, timeLimit: .milliseconds(300)).run()
        #expect(run.outcome == .timedOut)
    }

    @Test func userModeComputeRunsAFreestandingCProgram() throws {
        let run = try Firmware.guest("primes-user", mode: .user).run()
        #expect(run.outcome == .exited(status: 0))
        #expect(run.reports == [17984], "primes below 200000")
        #expect(run.consoleText == "primes: 17984\n")
    }

    /// The example of docs/unit-guests.md, as written there.
    @Test func theDocumentedExample() throws {
        let run = try Firmware.guest("answer", mode: .long).run(prepare: { memory in
            try memory.store(UInt32(0xFEED), at: 0x8000)
        })
        #expect(run.outcome == .exited(status: 0))
        #expect(run.reports == [42])
        #expect(run.consoleText == "done\n")
        #expect((run.registers?.rflags ?? 0x3000) & 0x3000 == 0, "IOPL 0 outside user mode")
        #expect(try run.memory.load(UInt32.self, at: 0x8000) == 0xFEED)
    }

    @Test func exitCodeAndPortLoop() throws {
        let exit = try Firmware.guest("exit-code", mode: .real).run()
        #expect(exit.outcome == .exited(status: 42))
        #expect(exit.statistics.total == 1)

        let loop = try Firmware.guest("io-loop", mode: .real).run()
        #expect(loop.outcome == .exited(status: 0))
        #expect(loop.statistics.portWrites == 20001)
        #expect(loop.statistics.unclaimedPortAccesses == 20000, "port 0x80 has no device: writes are counted, not fatal")
    }

    @Test func programCanBeLoadedAndEnteredElsewhere() throws {
        // hello-real is position-dependent (linked at 0), so move a position-independent one:
        // mov al, 5; out 0xF4, al — loaded at 0x7C00 like a boot sector.
        let code: [UInt8] = [0xB0, 0x05, 0xE6, 0xF4]
        let run = try UnitGuest(program: code, mode: .real, loadAddress: 0x7C00, timeLimit: .seconds(20)).run()
        #expect(run.outcome == .exited(status: 5))
        #expect(try run.memory.read(count: 4, at: 0x7C00) == code)
    }

    @Test func configurationsThatCannotWorkAreRefusedBeforeTheVMExists() throws {
        let code: [UInt8] = [0xF4]
        #expect(throws: VMMError.self) { try UnitGuest(program: code, mode: .long, memorySize: 64 << 10).run() }
        #expect(throws: VMMError.self) { try UnitGuest(program: code, mode: .long, memorySize: (2 << 20) + 1).run() }
        #expect(throws: VMMError.self) {
            try UnitGuest(program: code, mode: .long, loadAddress: GuestAddress(UInt64((2 << 20) - 0x1_0000))).run()
        }
        #expect(throws: VMMError.self) { try UnitGuest(program: code, mode: .real, entry: 0x10_0000, timeLimit: nil).run() }
        #expect(throws: VMMError.self) { try UnitGuest(contentsOf: "/nonexistent/guest.bin", mode: .real) }
    }
}

/// Finds the binaries `make firmware` builds.
enum Firmware {
    static let directory: String = {
        var path = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        path.removeLast(3)  // Tests/VMMTests/FirmwareGuestTests.swift
        return path.joined(separator: "/") + "/Firmware/build"
    }()

    static func guest(_ name: String, mode: CPUMode, timeLimit: Duration = .seconds(60)) throws -> UnitGuest {
        do {
            return try UnitGuest(contentsOf: "\(directory)/\(name).bin", mode: mode, timeLimit: timeLimit)
        } catch {
            Issue.record("\(error) — run `make firmware` first")
            throw error
        }
    }
}

extension FirmwareGuestTests {
    /// smp-report on several vCPUs: each vCPU's CPUID gives it its own APIC id, each reports it,
    /// and vCPU 0 exits once every one has arrived (a locked increment they all share).
    @Test(arguments: [1, 2, 4])
    func everyVCPUReportsItsOwnAPICID(cpus: Int) throws {
        var guest = try UnitGuest(contentsOf: "\(Firmware.directory)/smp-report.bin", mode: .long, timeLimit: .seconds(60))
        guest.cpus = cpus
        let run = try guest.run()
        #expect(run.outcome == .exited(status: 0))
        #expect(run.reports.sorted() == (0..<UInt32(cpus)).map { $0 }, "\(run.reports)")
        #expect(run.vcpus.count == cpus)
        #expect(run.vcpus.allSatisfy { $0.statistics.portWrites >= 1 }, "every vCPU ran and reported")
    }
}
