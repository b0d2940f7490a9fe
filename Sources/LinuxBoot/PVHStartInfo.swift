import VMMCore

/// The `struct hvm_start_info` a kernel's PVH entry receives in EBX (Xen's
/// xen/include/public/arch-x86/hvm/start_info.h, version 1; Linux's arch/x86/platform/pvh/enlighten.c
/// turns it into boot_params): the command line, the initrd as the first module, the memory map
/// and the RSDP. Entry state (start_info.h, "x86 PVH"): 32-bit protected mode, paging off, CS a
/// flat 32-bit code segment, DS/ES/SS flat data, interrupts off, EBX = this struct's address.
///
/// Layout, little-endian:
///
/// | offset | field            |      | modlist entry (32 bytes) | memmap entry (24 bytes)   |
/// |--------|------------------|------|--------------------------|---------------------------|
/// | 0      | magic 0x336EC578 | u32  | paddr u64                | addr u64                  |
/// | 4      | version (1)      | u32  | size u64                 | size u64                  |
/// | 8      | flags            | u32  | cmdline_paddr u64        | type u32 (e820's), u32 0  |
/// | 12     | nr_modules       | u32  | reserved u64             |                           |
/// | 16     | modlist_paddr    | u64  |                          |                           |
/// | 24     | cmdline_paddr    | u64  |                          |                           |
/// | 32     | rsdp_paddr       | u64  |                          |                           |
/// | 40     | memmap_paddr     | u64  |                          |                           |
/// | 48     | memmap_entries   | u32  |                          |                           |
/// | 52     | reserved         | u32  |                          |                           |
public struct PVHStartInfo: Equatable, Sendable {
    public static let magic: UInt32 = 0x336E_C578
    public static let version: UInt32 = 1
    public static let size = 56
    public static let moduleEntrySize = 32
    public static let memoryMapEntrySize = 24
    /// Offset of `rsdp_paddr`, for a VMM that writes its ACPI tables after the loader.
    public static let rsdpOffset: UInt64 = 32

    /// Where the struct, its module list and its memory map go: in low memory below the zero page
    /// (0x6000 ..< 0x7000, free in `LinuxBootLayout`), 0x40 bytes for the struct, 0x40 for one
    /// module, then up to E820Map.maximumEntries memory-map entries (3072 bytes).
    public static let address: GuestAddress = 0x6000
    static let moduleListAddress: GuestAddress = 0x6040
    static let memoryMapAddress: GuestAddress = 0x6080
    /// All of it.
    public static let range: Range<GuestAddress> =
        address..<GuestAddress(0x6080 + UInt64(E820Map.maximumEntries * memoryMapEntrySize))

    public let commandLine: GuestAddress
    public let initrd: InitrdPlacement?
    public let e820: E820Map
    public let rsdp: GuestAddress?

    public init(commandLine: GuestAddress, initrd: InitrdPlacement?, e820: E820Map, rsdp: GuestAddress? = nil) {
        self.commandLine = commandLine
        self.initrd = initrd
        self.e820 = e820
        self.rsdp = rsdp
    }

    /// The struct for what `bootInfo` placed.
    public init(bootInfo: LinuxBootInfo, rsdp: GuestAddress? = nil) {
        self.init(commandLine: bootInfo.commandLine.lowerBound, initrd: bootInfo.initrd, e820: bootInfo.e820, rsdp: rsdp)
    }

    /// The struct, the module list and the memory map as they are written, each at its address.
    public var encoded: [(address: GuestAddress, bytes: [UInt8])] {
        var info = [UInt8](repeating: 0, count: Self.size)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int, in bytes: inout [UInt8]) {
            for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        put(Self.magic, 0, in: &info)
        put(Self.version, 4, in: &info)
        put(UInt32(initrd == nil ? 0 : 1), 12, in: &info)
        put(initrd == nil ? 0 : Self.moduleListAddress.rawValue, 16, in: &info)
        put(commandLine.rawValue, 24, in: &info)
        put(rsdp?.rawValue ?? 0, 32, in: &info)
        put(Self.memoryMapAddress.rawValue, 40, in: &info)
        put(UInt32(e820.entries.count), 48, in: &info)

        var module = [UInt8](repeating: 0, count: Self.moduleEntrySize)
        if let initrd {
            put(initrd.address.rawValue, 0, in: &module)
            put(UInt64(initrd.size), 8, in: &module)
        }
        var map = [UInt8](repeating: 0, count: e820.entries.count * Self.memoryMapEntrySize)
        for (index, entry) in e820.entries.enumerated() {
            put(entry.address.rawValue, index * 24, in: &map)
            put(entry.size, index * 24 + 8, in: &map)
            put(entry.type.rawValue, index * 24 + 16, in: &map)
        }
        return [(Self.address, info), (Self.moduleListAddress, module), (Self.memoryMapAddress, map)]
    }

    /// Writes the struct, module list and memory map into `memory`.
    public func write(to memory: GuestMemory) throws(GuestMemoryError) {
        for part in encoded { try memory.write(part.bytes, at: part.address) }
    }
}
