import LinuxBoot
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

/// Which of the kernel's entry points the VMM starts it at (boot.rst, "32-bit Boot Protocol" and
/// "64-bit Boot Protocol").
public enum LinuxBootEntry: String, CaseIterable, Sendable {
    /// The default: a bzImage's payload is decompressed in the host and the kernel started at its
    /// ELF entry (`startup_64`) in long mode, as the bzImage's own decompressor would start it; a
    /// vmlinux is started the same way. See `BootKernel`.
    case direct
    /// A bzImage's 64-bit entry, load address + 0x200, in long mode: the kernel decompresses
    /// itself in the guest, skipping only its own page-table setup.
    case bits64 = "64"
    /// The 32-bit entry, the load address (`code32_start`), in protected mode with paging off:
    /// how a 32-bit loader (or a BIOS loader's real-mode setup) starts the kernel.
    case bits32 = "32"
    /// The PVH entry of an ELF kernel (a vmlinux, or a bzImage's payload decompressed in the host):
    /// 32-bit protected mode, paging off, EBX = `hvm_start_info` (`PVHStartInfo`), as QEMU and
    /// Cloud Hypervisor start a vmlinux.
    case pvh

    /// Whether the kernel is entered in long mode (otherwise 32-bit protected mode, paging off).
    public var isLongMode: Bool { self == .direct || self == .bits64 }
}

/// The CPU state in which Linux's entry points expect to be called. The 64-bit entry (boot.rst,
/// "64-bit Boot Protocol"): long mode with paging, an identity map covering the kernel, the zero
/// page and the command line, a GDT whose `__BOOT_CS` (0x10) is a 64-bit code segment and
/// `__BOOT_DS` (0x18) a flat data segment, interrupts disabled, and RSI holding the zero page's
/// address. The 32-bit entry ("32-bit Boot Protocol"): protected mode with paging off, `__BOOT_CS`
/// a flat 32-bit code segment, the same data segment, interrupts disabled, ESI the zero page and
/// EBX, EDI, EBP zero.
public struct LinuxEntryLayout: Equatable, Sendable {
    /// Low-memory places for the VMM's tables, clear of the zero page (0x7000), the command line
    /// (0x20000) and the kernel (1 MiB).
    public static let gdtAddress: UInt64 = 0x500
    public static let pageTablesAddress: UInt64 = 0x9000
    public static let bootCodeSelector: UInt16 = 0x10
    public static let bootDataSelector: UInt16 = 0x18

    public let entry: LinuxBootEntry

    public init(entry: LinuxBootEntry = .bits64) { self.entry = entry }

    /// Writes the GDT and the identity map into guest memory (the map is unused by the 32-bit
    /// entry, which runs with paging off, but the place is reserved either way).
    public func install(in memory: GuestMemory) throws(GuestMemoryError) {
        let gdt: [UInt64] = [
            0, 0,
            entry.isLongMode
                ? 0x00AF_9B00_0000_FFFF  // 0x10 __BOOT_CS: 64-bit code, present, accessed
                : 0x00CF_9B00_0000_FFFF,  // 0x10 __BOOT_CS: flat 32-bit code, present, accessed
            0x00CF_9300_0000_FFFF,  // 0x18 __BOOT_DS: flat data, present, accessed
        ]
        for (index, descriptor) in gdt.enumerated() {
            try memory.store(descriptor, at: GuestAddress(Self.gdtAddress + UInt64(index) * 8))
        }
        try IdentityPaging.install(
            IdentityPaging.tables(at: Self.pageTablesAddress, userAccessible: false), at: Self.pageTablesAddress, in: memory)
    }

    /// The address to start a kernel at: the 64-bit entry (load address + 0x200) or the 32-bit one
    /// (the load address, boot.rst: "the start address of loaded 32-bit kernel").
    /// For the direct entry, `bootInfo.entryPoint` is the ELF entry; the PVH entry comes from the
    /// ELF note (`BootKernel.entryAddress(_:)`).
    public func entryPoint(_ bootInfo: LinuxBootInfo) -> UInt64 {
        entry == .bits32 ? bootInfo.kernelLoadAddress.rawValue : bootInfo.entryPoint.rawValue
    }

    /// The registers that enter the kernel at `entry` with the zero page at `zeroPage`, derived
    /// from the state KVM created the vCPU with. Registers not named here (EBX, EDI, EBP among
    /// them) are zero.
    public func cpuState(entry address: UInt64, zeroPage: UInt64, from initial: SpecialRegisters) -> (Registers, SpecialRegisters) {
        var registers = Registers()
        registers.rip = address
        registers.rsi = zeroPage
        registers.rflags = 0x2  // IF clear
        var special = initial
        special.cs = Segment(
            base: 0, limit: 0xFFFF_FFFF, selector: Self.bootCodeSelector, type: 0xB, defaultSize32: !entry.isLongMode,
            longMode: entry.isLongMode, granularity: true)
        let data = Segment(
            base: 0, limit: 0xFFFF_FFFF, selector: Self.bootDataSelector, type: 0x3, defaultSize32: true, granularity: true)
        (special.ds, special.es, special.fs, special.gs, special.ss) = (data, data, data, data, data)
        special.gdt = DescriptorTable(base: Self.gdtAddress, limit: 4 * 8 - 1)
        special.idt = DescriptorTable(base: 0, limit: 0)
        if entry == .pvh { registers.rbx = PVHStartInfo.address.rawValue }  // start_info.h: EBX = hvm_start_info
        switch entry {
        case .direct, .bits64:
            special.cr3 = Self.pageTablesAddress
            special.cr4 = 0x20  // PAE
            special.cr0 = 0x8000_0033  // PG | NE | ET | MP | PE
            special.efer = 0x500  // LME | LMA
        case .bits32, .pvh:
            special.cr3 = 0
            special.cr4 = 0
            special.cr0 = 0x33  // NE | ET | MP | PE: paging off
            special.efer = 0
        }
        return (registers, special)
    }
}
