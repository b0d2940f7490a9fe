import ACPI
import Testing
import VMMCore

@Suite struct MPTableTests {
    struct Entries {
        var processors: [[UInt8]] = []
        var buses: [[UInt8]] = []
        var ioAPICs: [[UInt8]] = []
        var interrupts: [[UInt8]] = []
        var localInterrupts: [[UInt8]] = []
        var count: Int { processors.count + buses.count + ioAPICs.count + interrupts.count + localInterrupts.count }
    }

    /// Walks the configuration table's entries, checking that types come in the order §4.3 asks.
    private func entries(_ table: [UInt8]) throws -> Entries {
        var result = Entries()
        var offset = MPTable.headerSize
        var lastType: UInt8 = 0
        while offset < table.count {
            let type = table[offset]
            try #require(type >= lastType, "entry types out of order")
            lastType = type
            let size = type == 0 ? 20 : 8
            try #require(offset + size <= table.count)
            let entry = Array(table[offset..<offset + size])
            switch type {
            case 0: result.processors.append(entry)
            case 1: result.buses.append(entry)
            case 2: result.ioAPICs.append(entry)
            case 3: result.interrupts.append(entry)
            case 4: result.localInterrupts.append(entry)
            default: Issue.record("unknown entry type \(type)")
            }
            offset += size
        }
        return result
    }

    @Test func floatingPointer() throws {
        let pointer = try MPTable.makeFloatingPointer(configurationTable: 0xF_0010)
        #expect(pointer.count == 16)
        #expect(ascii(pointer[0..<4]) == "_MP_")
        #expect(littleEndian(pointer, 4, 4) == 0xF_0010)
        #expect(pointer[8] == 1)  // length in paragraphs
        #expect(pointer[9] == 4)  // MP 1.4
        #expect(sum(pointer) == 0)
        #expect(pointer[11...].allSatisfy { $0 == 0 })  // configuration table present; virtual wire, no IMCR
        #expect(throws: FirmwareTableError.self) { try MPTable.makeFloatingPointer(configurationTable: 0x1_0000_0000) }
    }

    @Test(arguments: [1, 2, 4, 255])
    func configurationTable(cpus: Int) throws {
        let table = try MPTable.makeConfigurationTable(description: vmmPlatform(cpus: cpus))
        #expect(ascii(table[0..<4]) == "PCMP")
        #expect(littleEndian(table, 4, 2) == UInt64(table.count))
        #expect(table[6] == 4)
        #expect(sum(table) == 0)
        #expect(littleEndian(table, 36, 4) == 0xFEE0_0000)
        let entries = try entries(table)
        #expect(littleEndian(table, 34, 2) == UInt64(entries.count))

        #expect(entries.processors.count == cpus)
        for (index, processor) in entries.processors.enumerated() {
            #expect(processor[1] == UInt8(index))  // local APIC ID
            #expect(processor[2] == 0x14)
            #expect(processor[3] == (index == 0 ? 0x03 : 0x01))  // EN, and BP on vCPU 0 only
        }
        #expect(entries.buses == [[1, 0] + Array("ISA   ".utf8)])
        #expect(entries.ioAPICs == [[2, 0, 0x11, 1, 0x00, 0x00, 0xC0, 0xFE]])

        // ISA IRQs 0-15 but the cascade, each to the I/O APIC input of its number.
        let irqs = entries.interrupts.map { $0[5] }
        #expect(irqs == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        for entry in entries.interrupts {
            #expect(entry[1] == 0)  // INT
            #expect(littleEndian(entry, 2, 2) == 0)  // conforms to ISA
            #expect(entry[4] == 0)  // the ISA bus
            #expect(entry[6] == 0)  // the I/O APIC's ID
            #expect(entry[7] == entry[5])
        }
        for window in vmmVirtioWindows {
            #expect(irqs.contains(UInt8(window.irq)))
        }
        // ExtINT on LINT0, NMI on LINT1, of every local APIC.
        #expect(entries.localInterrupts == [[4, 3, 0, 0, 0, 0, 0xFF, 0], [4, 1, 0, 0, 0, 0, 0xFF, 1]])
    }

    @Test func pin2TimerRouting() throws {
        let table = try MPTable.makeConfigurationTable(description: vmmPlatform(cpus: 1, timerRouting: .pin2))
        let timer = try #require(try entries(table).interrupts.first { $0[5] == 0 })
        #expect(timer[7] == 2)
        #expect(try entries(table).interrupts.filter { $0[7] == 0 }.isEmpty)
    }

    @Test func ioAPICIDAndGSIBaseAreHonoured() throws {
        var description = vmmPlatform(cpus: 2)
        description.ioAPIC = IOAPICDescription(id: 3, gsiBase: 0)
        let entries = try entries(try MPTable.makeConfigurationTable(description: description))
        #expect(entries.ioAPICs.first?[1] == 3)
        #expect(entries.interrupts.allSatisfy { $0[6] == 3 })
    }
}
