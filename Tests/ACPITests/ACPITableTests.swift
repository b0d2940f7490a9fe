import ACPI
import Testing
import VMMCore

@Suite struct ACPITableTests {
    /// Checks the header of a system description table: signature, length, checksum.
    private func checkHeader(_ table: PlacedTable, signature: String, revision: UInt8) {
        #expect(ascii(table.bytes[0..<4]) == signature)
        #expect(table.signature == signature)
        #expect(littleEndian(table.bytes, 4, 4) == UInt64(table.bytes.count), "\(signature) length")
        #expect(table.bytes[8] == revision, "\(signature) revision")
        #expect(sum(table.bytes) == 0, "\(signature) checksum")
        #expect(ascii(table.bytes[10..<16]) == ACPITable.oemID)
        #expect(ascii(table.bytes[16..<24]) == ACPITable.oemTableID)
    }

    @Test(arguments: [1, 2, 4, 255], bothModels)
    func everyTableSumsToZeroAndMeasuresItself(cpus: Int, model: PowerManagement.Model) throws {
        let description = vmmPlatform(cpus: cpus, model: model)
        let tables = try FirmwareTables(description: description)
        if description.power.isHardwareReduced {
            #expect(tables.acpiTables.map(\.signature) == ["RSD PTR ", "XSDT", "FACP", "APIC", "DSDT"])
            #expect(littleEndian(try #require(tables.table("FACP")).bytes, 36, 4) == 0)
            #expect(littleEndian(try #require(tables.table("FACP")).bytes, 132, 8) == 0)
        } else {
            #expect(tables.acpiTables.map(\.signature) == ["RSD PTR ", "XSDT", "FACP", "FACS", "APIC", "DSDT"])
            // The FACS: 64-byte aligned, "FACS", length 64, version 2, pointed to by both FADT fields.
            let facs = try #require(tables.table("FACS"))
            #expect(facs.address.rawValue % 64 == 0)
            #expect(ascii(facs.bytes[0..<4]) == "FACS")
            #expect(littleEndian(facs.bytes, 4, 4) == 64 && facs.bytes.count == 64)
            #expect(facs.bytes[32] == 2)
            #expect(littleEndian(try #require(tables.table("FACP")).bytes, 36, 4) == facs.address.rawValue)
            #expect(littleEndian(try #require(tables.table("FACP")).bytes, 132, 8) == 0)  // X_FIRMWARE_CTRL
        }
        let xsdt = try #require(tables.table("XSDT"))
        let fadt = try #require(tables.table("FACP"))
        let madt = try #require(tables.table("APIC"))
        let dsdt = try #require(tables.table("DSDT"))
        checkHeader(xsdt, signature: "XSDT", revision: 1)
        checkHeader(fadt, signature: "FACP", revision: 6)
        checkHeader(madt, signature: "APIC", revision: 5)
        checkHeader(dsdt, signature: "DSDT", revision: 2)
        #expect(fadt.bytes.count == 276)

        // RSDP: both checksums, revision 2, length, the XSDT's address, no RSDT.
        let rsdp = try #require(tables.table("RSD PTR "))
        #expect(rsdp.address == tables.rsdpAddress)
        #expect(rsdp.address.rawValue % 16 == 0)
        #expect(ascii(rsdp.bytes[0..<8]) == "RSD PTR ")
        #expect(rsdp.bytes.count == 36)
        #expect(sum(rsdp.bytes[0..<20]) == 0)
        #expect(sum(rsdp.bytes) == 0)
        #expect(rsdp.bytes[15] == 2)
        #expect(littleEndian(rsdp.bytes, 16, 4) == 0)
        #expect(littleEndian(rsdp.bytes, 20, 4) == 36)
        #expect(littleEndian(rsdp.bytes, 24, 8) == xsdt.address.rawValue)

        // XSDT → FADT and MADT; FADT → DSDT (both the 32- and 64-bit fields).
        #expect(xsdt.bytes.count == 36 + 16)
        #expect(littleEndian(xsdt.bytes, 36, 8) == fadt.address.rawValue)
        #expect(littleEndian(xsdt.bytes, 44, 8) == madt.address.rawValue)
        #expect(littleEndian(fadt.bytes, 40, 4) == dsdt.address.rawValue)
        #expect(littleEndian(fadt.bytes, 140, 8) == dsdt.address.rawValue)

        // Tables do not overlap and sit in the ACPI area.
        for (index, table) in tables.acpiTables.enumerated() {
            #expect(table.address.rawValue % 16 == 0)
            #expect(FirmwareTableLayout.biosArea.acpiArea.lowerBound <= table.address)
            #expect(table.range.upperBound <= FirmwareTableLayout.biosArea.acpiArea.upperBound)
            if index > 0 { #expect(tables.acpiTables[index - 1].range.upperBound <= table.address) }
        }
    }

    /// The MADT's interrupt controller structures as (type, bytes).
    private func madtEntries(_ madt: [UInt8]) throws -> [(type: UInt8, bytes: [UInt8])] {
        var entries: [(type: UInt8, bytes: [UInt8])] = []
        var offset = 44
        while offset < madt.count {
            let length = Int(madt[offset + 1])
            try #require(length >= 2 && offset + length <= madt.count)
            entries.append((madt[offset], Array(madt[offset..<offset + length])))
            offset += length
        }
        return entries
    }

    @Test(arguments: [1, 2, 4, 255])
    func madtHasOneEnabledLocalAPICPerCPU(cpus: Int) throws {
        let madt = try ACPITable.makeMADT(description: vmmPlatform(cpus: cpus, model: .standardHardwareReduced))
        #expect(littleEndian(madt, 36, 4) == 0xFEE0_0000)
        #expect(littleEndian(madt, 40, 4) == 1)  // PCAT_COMPAT
        let entries = try madtEntries(madt)
        let localAPICs = entries.filter { $0.type == 0 }
        #expect(localAPICs.count == cpus)
        for (index, entry) in localAPICs.enumerated() {
            #expect(entry.bytes.count == 8)
            #expect(entry.bytes[2] == UInt8(index))  // processor UID
            #expect(entry.bytes[3] == UInt8(index))  // APIC ID
            #expect(littleEndian(entry.bytes, 4, 4) == 1)  // Enabled, not merely online-capable
        }
        let ioAPICs = entries.filter { $0.type == 1 }
        #expect(ioAPICs.count == 1)
        #expect(ioAPICs.first?.bytes == [1, 12, 0, 0, 0x00, 0x00, 0xC0, 0xFE, 0, 0, 0, 0])
        // Identity routing: KVM's default GSI routing needs no override.
        #expect(entries.filter { $0.type == 2 }.isEmpty)
        #expect(entries.filter { $0.type == 4 }.map(\.bytes) == [[4, 6, 0xFF, 0, 0, 1]])
        #expect(entries.count == cpus + 2)
    }

    @Test func pin2TimerRoutingAddsAnOverride() throws {
        let madt = try ACPITable.makeMADT(description: vmmPlatform(cpus: 2, timerRouting: .pin2, model: .standardHardwareReduced))
        let overrides = try madtEntries(madt).filter { $0.type == 2 }
        // Bus 0 (ISA), source IRQ 0, GSI 2, flags 0 (conforming).
        #expect(overrides.map(\.bytes) == [[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]])
    }

    @Test func fixedHardwareSCIHasALevelTriggeredActiveHighOverride() throws {
        let madt = try ACPITable.makeMADT(description: vmmPlatform(cpus: 2, timerRouting: .pin2))
        let overrides = try madtEntries(madt).filter { $0.type == 2 }
        // IRQ 0 to GSI 2, then the SCI: IRQ 7 to GSI 7, flags 0x0D (level, active-high).
        #expect(overrides.map(\.bytes) == [[2, 10, 0, 0, 2, 0, 0, 0, 0, 0], [2, 10, 0, 7, 7, 0, 0, 0, 0x0D, 0]])
    }

    @Test func fadtOfAFixedHardwarePlatform() throws {
        let description = vmmPlatform(cpus: 1)
        let fadt = ACPITable.makeFADT(description: description, dsdt: 0xE_1000, facs: 0xE_0100)
        let flags = littleEndian(fadt, 112, 4)
        // WBINVD, C1, a fixed power button (PWR_BUTTON, bit 4, clear) but no sleep button, reset register
        #expect(flags == 1 << 0 | 1 << 2 | 1 << 5 | 1 << 10)
        #expect(littleEndian(fadt, 36, 4) == 0xE_0100)  // FIRMWARE_CTRL
        #expect(littleEndian(fadt, 132, 8) == 0)  // X_FIRMWARE_CTRL: zero when FIRMWARE_CTRL is set
        #expect(littleEndian(fadt, 40, 4) == 0xE_1000)  // DSDT
        #expect(littleEndian(fadt, 140, 8) == 0xE_1000)  // X_DSDT
        #expect(littleEndian(fadt, 46, 2) == 7)  // SCI_INT
        #expect(littleEndian(fadt, 48, 4) == 0)  // SMI_CMD: always in ACPI mode
        #expect(littleEndian(fadt, 56, 4) == 0x600)  // PM1a_EVT_BLK
        #expect(littleEndian(fadt, 64, 4) == 0x604)  // PM1a_CNT_BLK
        for offset in [60, 68, 72, 76, 80, 84] { #expect(littleEndian(fadt, offset, 4) == 0) }  // no PM1b, PM2, timer, GPE
        #expect(Array(fadt[88..<96]) == [4, 2, 0, 0, 0, 0, 0, 0])  // PM1_EVT_LEN, PM1_CNT_LEN
        #expect(Array(fadt[148..<160]) == [1, 32, 0, 0, 0x00, 0x06, 0, 0, 0, 0, 0, 0])  // X_PM1a_EVT_BLK
        #expect(Array(fadt[172..<184]) == [1, 16, 0, 0, 0x04, 0x06, 0, 0, 0, 0, 0, 0])  // X_PM1a_CNT_BLK
        for offset in [160, 184, 196, 208, 220, 232, 244, 256] { #expect(fadt[offset..<offset + 12].allSatisfy { $0 == 0 }) }
        #expect(littleEndian(fadt, 109, 2) == 1 << 2 | 1 << 3 | 1 << 4 | 1 << 5)  // no VGA, MSI, ASPM, CMOS RTC; no 8042
        #expect(Array(fadt[116..<128]) == [1, 8, 0, 1, 0x64, 0, 0, 0, 0, 0, 0, 0])  // RESET_REG: port 0x64
        #expect(fadt[128] == 0xFE)
        #expect(fadt[131] == 5)  // FADT minor version
        #expect(ascii(fadt[268..<276]) == "SWIFTKVM")
    }

    @Test func fadtOfAHardwareReducedPlatform() throws {
        let description = vmmPlatform(cpus: 1, model: .standardHardwareReduced)
        let fadt = ACPITable.makeFADT(description: description, dsdt: 0xE_1000, facs: nil)
        let flags = littleEndian(fadt, 112, 4)
        #expect(flags == 1 << 0 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 10 | 1 << 20)  // ... and HW_REDUCED_ACPI
        #expect(littleEndian(fadt, 36, 4) == 0 && littleEndian(fadt, 132, 8) == 0)  // no FACS
        #expect(littleEndian(fadt, 46, 2) == 0)  // no SCI
        for offset in stride(from: 56, to: 88, by: 4) { #expect(littleEndian(fadt, offset, 4) == 0) }  // no PM/GPE blocks
        for offset in stride(from: 148, to: 244, by: 12) { #expect(fadt[offset..<offset + 12].allSatisfy { $0 == 0 }) }
        // SLEEP_CONTROL_REG, SLEEP_STATUS_REG: system I/O, 8 bits, byte access.
        #expect(Array(fadt[244..<256]) == [1, 8, 0, 1, 0xC0, 0x03, 0, 0, 0, 0, 0, 0])
        #expect(Array(fadt[256..<268]) == [1, 8, 0, 1, 0xC1, 0x03, 0, 0, 0, 0, 0, 0])
        #expect(Array(fadt[116..<128]) == [1, 8, 0, 1, 0x64, 0, 0, 0, 0, 0, 0, 0])

        var other = description
        other.power.reset = nil
        other.hasI8042 = true
        other.hasCMOSRTC = true
        let plain = ACPITable.makeFADT(description: other, dsdt: 0xE_1000, facs: nil)
        #expect(littleEndian(plain, 112, 4) & (1 << 10) == 0)
        #expect(plain[116..<129].allSatisfy { $0 == 0 })
        #expect(littleEndian(plain, 109, 2) == 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4)
    }

    @Test func powerOffWritesAreRecognised() {
        let fixed = PowerManagement()
        #expect(fixed.model == .standardFixedHardware)
        #expect(fixed.powerOffValue == 0x3400)
        #expect(fixed.isPowerOff(0x3400))
        #expect(fixed.isPowerOff(0x3401))  // SCI_EN and other preserved bits do not matter
        #expect(!fixed.isPowerOff(0x1401))  // ACPICA's first write: SLP_TYP without SLP_EN
        #expect(!fixed.isPowerOff(0x2001))  // SLP_EN with SLP_TYP 0

        let reduced = PowerManagement(model: .standardHardwareReduced)
        #expect(reduced.powerOffValue == 0x34)
        #expect(reduced.isPowerOff(0x34))
        #expect(reduced.isPowerOff(0x34 | 0x03))
        #expect(!reduced.isPowerOff(PowerManagement.sleepStatusWake))  // what Linux writes to the status register first
        #expect(!reduced.isPowerOff(0x14))  // SLP_TYP 5 without SLP_EN
        #expect(!reduced.isPowerOff(0x20))  // SLP_EN with SLP_TYP 0
        #expect(PowerManagement(model: .standardHardwareReduced, s5SleepType: 7).powerOffValue == 0x3C)
        #expect(PowerManagement(s5SleepType: 0xFF).s5SleepType == 7)
    }

    @Test(arguments: [0, 1, 3, 8])
    func dsdtHasOneVirtioDevicePerWindow(disks: Int) throws {
        let description = vmmPlatform(cpus: 2, disks: disks)
        let dsdt = try ACPITable.makeDSDT(description: description)
        let reader = try AMLReader(aml: Array(dsdt[36...]))

        let s5 = try #require(reader.names["\\_S5_"]?.package)
        #expect(s5.map(\.integer) == [5, 5, 0, 0])
        #expect(reader.names["\\_S0_"]?.package?.map(\.integer) == [0, 0, 0, 0])

        let virtio = reader.devices.filter { reader.objects(of: $0)["_HID"]?.string == "LNRO0005" }
        #expect(virtio.count == disks)
        for (index, path) in virtio.enumerated() {
            let window = vmmVirtioWindows[index]
            #expect(path == "\\_SB_.VR0\(index)")
            let objects = reader.objects(of: path)
            #expect(objects["_UID"]?.integer == UInt64(index))
            let resources = try decodeResourceTemplate(try #require(objects["_CRS"]?.buffer))
            #expect(resources == [
                .memory32Fixed(base: UInt32(window.base), length: 0x1000, writable: true),
                .interrupt([window.irq], edgeTriggered: true, activeLow: false, shared: false),
            ])
        }

        let pvpanic = reader.objects(of: "\\_SB_.PEVT")
        #expect(pvpanic["_HID"]?.string == "QEMU0001")
        #expect(pvpanic["_STA"]?.integer == 0x0F)
        #expect(try decodeResourceTemplate(try #require(pvpanic["_CRS"]?.buffer)) == [
            .ioPort(minimum: 0x505, maximum: 0x505, alignment: 1, length: 1)
        ])

        let com1 = reader.objects(of: "\\_SB_.COM1")
        #expect(com1["_HID"]?.integer == 0x0105_D041)  // EisaId("PNP0501")
        #expect(try decodeResourceTemplate(try #require(com1["_CRS"]?.buffer)) == [
            .ioPort(minimum: 0x3F8, maximum: 0x3F8, alignment: 8, length: 8), .irqNoFlags([4]),
        ])
        #expect(reader.devices.count == disks + 2)
    }

    @Test func dsdtWithoutOptionalDevices() throws {
        let description = PlatformDescription(cpuCount: 1, serialPorts: [], pvpanic: nil)
        let reader = try AMLReader(aml: Array(try ACPITable.makeDSDT(description: description)[36...]))
        #expect(reader.devices.isEmpty)
        #expect(reader.names["\\_S5_"] != nil)
    }

    @Test func deviceNames() {
        #expect(ACPITable.virtioMMIODeviceName(0) == "VR00")
        #expect(ACPITable.virtioMMIODeviceName(10) == "VR0A")
        #expect(ACPITable.virtioMMIODeviceName(255) == "VRFF")
    }

    @Test func invalidDescriptionsAreRefused() throws {
        func refuses(_ description: PlatformDescription, _ comment: Comment) {
            #expect(throws: FirmwareTableError.self, comment) { try FirmwareTables(description: description) }
        }
        refuses(PlatformDescription(cpuCount: 0), "no CPU")
        refuses(PlatformDescription(cpuCount: 256), "more CPUs than xAPIC IDs")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, irq: 4)]), "on COM1's IRQ")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, irq: 0)]), "on the timer")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, irq: 2)]), "on the cascade")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, irq: 24)]), "past the I/O APIC")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, size: 0, irq: 5)]), "empty")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xFFFF_F800, irq: 5)]), "past 4 GiB")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [
            VirtioMMIOWindow(base: 0xD000_0000, irq: 5), VirtioMMIOWindow(base: 0xD000_0000, irq: 6),
        ]), "overlapping windows")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [
            VirtioMMIOWindow(base: 0xD000_0000, irq: 5), VirtioMMIOWindow(base: 0xD000_1000, irq: 5),
        ]), "one IRQ twice")
        refuses(PlatformDescription(cpuCount: 1, hasI8042: true, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, irq: 1)]), "on the i8042's IRQ")
        refuses(PlatformDescription(cpuCount: 1, ioAPIC: IOAPICDescription(inputCount: 8)), "an I/O APIC without the ISA inputs")
        refuses(PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, irq: 7)]), "on the SCI")
        for sci: UInt8 in [0, 1, 2, 4, 8, 13, 16] {
            let power = PowerManagement(model: .fixedHardware(pm1EventPort: 0x600, pm1ControlPort: 0x604, sciIRQ: sci))
            refuses(PlatformDescription(cpuCount: 1, power: power), "the SCI on IRQ \(sci)")
        }
        refuses(PlatformDescription(cpuCount: 1, ioAPIC: IOAPICDescription(gsiBase: 24)), "an I/O APIC not at GSI 0")
        // A GSI above 15 is fine for ACPI but not for the MP table, which knows only ISA IRQs.
        let high = PlatformDescription(cpuCount: 1, virtioMMIODevices: [VirtioMMIOWindow(base: 0xD000_0000, irq: 16)])
        #expect(throws: Never.self) { try high.validate() }
        #expect(throws: Never.self) { try ACPITable.makeDSDT(description: high) }
        refuses(high, "an MP table for a non-ISA interrupt")
    }

    @Test func layoutIsChecked() throws {
        let description = vmmPlatform(cpus: 2)
        #expect(throws: FirmwareTableError.self) {
            try FirmwareTables(description: description, layout: FirmwareTableLayout(acpiArea: 0xE_0008..<0xF_0000, mpArea: 0xF_0000..<0x10_0000))
        }
        #expect(throws: FirmwareTableError.self) {
            try FirmwareTables(description: description, layout: FirmwareTableLayout(acpiArea: 0xE_0000..<0xF_8000, mpArea: 0xF_0000..<0x10_0000))
        }
        #expect(throws: FirmwareTableError.self) {
            try FirmwareTables(description: description, layout: FirmwareTableLayout(acpiArea: 0xE_0000..<0xF_0000, mpArea: 0xFFFF_F000..<0x1_0000_1000))
        }
        do throws(FirmwareTableError) {
            _ = try FirmwareTables(description: description, layout: FirmwareTableLayout(acpiArea: 0xE_0000..<0xE_0100, mpArea: 0xF_0000..<0x10_0000))
            Issue.record("tables placed in 256 bytes")
        } catch {
            guard case .doesNotFit(let what, _, _) = error else { Issue.record("\(error)"); return }
            #expect(what == "the ACPI tables")
        }
    }
}
