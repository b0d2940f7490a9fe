import VMMCore

/// Where the firmware tables go in guest-physical memory.
///
/// The default, `biosArea`, is where a PC BIOS keeps them and where Linux looks when no EFI and
/// no boot-loader pointer tells it: the RSDP at 0xE0000 (Linux scans 0xE0000–0xFFFFF on 16-byte
/// boundaries, `acpi_find_root_pointer`) with the other ACPI tables after it, and the MP floating
/// pointer at 0xF0000 (Linux scans 0xF0000–0xFFFFF, the first KiB and the last KiB of base
/// memory, `default_find_smp_config`) with the configuration table after it. Both areas are
/// inside the legacy hole 0x9FC00–0xFFFFF that the e820 map already reports reserved, so the
/// kernel never uses them as RAM and nothing in the map changes.
public struct FirmwareTableLayout: Equatable, Sendable {
    /// The ACPI tables, RSDP first at its 16-byte-aligned lower bound. Below 4 GiB, like `mpArea`.
    public var acpiArea: Range<GuestAddress>
    /// The MP tables, floating pointer first at its 16-byte-aligned lower bound.
    public var mpArea: Range<GuestAddress>

    public init(acpiArea: Range<GuestAddress>, mpArea: Range<GuestAddress>) {
        self.acpiArea = acpiArea
        self.mpArea = mpArea
    }

    /// 0xE0000–0xEFFFF for ACPI, 0xF0000–0xFFFFF for the MP tables.
    public static let biosArea = FirmwareTableLayout(acpiArea: 0xE_0000..<0xF_0000, mpArea: 0xF_0000..<0x10_0000)

    /// Tables start on 16-byte boundaries: the RSDP and the MP floating pointer must (ACPI 6.5
    /// §5.2.5.1, MP 1.4 §4.1), and the others may as well; the FACS on a 64-byte one (§5.2.10).
    public static let alignment: UInt64 = 16
}

/// One table as placed: its signature, where it starts and its bytes.
public struct PlacedTable: Equatable, Sendable {
    /// "RSD PTR ", "XSDT", "FACP", "APIC", "DSDT", "_MP_" or "PCMP".
    public let signature: String
    public let address: GuestAddress
    public let bytes: [UInt8]

    public var range: Range<GuestAddress> { address..<GuestAddress(address.rawValue + UInt64(bytes.count)) }
}

/// The ACPI and MP tables for a `PlatformDescription`, placed according to a
/// `FirmwareTableLayout`: build them (pure), then `write(to:)` guest memory.
///
/// Usage from the VMM:
///
///     let tables = try FirmwareTables(description: PlatformDescription(cpuCount: 2, virtioMMIODevices: windows))
///     try tables.write(to: memory)
///     // zero page: acpi_rsdp_addr (offset 0x070) = tables.rsdpAddress
///     // e820: tables.usedRanges are inside the reserved legacy hole already
public struct FirmwareTables: Equatable, Sendable {
    /// The description the tables were made from.
    public let description: PlatformDescription
    /// The layout they were placed by.
    public let layout: FirmwareTableLayout
    /// RSDP, XSDT, FADT, FACS (fixed-hardware model only), MADT and DSDT, in address order.
    public let acpiTables: [PlacedTable]
    /// The MP floating pointer and the MP configuration table, in address order.
    public let mpTables: [PlacedTable]

    /// Builds every table for `description` and places it by `layout`, checking the description
    /// (`PlatformDescription.validate()`), the areas' alignment and that each set of tables fits
    /// its area. Nothing is written yet.
    public init(description: PlatformDescription, layout: FirmwareTableLayout = .biosArea) throws(FirmwareTableError) {
        try description.validate()
        for (what, area) in [("ACPI", layout.acpiArea), ("MP", layout.mpArea)] {
            guard area.lowerBound.rawValue % FirmwareTableLayout.alignment == 0 else {
                throw .invalidDescription("the \(what) table area starts at \(area.lowerBound), not on a 16-byte boundary")
            }
            // The FADT's DSDT field and the MP pointers are 32-bit.
            guard area.upperBound.rawValue <= 1 << 32 else {
                throw .invalidDescription("the \(what) table area ends at \(area.upperBound), above 4 GiB")
            }
        }
        guard !layout.acpiArea.overlaps(layout.mpArea) else {
            throw .invalidDescription("the ACPI table area and the MP table area overlap")
        }
        self.description = description
        self.layout = layout

        // ACPI: sizes first (only the FADT and XSDT hold addresses, and their sizes are fixed).
        // In address order: RSDP, XSDT, FADT, FACS (fixed hardware only), MADT, DSDT.
        let dsdt = try ACPITable.makeDSDT(description: description)
        let madt = try ACPITable.makeMADT(description: description)
        let hasFACS = !description.power.isHardwareReduced
        var sizes: [(size: Int, alignment: UInt64)] = [(ACPITable.rsdpSize, 16), (ACPITable.headerSize + 2 * 8, 16), (ACPITable.fadtSize, 16)]
        if hasFACS { sizes.append((ACPITable.facsSize, 64)) }  // §5.2.10: 64-byte aligned
        sizes += [(madt.count, 16), (dsdt.count, 16)]
        let addresses = try Self.place(sizes, in: layout.acpiArea, what: "the ACPI tables")
        let (rsdpAt, xsdtAt, fadtAt) = (addresses[0], addresses[1], addresses[2])
        let facsAt = hasFACS ? addresses[3] : nil
        let (madtAt, dsdtAt) = (addresses[addresses.count - 2], addresses[addresses.count - 1])
        var tables = [
            PlacedTable(signature: "RSD PTR ", address: rsdpAt, bytes: ACPITable.makeRSDP(xsdt: xsdtAt)),
            PlacedTable(signature: "XSDT", address: xsdtAt, bytes: ACPITable.makeXSDT(entries: [fadtAt, madtAt])),
            PlacedTable(signature: "FACP", address: fadtAt, bytes: ACPITable.makeFADT(description: description, dsdt: dsdtAt, facs: facsAt)),
        ]
        if let facsAt { tables.append(PlacedTable(signature: "FACS", address: facsAt, bytes: ACPITable.makeFACS())) }
        tables += [PlacedTable(signature: "APIC", address: madtAt, bytes: madt), PlacedTable(signature: "DSDT", address: dsdtAt, bytes: dsdt)]
        acpiTables = tables

        // MP: the floating pointer, then the configuration table.
        let configuration = try MPTable.makeConfigurationTable(description: description)
        let mpAddresses = try Self.place([(MPTable.floatingPointerSize, 16), (configuration.count, 16)], in: layout.mpArea, what: "the MP tables")
        mpTables = [
            PlacedTable(signature: "_MP_", address: mpAddresses[0], bytes: try MPTable.makeFloatingPointer(configurationTable: mpAddresses[1])),
            PlacedTable(signature: "PCMP", address: mpAddresses[1], bytes: configuration),
        ]
    }

    /// The RSDP's address: for the zero page's `acpi_rsdp_addr` (offset 0x070, boot protocol 2.14).
    public var rsdpAddress: GuestAddress { acpiTables[0].address }

    /// The MP floating pointer's address.
    public var mpFloatingPointerAddress: GuestAddress { mpTables[0].address }

    /// The table with `signature`, ACPI or MP.
    public func table(_ signature: String) -> PlacedTable? {
        (acpiTables + mpTables).first { $0.signature == signature }
    }

    /// The guest ranges the tables occupy, one per area, from the first table's start to the
    /// last one's end: what must not be RAM in the e820 map (the default layout's are inside the
    /// reserved legacy hole).
    public var usedRanges: [Range<GuestAddress>] {
        [acpiTables, mpTables].map { tables in tables[0].address..<tables[tables.count - 1].range.upperBound }
    }

    /// Writes the tables into `memory`, zeroing the gaps between them first. Throws if a range is
    /// not guest RAM.
    public func write(to memory: GuestMemory) throws(FirmwareTableError) {
        do throws(GuestMemoryError) {
            for range in usedRanges {
                try memory.fill(0, count: Int(range.upperBound.rawValue - range.lowerBound.rawValue), at: range.lowerBound)
            }
            for table in acpiTables + mpTables {
                try memory.write(table.bytes, at: table.address)
            }
        } catch {
            throw .guestMemory(error)
        }
    }

    /// Consecutive addresses from the start of `area` for items of the given sizes, each on its
    /// alignment (a power of two).
    private static func place(_ items: [(size: Int, alignment: UInt64)], in area: Range<GuestAddress>, what: String) throws(FirmwareTableError) -> [GuestAddress] {
        var next = area.lowerBound.rawValue
        var addresses: [GuestAddress] = []
        for item in items {
            next = (next + item.alignment - 1) & ~(item.alignment - 1)
            addresses.append(GuestAddress(next))
            next += UInt64(item.size)
        }
        guard next <= area.upperBound.rawValue else {
            throw .doesNotFit(what: what, size: Int(next - area.lowerBound.rawValue), area: area)
        }
        return addresses
    }
}
