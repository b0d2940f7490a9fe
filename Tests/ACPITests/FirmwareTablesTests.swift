import ACPI
import LinuxBoot
import Testing
import VMMCore

/// The tables as the guest finds them: in guest memory, by the scans Linux does.
@Suite struct FirmwareTablesTests {
    private func guestMemory() throws -> GuestMemory {
        try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: 64 << 20))
    }

    /// Linux's `acpi_find_root_pointer`: "RSD PTR " on a 16-byte boundary in 0xE0000–0xFFFFF with a
    /// valid checksum (and, for revision 2, a valid extended checksum).
    private func scanForRSDP(_ memory: GuestMemory) throws -> GuestAddress? {
        for address in stride(from: UInt64(0xE_0000), to: 0x10_0000, by: 16) {
            let bytes = try memory.read(count: 36, at: GuestAddress(address))
            if ascii(bytes[0..<8]) == "RSD PTR ", sum(bytes[0..<20]) == 0, bytes[15] < 2 || sum(bytes) == 0 {
                return GuestAddress(address)
            }
        }
        return nil
    }

    /// Linux's `smp_scan_config(0xF0000, 0x10000)`: "_MP_", length 1, a valid checksum.
    private func scanForMP(_ memory: GuestMemory) throws -> GuestAddress? {
        for address in stride(from: UInt64(0xF_0000), to: 0x10_0000, by: 16) {
            let bytes = try memory.read(count: 16, at: GuestAddress(address))
            if ascii(bytes[0..<4]) == "_MP_", bytes[8] == 1, sum(bytes) == 0 { return GuestAddress(address) }
        }
        return nil
    }

    /// A whole system description table read from guest memory, checked.
    private func readTable(_ memory: GuestMemory, at address: UInt64, signature: String) throws -> [UInt8] {
        let length = Int(try memory.load(UInt32.self, at: GuestAddress(address + 4)))
        let bytes = try memory.read(count: length, at: GuestAddress(address))
        #expect(ascii(bytes[0..<4]) == signature)
        #expect(sum(bytes) == 0, "\(signature) checksum in guest memory")
        return bytes
    }

    @Test(arguments: [1, 4, 255], bothModels)
    func linuxFindsTheTablesInGuestMemory(cpus: Int, model: PowerManagement.Model) throws {
        let memory = try guestMemory()
        let tables = try FirmwareTables(description: vmmPlatform(cpus: cpus, model: model))
        try tables.write(to: memory)

        #expect(tables.rsdpAddress == 0xE_0000)
        #expect(try scanForRSDP(memory) == tables.rsdpAddress)
        let rsdp = try memory.read(count: 36, at: tables.rsdpAddress)
        let xsdt = try readTable(memory, at: littleEndian(rsdp, 24, 8), signature: "XSDT")
        let fadt = try readTable(memory, at: littleEndian(xsdt, 36, 8), signature: "FACP")
        let madt = try readTable(memory, at: littleEndian(xsdt, 44, 8), signature: "APIC")
        let dsdt = try readTable(memory, at: littleEndian(fadt, 140, 8), signature: "DSDT")
        #expect(madt == tables.table("APIC")?.bytes)
        if case .fixedHardware = model {
            let facsAddress = GuestAddress(littleEndian(fadt, 36, 4))
            #expect(try memory.read(count: 64, at: facsAddress) == tables.table("FACS")?.bytes)
        }
        #expect(dsdt == tables.table("DSDT")?.bytes)

        #expect(tables.mpFloatingPointerAddress == 0xF_0000)
        let pointerAddress = try #require(try scanForMP(memory))
        #expect(pointerAddress == tables.mpFloatingPointerAddress)
        let configurationAddress = UInt64(try memory.load(UInt32.self, at: GuestAddress(pointerAddress.rawValue + 4)))
        let length = Int(try memory.load(UInt16.self, at: GuestAddress(configurationAddress + 4)))
        let configuration = try memory.read(count: length, at: GuestAddress(configurationAddress))
        #expect(ascii(configuration[0..<4]) == "PCMP")
        #expect(sum(configuration) == 0)
        #expect(configuration == tables.table("PCMP")?.bytes)
    }

    @Test func usedRangesAreAlreadyReservedInTheE820Map() throws {
        let memory = try guestMemory()
        let tables = try FirmwareTables(description: vmmPlatform(cpus: 255))
        let map = try E820Map(memory: memory)
        #expect(tables.usedRanges.count == 2)
        for range in tables.usedRanges {
            #expect(!range.isEmpty)
            #expect(map.entries.contains { $0.type == .reserved && $0.address <= range.lowerBound && range.upperBound <= $0.end })
            #expect(!map.ramEntries.contains { $0.range.overlaps(range) })
            #expect(LinuxBootLayout.legacyHole.lowerBound <= range.lowerBound && range.upperBound <= LinuxBootLayout.legacyHole.upperBound)
        }
        // Every table lies inside a used range.
        for table in tables.acpiTables + tables.mpTables {
            #expect(tables.usedRanges.contains { $0.lowerBound <= table.address && table.range.upperBound <= $0.upperBound })
        }
    }

    @Test func writeZeroesStaleBytesBetweenTables() throws {
        let memory = try guestMemory()
        let tables = try FirmwareTables(description: vmmPlatform(cpus: 3))
        for range in tables.usedRanges {
            try memory.fill(0xAA, count: Int(range.upperBound.rawValue - range.lowerBound.rawValue), at: range.lowerBound)
        }
        try tables.write(to: memory)
        let all = tables.acpiTables + tables.mpTables
        for range in tables.usedRanges {
            let bytes = try memory.read(count: Int(range.upperBound.rawValue - range.lowerBound.rawValue), at: range.lowerBound)
            for (offset, byte) in bytes.enumerated() where byte == 0xAA {
                let address = range.lowerBound.rawValue + UInt64(offset)
                #expect(all.contains { $0.range.contains(GuestAddress(address)) }, "stale byte at 0x\(String(address, radix: 16))")
            }
        }
    }

    @Test func writingOutsideGuestRAMFails() throws {
        let memory = try GuestMemory(size: 512 << 10)  // ends below 0xE0000
        let tables = try FirmwareTables(description: vmmPlatform(cpus: 1))
        #expect(throws: FirmwareTableError.self) { try tables.write(to: memory) }
    }
}
