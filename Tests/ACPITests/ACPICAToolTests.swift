import ACPI
import Foundation
import Testing

/// The tables checked by ACPICA, the reference implementation Linux itself runs: `iasl`
/// disassembles them and compiles the DSDT back, and `acpiexec` loads them, evaluates objects and
/// enters S5. Debian's `acpica-tools` provides both; `make test` installs it (DEBIAN_PACKAGES), so
/// in CI a missing tool is a failure, not a skip.
@Suite struct ACPICAToolTests {
    static let iasl = ["/usr/bin/iasl", "/usr/local/bin/iasl"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let acpiexec = ["/usr/bin/acpiexec", "/usr/local/bin/acpiexec"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let isCI = ProcessInfo.processInfo.environment["CI"].map { !$0.isEmpty && $0 != "0" && $0 != "false" } ?? false
    static let skipReason: Comment = "ACPICA's tools are not installed (Debian: apt-get install acpica-tools; make deps does)"

    /// A scratch directory holding the tables of the VMM's machine with 4 vCPUs and 8 disks, one
    /// file per table (`dsdt.dat`, `facp.dat`, `apic.dat`, `xsdt.dat`, and `facs.dat` for the
    /// fixed-hardware model), removed by `remove()`.
    struct Scratch {
        let directory: URL
        let tables: FirmwareTables
        let names: [String]

        init(model: PowerManagement.Model = .standardFixedHardware) throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-acpi-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            tables = try FirmwareTables(description: vmmPlatform(cpus: 4, model: model))
            names = tables.acpiTables.map(\.signature).filter { $0 != "RSD PTR " }.map { $0.lowercased() }
            for table in tables.acpiTables where table.signature != "RSD PTR " {
                try Data(table.bytes).write(to: file(table.signature.lowercased() + ".dat"))
            }
        }

        func file(_ name: String) -> URL { directory.appendingPathComponent(name) }
        func remove() { try? FileManager.default.removeItem(at: directory) }

        /// Runs `tool` with `arguments` in the directory under a one-minute timeout; its status
        /// and its stdout and stderr together.
        func run(_ tool: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
            process.arguments = ["60", tool] + arguments
            process.currentDirectoryURL = directory
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: data, as: UTF8.self))
        }
    }

    @Test(.enabled(if: iasl != nil || isCI, skipReason), arguments: bothModels)
    func iaslDisassemblesEveryTableWithoutComplaint(model: PowerManagement.Model) throws {
        let iasl = try #require(Self.iasl)
        let scratch = try Scratch(model: model)
        defer { scratch.remove() }
        #expect(scratch.names.count == (model == .standardFixedHardware ? 5 : 4))
        for name in scratch.names {
            let (status, output) = try scratch.run(iasl, ["-d", "\(name).dat"])
            #expect(status == 0, "iasl -d \(name).dat: \(output)")
            for line in output.split(separator: "\n") where line.contains("Error") || line.contains("Warning") || line.contains("****") {
                Issue.record("iasl -d \(name).dat: \(line)")
            }
            #expect(FileManager.default.fileExists(atPath: scratch.file("\(name).dsl").path), "no \(name).dsl: \(output)")
        }

        let dsdt = try String(contentsOf: scratch.file("dsdt.dsl"), encoding: .utf8)
        #expect(dsdt.contains("Name (\\_S5, Package (0x04)"))
        #expect(dsdt.contains("Name (\\_S0, Package (0x04)"))
        #expect(dsdt.contains("_S5_"))
        #expect(dsdt.contains("EisaId (\"PNP0501\")"))
        #expect(dsdt.contains("Name (_HID, \"QEMU0001\")"))
        #expect(dsdt.contains("Name (_STA, 0x0F)"))
        #expect(dsdt.components(separatedBy: "Name (_HID, \"LNRO0005\")").count - 1 == 8)
        for window in vmmVirtioWindows {
            let base = "0x" + String(window.base, radix: 16, uppercase: true)
            #expect(dsdt.contains("\(base),         // Address Base"), "no Memory32Fixed at \(base)")
            let irq = String(window.irq, radix: 16, uppercase: true)
            #expect(dsdt.contains("0x" + String(repeating: "0", count: 8 - irq.count) + irq + ","), "no Interrupt \(window.irq)")
        }
        #expect(dsdt.components(separatedBy: "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )").count - 1 == 8)

        let fadt = try String(contentsOf: scratch.file("facp.dsl"), encoding: .utf8)
        if model == .standardFixedHardware {
            #expect(fadt.contains("Hardware Reduced (V5) : 0"))
            #expect(fadt.contains("SCI Interrupt : 0007"))
            #expect(fadt.contains("Address : 0000000000000600"))
            #expect(fadt.contains("Address : 0000000000000604"))
            let facs = try String(contentsOf: scratch.file("facs.dsl"), encoding: .utf8)
            #expect(facs.contains("\"FACS\""))
        } else {
            #expect(fadt.contains("Hardware Reduced (V5) : 1"))
            #expect(fadt.contains("Address : 00000000000003C0"))
            #expect(fadt.contains("Address : 00000000000003C1"))
        }
        let madt = try String(contentsOf: scratch.file("apic.dsl"), encoding: .utf8)
        #expect(madt.components(separatedBy: "[Processor Local APIC]").count - 1 == 4)
        #expect(madt.contains("[I/O APIC]"))
        #expect(madt.contains("[Local APIC NMI]"))
    }

    /// iasl compiles the disassembly, unoptimised, to the same AML, except the end tags' checksums:
    /// iasl writes 0 ("treat as valid"), this encoder the real sum.
    @Test(.enabled(if: iasl != nil || isCI, skipReason))
    func iaslRecompilesTheDSDTToTheSameAML() throws {
        let iasl = try #require(Self.iasl)
        let scratch = try Scratch()
        defer { scratch.remove() }
        _ = try scratch.run(iasl, ["-d", "dsdt.dat"])
        let (status, output) = try scratch.run(iasl, ["-oa", "-p", "recompiled", "dsdt.dsl"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("0 Errors, 0 Warnings"), "\(output)")
        let ours = Array(try #require(scratch.tables.table("DSDT")).bytes[ACPITable.headerSize...])
        let theirs = Array(try Data(contentsOf: scratch.file("recompiled.aml"))[ACPITable.headerSize...])
        try #require(ours.count == theirs.count, "iasl's AML is \(theirs.count) bytes, ours \(ours.count)")
        for index in ours.indices where ours[index] != theirs[index] {
            #expect(index > 0 && ours[index - 1] == 0x79 && theirs[index] == 0, "AML differs at \(index): ours 0x\(String(ours[index], radix: 16)), iasl's 0x\(String(theirs[index], radix: 16))")
        }
    }

    /// acpiexec loads the tables with ACPICA, evaluates `\_S5`, a virtio device's `_CRS` and the
    /// pvpanic `_STA`, then enters S5 as Linux's `acpi_power_off` does. Fixed hardware: SLP_TYP, then
    /// SLP_TYP | SLP_EN, to PM1_CNT (16 bits; acpiexec's ports read as all ones, which ACPICA
    /// preserves in the other bits). Hardware-reduced: WAK_STS to the sleep status register, then
    /// SLP_TYP << 2 | SLP_EN (0x34) to the sleep control register.
    @Test(.enabled(if: acpiexec != nil || isCI, skipReason), arguments: bothModels)
    func acpicaEvaluatesTheNamespaceAndPowersOff(model: PowerManagement.Model) throws {
        let acpiexec = try #require(Self.acpiexec)
        let scratch = try Scratch(model: model)
        defer { scratch.remove() }
        let (status, output) = try scratch.run(
            acpiexec,
            ["-x", "0xFFFFFFFF", "-b", "evaluate \\_S5;evaluate \\_SB.VR07._CRS;evaluate \\_SB.PEVT._STA;sleep 5"]
                + scratch.names.map { "\($0).dat" })
        #expect(status == 0, "\(output.suffix(2000))")
        #expect(output.contains("10 Devices"), "the namespace should hold COM1, PEVT and 8 virtio devices")
        for line in output.split(separator: "\n") where line.contains("ACPI Error") || line.contains("ACPI Warning") || line.contains("ACPI BIOS") {
            Issue.record("acpiexec: \(line)")
        }
        // \_SB.VR07._CRS: Memory32Fixed 0xD0007000 + Interrupt 15.
        #expect(output.contains("86 09 00 01 00 70 00 D0 00 10 00 00 89 06 00 03"))
        #expect(output.contains("[Integer] = 000000000000000F"))

        // HwWrite's trace, "Wrote: <value> width <n> to <address> (SystemIO)", in order, once the
        // sleep begins (acpiexec's own start-up tests write elsewhere).
        var writes: [(value: UInt64, port: UInt64)] = []
        let sleep = output.components(separatedBy: "Going to sleep (S5)").last ?? ""
        for line in sleep.split(separator: "\n") where line.contains("HwWrite") && line.contains("Wrote:") {
            let numbers = line.split(separator: " ").filter { $0.count == 16 && $0.allSatisfy(\.isHexDigit) }.compactMap { UInt64($0, radix: 16) }
            if numbers.count == 2 { writes.append((numbers[0], numbers[1])) }
        }
        let power = PowerManagement(model: model)
        switch model {
        case .fixedHardware(_, let control, _):
            let controlWrites = writes.filter { $0.port == UInt64(control) }.map { UInt16(truncatingIfNeeded: $0.value) }
            try #require(controlWrites.count >= 2, "\(writes)")
            #expect(!power.isPowerOff(controlWrites[0]), "SLP_TYP alone first: 0x\(String(controlWrites[0], radix: 16))")
            #expect(power.isPowerOff(controlWrites[1]), "then SLP_TYP | SLP_EN: 0x\(String(controlWrites[1], radix: 16))")
        case .hardwareReduced(let control, let status):
            let sleepWrites = writes.filter { $0.port == UInt64(control) || $0.port == UInt64(status) }.prefix(2).map { [$0.value, $0.port] }
            #expect(sleepWrites == [[0x80, UInt64(status)], [0x34, UInt64(control)]], "\(writes)")
        }
    }
}
