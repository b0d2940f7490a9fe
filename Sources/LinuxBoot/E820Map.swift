import VMMCore

/// An e820 address range type (the ACPI spec's address range types, as Linux numbers them).
public enum E820Type: UInt32, Sendable, CaseIterable {
    /// E820_TYPE_RAM: usable memory.
    case ram = 1
    /// E820_TYPE_RESERVED: not usable.
    case reserved = 2
    /// E820_TYPE_ACPI: ACPI tables, reclaimable once read.
    case acpi = 3
    /// E820_TYPE_NVS: ACPI non-volatile storage.
    case nvs = 4
    /// E820_TYPE_UNUSABLE: memory with errors.
    case unusable = 5
}

/// One e820 range: `struct boot_e820_entry` (u64 addr, u64 size, u32 type).
public struct E820Entry: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var address: GuestAddress
    public var size: UInt64
    public var type: E820Type

    public init(address: GuestAddress, size: UInt64, type: E820Type) {
        self.address = address
        self.size = size
        self.type = type
    }

    /// The first address past the range (`E820Map` checks that `address + size` does not overflow).
    public var end: GuestAddress { GuestAddress(address.rawValue &+ size) }
    public var range: Range<GuestAddress> { address..<end }
    public var description: String { "\(address)..<\(end) \(type)" }
}

/// The memory map the guest receives in the zero page's `e820_table`: sorted, non-overlapping,
/// non-empty ranges, at most `maximumEntries` of them.
///
/// Build it from the same regions the guest memory has (`init(memory:)`), so it cannot claim RAM
/// that is not there, nor hide RAM that is.
public struct E820Map: Equatable, Sendable {
    /// E820_MAX_ENTRIES_ZEROPAGE: the zero page's table holds this many entries.
    public static let maximumEntries = 128
    /// `sizeof(struct boot_e820_entry)`: packed u64, u64, u32.
    public static let entrySize = 20

    /// The entries, sorted by address.
    public let entries: [E820Entry]

    /// A map of `entries` (in any order): each must be non-empty, stay inside the 64-bit address
    /// space and not overlap another; at most `maximumEntries`.
    public init(entries: [E820Entry]) throws(LinuxBootError) {
        guard entries.count <= Self.maximumEntries else { throw .tooManyE820Entries(count: entries.count) }
        let sorted = entries.sorted { $0.address < $1.address }
        var previousEnd: UInt64 = 0
        for (index, entry) in sorted.enumerated() {
            guard entry.size > 0 else {
                throw .invalidE820Entry("the entry at \(entry.address) is empty")
            }
            guard entry.address.adding(entry.size) != nil else {
                throw .invalidE820Entry("the entry at \(entry.address) of \(hex(entry.size)) bytes passes the end of the address space")
            }
            guard index == 0 || entry.address.rawValue >= previousEnd else {
                throw .invalidE820Entry("the entry at \(entry.address) overlaps the one before it")
            }
            previousEnd = entry.address.rawValue &+ entry.size
        }
        self.entries = sorted
    }

    /// The PC map for guest RAM laid out as `layout`: each region is RAM except where it covers the
    /// legacy hole (EBDA, VGA, ROMs: `LinuxBootLayout.legacyHole`, 0x9FC00 ..< 1 MiB), which is
    /// reported reserved; gaps between regions (the 32-bit MMIO hole) are in no entry, so the guest
    /// never takes them for RAM. Touching RAM ranges merge into one entry.
    public init(memoryLayout layout: [(start: GuestAddress, size: Int)]) throws(LinuxBootError) {
        let holeStart = LinuxBootLayout.legacyHole.lowerBound.rawValue
        let holeEnd = LinuxBootLayout.legacyHole.upperBound.rawValue
        var ram: [(start: UInt64, end: UInt64)] = []
        for region in layout {
            guard region.size > 0 else {
                throw .invalidE820Entry("the memory region at \(region.start) has size \(region.size)")
            }
            guard let end = region.start.adding(UInt64(region.size)) else {
                throw .invalidE820Entry("the memory region at \(region.start) passes the end of the address space")
            }
            let start = region.start.rawValue
            if start < holeStart { ram.append((start, min(end.rawValue, holeStart))) }
            if end.rawValue > holeEnd { ram.append((max(start, holeEnd), end.rawValue)) }
        }
        ram.sort { $0.start < $1.start }
        var merged: [(start: UInt64, end: UInt64)] = []
        for piece in ram {
            if let last = merged.last, last.end == piece.start {
                merged[merged.count - 1].end = piece.end
            } else {
                merged.append(piece)
            }
        }
        var entries = merged.map { E820Entry(address: GuestAddress($0.start), size: $0.end - $0.start, type: .ram) }
        entries.append(E820Entry(address: LinuxBootLayout.legacyHole.lowerBound, size: holeEnd - holeStart, type: .reserved))
        try self.init(entries: entries)
    }

    /// The PC map for `memory`'s regions (see `init(memoryLayout:)`).
    public init(memory: GuestMemory) throws(LinuxBootError) {
        try self.init(memoryLayout: memory.regions.map { (start: $0.start, size: $0.size) })
    }

    /// The RAM entries.
    public var ramEntries: [E820Entry] { entries.filter { $0.type == .ram } }

    /// The total RAM the map reports.
    public var ramSize: UInt64 { ramEntries.reduce(0) { $0 + $1.size } }

    /// The RAM entry that holds all of `range`, if one does.
    public func ramEntry(containing range: Range<GuestAddress>) -> E820Entry? {
        ramEntries.first { $0.address <= range.lowerBound && range.upperBound <= $0.end }
    }

    /// The RAM entry that holds `address`, if one does.
    public func ramEntry(containing address: GuestAddress) -> E820Entry? {
        ramEntries.first { $0.address <= address && address < $0.end }
    }

    /// `e820_table` as the zero page holds it: 20 bytes per entry, little-endian.
    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(entries.count * Self.entrySize)
        for entry in entries {
            for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: entry.address.rawValue >> shift)) }
            for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: entry.size >> shift)) }
            for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: entry.type.rawValue >> shift)) }
        }
        return bytes
    }
}
