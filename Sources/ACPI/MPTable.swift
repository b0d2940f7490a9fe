import VMMCore

/// The Intel MultiProcessor Specification 1.4 tables, for kernels built without ACPI (the test
/// kernel has CONFIG_X86_MPPARSE and no CONFIG_ACPI): the MP floating pointer structure, which the
/// kernel finds by scanning, and the MP configuration table it points to.
///
/// The configuration table lists, in the order §4.3 asks for: one processor entry per vCPU, the
/// ISA bus, the I/O APIC, an I/O interrupt assignment for each ISA IRQ 0–15 but the cascade IRQ 2
/// (so every virtio-mmio IRQ, each an ISA IRQ, has one), and the local interrupts a PC wires: the
/// 8259's ExtINT on LINT0 and NMI on LINT1 of every local APIC.
public enum MPTable {
    /// The size of the MP floating pointer structure (§4.1).
    public static let floatingPointerSize = 16
    /// The size of the configuration table header (§4.2).
    public static let headerSize = 44
    /// The size of a processor entry (§4.3.1); every other entry is 8 bytes.
    public static let processorEntrySize = 20
    public static let entrySize = 8
    /// The specification revision: 1.4.
    public static let specificationRevision: UInt8 = 4
    /// OEM ID (8 bytes) and product ID (12 bytes) of the configuration table.
    public static let oemID = "SWIFTKVM"
    public static let productID = "SWIFTKVM"
    /// The local APIC version processor entries state: 0x14, what KVM's LAPIC version register reads.
    public static let localAPICVersion: UInt8 = 0x14
    /// The ISA bus's ID.
    public static let isaBusID: UInt8 = 0

    /// Configuration table entry types (§4.3, Table 4-3).
    public enum EntryType {
        public static let processor: UInt8 = 0
        public static let bus: UInt8 = 1
        public static let ioAPIC: UInt8 = 2
        public static let ioInterruptAssignment: UInt8 = 3
        public static let localInterruptAssignment: UInt8 = 4
    }

    /// Interrupt types of interrupt assignment entries (§4.3.4, Table 4-8).
    public enum InterruptType {
        public static let vectored: UInt8 = 0
        public static let nmi: UInt8 = 1
        public static let smi: UInt8 = 2
        public static let extINT: UInt8 = 3
    }

    /// The MP floating pointer structure (§4.1): "_MP_", the configuration table's address,
    /// length 1 (16-byte paragraphs), revision 1.4, its checksum, feature byte 1 zero (a
    /// configuration table is present, not a default configuration) and feature byte 2 zero (no
    /// IMCR: the PIC and APICs are wired in virtual-wire mode, as KVM's are).
    public static func makeFloatingPointer(configurationTable: GuestAddress) throws(FirmwareTableError) -> [UInt8] {
        guard configurationTable.rawValue <= UInt64(UInt32.max) else {
            throw .invalidDescription("the MP configuration table at \(configurationTable) is above 4 GiB, where a 32-bit pointer cannot reach")
        }
        var bytes: [UInt8] = []
        bytes.appendASCII("_MP_", count: 4)
        bytes.appendLittleEndian(UInt32(configurationTable.rawValue))
        bytes += [1, specificationRevision, 0, 0, 0, 0, 0, 0]
        bytes[10] = zeroSumChecksum(bytes)
        return bytes
    }

    /// The MP configuration table (§4.2, §4.3) for `description`. It throws if a virtio-mmio
    /// device's interrupt is not an ISA IRQ (0–15) arriving on the I/O APIC: the table describes
    /// interrupts by ISA bus IRQ.
    public static func makeConfigurationTable(description: PlatformDescription) throws(FirmwareTableError) -> [UInt8] {
        try description.validate()
        var entries: [UInt8] = []
        var count = 0

        for cpu in 0..<description.cpuCount {
            var flags: UInt8 = 1  // EN
            if cpu == 0 { flags |= 2 }  // BP: the bootstrap processor
            entries += [EntryType.processor, UInt8(cpu), localAPICVersion, flags]
            entries.appendLittleEndian(UInt32(0x600))  // CPU signature: family 6, model 0, stepping 0
            entries.appendLittleEndian(UInt32(1 << 9 | 1 << 0))  // CPUID.1:EDX features: APIC, FPU
            entries += [UInt8](repeating: 0, count: 8)
            count += 1
        }

        entries += [EntryType.bus, isaBusID]
        entries.appendASCII("ISA", count: 6)
        count += 1

        let ioAPIC = description.ioAPIC
        entries += [EntryType.ioAPIC, ioAPIC.id, IOAPICDescription.version, 1]  // flags: EN
        entries.appendLittleEndian(ioAPIC.address)
        count += 1

        for window in description.virtioMMIODevices where description.isaInterruptRoute(window.irq) == nil {
            throw .invalidDescription("the virtio-mmio device at 0x\(String(window.base, radix: 16)) is on interrupt \(window.irq): the MP table describes ISA IRQs 0-15 (but 2) only")
        }
        for irq in PlatformDescription.isaIRQs {
            guard let gsi = description.isaInterruptRoute(irq), gsi >= ioAPIC.gsiBase,
                gsi - ioAPIC.gsiBase < UInt32(ioAPIC.inputCount)
            else { continue }
            entries += [EntryType.ioInterruptAssignment, InterruptType.vectored]
            entries.appendLittleEndian(UInt16(0))  // polarity and trigger conform to the bus (ISA: edge, high)
            entries += [isaBusID, UInt8(irq), ioAPIC.id, UInt8(gsi - ioAPIC.gsiBase)]
            count += 1
        }

        for (type, lint) in [(InterruptType.extINT, UInt8(0)), (InterruptType.nmi, UInt8(1))] {
            entries += [EntryType.localInterruptAssignment, type]
            entries.appendLittleEndian(UInt16(0))  // conforms to the bus
            entries += [isaBusID, 0, 0xFF, lint]  // source IRQ 0; every local APIC
            count += 1
        }

        let length = headerSize + entries.count
        guard length <= Int(UInt16.max) else { throw .tooLarge(what: "MP configuration table length", size: length, limit: Int(UInt16.max)) }
        var table: [UInt8] = []
        table.appendASCII("PCMP", count: 4)
        table.appendLittleEndian(UInt16(length))
        table += [specificationRevision, 0]  // checksum, below
        table.appendASCII(oemID, count: 8)
        table.appendASCII(productID, count: 12)
        table.appendLittleEndian(UInt32(0))  // OEM table pointer: none
        table.appendLittleEndian(UInt16(0))  // OEM table size
        table.appendLittleEndian(UInt16(count))
        table.appendLittleEndian(description.localAPICAddress)
        table.appendLittleEndian(UInt16(0))  // extended table length: none
        table += [0, 0]  // extended table checksum, reserved
        table += entries
        table[7] = zeroSumChecksum(table)
        return table
    }
}
