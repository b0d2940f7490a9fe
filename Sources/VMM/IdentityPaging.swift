import VMMCore

/// 4-level page tables that map the first 4 GiB of guest-physical memory onto themselves with
/// 2 MiB pages: a PML4, one PDPT and four page directories, six 4 KiB pages in a row.
///
/// Long mode cannot be entered without paging, so both unit guests and the Linux 64-bit entry
/// (boot.rst: "the range with setup_header.init_size from start address of loaded kernel and zero
/// page and command line buffer get ident mapping") start on these.
public enum IdentityPaging {
    /// The tables occupy this many bytes from their base.
    public static let size = 6 * 4096

    /// The table entries, PML4 first, as little-endian 64-bit words; `base` is where they will live.
    public static func tables(at base: UInt64, userAccessible: Bool) -> [UInt64] {
        let flags: UInt64 = userAccessible ? 0x7 : 0x3  // present | writable (| user)
        var entries = [UInt64](repeating: 0, count: 6 * 512)
        entries[0] = (base + 0x1000) | flags
        for directory in 0..<4 {
            entries[512 + directory] = (base + 0x2000 + UInt64(directory) * 0x1000) | flags
            for page in 0..<512 {
                let address = UInt64(directory) << 30 | UInt64(page) << 21
                entries[1024 + directory * 512 + page] = address | flags | 0x80  // PS: 2 MiB page
            }
        }
        return entries.map(\.littleEndian)
    }

    /// Writes `tables` at `base` in one bounds-checked copy.
    static func install(_ tables: [UInt64], at base: UInt64, in memory: GuestMemory) throws(GuestMemoryError) {
        let target = try memory.hostPointer(for: GuestAddress(base), length: tables.count * 8)
        tables.withUnsafeBytes { bytes in
            if let source = bytes.baseAddress { target.copyMemory(from: source, byteCount: bytes.count) }
        }
    }
}

/// The CPU state in which Linux's 64-bit entry point expects to be called (boot.rst, "64-bit Boot
/// Protocol"): long mode with paging, an identity map covering the kernel, the zero page and the
/// command line, a GDT whose `__BOOT_CS` (0x10) is a 64-bit code segment and `__BOOT_DS` (0x18) a
/// flat data segment, interrupts disabled, and RSI holding the zero page's address.
public struct LinuxEntryLayout: Equatable, Sendable {
    /// Low-memory places for the VMM's tables, clear of the zero page (0x7000), the command line
    /// (0x20000) and the kernel (1 MiB).
    public static let gdtAddress: UInt64 = 0x500
    public static let pageTablesAddress: UInt64 = 0x9000
    public static let bootCodeSelector: UInt16 = 0x10
    public static let bootDataSelector: UInt16 = 0x18

    public init() {}

    /// Writes the GDT and the identity map into guest memory.
    public func install(in memory: GuestMemory) throws(GuestMemoryError) {
        let gdt: [UInt64] = [
            0, 0,
            0x00AF_9B00_0000_FFFF,  // 0x10 __BOOT_CS: 64-bit code, present, accessed
            0x00CF_9300_0000_FFFF,  // 0x18 __BOOT_DS: flat data, present, accessed
        ]
        for (index, descriptor) in gdt.enumerated() {
            try memory.store(descriptor, at: GuestAddress(Self.gdtAddress + UInt64(index) * 8))
        }
        try IdentityPaging.install(
            IdentityPaging.tables(at: Self.pageTablesAddress, userAccessible: false), at: Self.pageTablesAddress, in: memory)
    }

    /// The registers that enter the kernel at `entry` with the zero page at `zeroPage`, derived
    /// from the state KVM created the vCPU with.
    public func cpuState(entry: UInt64, zeroPage: UInt64, from initial: SpecialRegisters) -> (Registers, SpecialRegisters) {
        var registers = Registers()
        registers.rip = entry
        registers.rsi = zeroPage
        registers.rflags = 0x2  // IF clear
        var special = initial
        special.cs = Segment(
            base: 0, limit: 0xFFFF_FFFF, selector: Self.bootCodeSelector, type: 0xB, longMode: true, granularity: true)
        let data = Segment(
            base: 0, limit: 0xFFFF_FFFF, selector: Self.bootDataSelector, type: 0x3, defaultSize32: true, granularity: true)
        (special.ds, special.es, special.fs, special.gs, special.ss) = (data, data, data, data, data)
        special.gdt = DescriptorTable(base: Self.gdtAddress, limit: 4 * 8 - 1)
        special.idt = DescriptorTable(base: 0, limit: 0)
        special.cr3 = Self.pageTablesAddress
        special.cr4 = 0x20  // PAE
        special.cr0 = 0x8000_0033  // PG | NE | ET | MP | PE
        special.efer = 0x500  // LME | LMA
        return (registers, special)
    }
}
