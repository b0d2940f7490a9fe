import Testing
import VMM

/// Firmware/build/acpi-power.bin does what a Linux kernel does to end the machine: it follows
/// the RSDP from the zero page to the FADT and the DSDT's `\_S5_`, then writes PM1a_CNT; or it
/// writes PANICKED to the pvpanic port. These prove the power-off and panic paths on any KVM.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct PowerGuestTests {
    static var guestPath: String { "\(Firmware.directory)/acpi-power.bin" }

    func run(_ arguments: String, acpi: Bool = true, cpus: Int = 1) throws -> (outcome: GuestOutcome, output: String) {
        let session = try LinuxSession(
            LinuxGuestConfiguration(
                kernelPath: Self.guestPath, commandLine: "console=ttyS0 \(arguments)", memorySize: 64 << 20, cpus: cpus, acpi: acpi,
                timeLimit: .seconds(60)))
        defer { session.stop() }
        let report = try session.waitForEnd(timeout: .seconds(120))
        return (report.outcome, session.output)
    }

    @Test(.timeLimit(.minutes(45)))
    func powerOffThroughTheFADTsPM1ControlRegisterEndsTheRun() throws {
        let result = try run("action=poweroff")
        #expect(result.outcome == .poweredOff, "\(result.output)")
        #expect(result.output.contains("POWER rsdp 0xe0000\n"))
        #expect(result.output.contains("POWER s5-type 0x5\n"))
        #expect(result.output.contains("POWER pm1a-control 0x604\n"))
        #expect(!result.output.contains("still running"))
    }

    @Test(.timeLimit(.minutes(45)))
    func powerOffStopsEveryVCPU() throws {
        // The application processors sit in wait-for-SIPI inside KVM_RUN: they must be kicked out too.
        let result = try run("action=poweroff", cpus: 4)
        #expect(result.outcome == .poweredOff)
    }

    @Test(.timeLimit(.minutes(45)))
    func pvpanicEndsTheRunAsAPanic() throws {
        let result = try run("action=panic")
        #expect(result.outcome == .panicked(message: nil), "\(result.output)")
    }

    @Test(.timeLimit(.minutes(45)))
    func withoutACPIThereIsNoRSDP() throws {
        let result = try run("action=poweroff", acpi: false)
        #expect(result.output.contains("POWER rsdp 0x0\nPOWER FAIL no ACPI 2.0 RSDP"), "\(result.output)")
        #expect(result.outcome == .rebooted, "the guest's fallback: an i8042 reset")
    }
}
