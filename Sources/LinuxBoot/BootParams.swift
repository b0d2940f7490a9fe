import VMMCore

/// The zero page: `struct boot_params` (arch/x86/include/uapi/asm/bootparam.h), 4096 bytes, whose
/// address the 64-bit entry receives in %rsi.
///
/// boot.rst, "64-bit Boot Protocol": zero it, copy the setup header from the image at 0x1F1 (its end
/// is `0x202 + the byte at 0x201`), then fill in the fields a boot loader writes and those of
/// Documentation/arch/x86/zero-page.rst.
public struct BootParams: Equatable, Sendable {
    /// `sizeof(struct boot_params)`.
    public static let size = 4096

    /// Offsets into `struct boot_params`. The setup header sits at 0x1F1 both in the bzImage file and
    /// in the zero page, so the header offsets are also file offsets. Names are bootparam.h's; the
    /// comment gives the boot protocol version that added the field (boot.rst, "The real-mode
    /// kernel header"; zero-page.rst for the fields outside the header).
    public enum Offset {
        // Outside the setup header (zero-page.rst).
        /// `acpi_rsdp_addr`, u64: the ACPI RSDP's physical address (2.14+).
        public static let acpiRsdpAddr = 0x070
        /// `ext_ramdisk_image`, u32: bits 63:32 of `ramdisk_image` (with XLF_CAN_BE_LOADED_ABOVE_4G, 2.12+).
        public static let extRamdiskImage = 0x0C0
        /// `ext_ramdisk_size`, u32: bits 63:32 of `ramdisk_size` (2.12+).
        public static let extRamdiskSize = 0x0C4
        /// `ext_cmd_line_ptr`, u32: bits 63:32 of `cmd_line_ptr` (2.12+).
        public static let extCmdLinePtr = 0x0C8
        /// `e820_entries`, u8: the number of entries in `e820_table`.
        public static let e820Entries = 0x1E8
        /// `sentinel`, u8: must stay 0 (a non-zero value tells the kernel the loader copied garbage).
        public static let sentinel = 0x1EF

        // The setup header, `struct setup_header hdr` (boot.rst).
        /// `hdr`: the setup header starts here.
        public static let setupHeader = 0x1F1
        /// `setup_sects`, u8: 512-byte sectors of real-mode setup code; 0 means 4 (all versions).
        public static let setupSects = 0x1F1
        /// `root_flags`, u16 (all versions, obsolete).
        public static let rootFlags = 0x1F2
        /// `syssize`, u32: the protected-mode code's size in 16-byte paragraphs (2.04+).
        public static let syssize = 0x1F4
        /// `ram_size`, u16 (all versions, obsolete).
        public static let ramSize = 0x1F8
        /// `vid_mode`, u16: video mode; 0xFFFF means "normal" (all versions).
        public static let vidMode = 0x1FA
        /// `root_dev`, u16 (all versions).
        public static let rootDev = 0x1FC
        /// `boot_flag`, u16: 0xAA55 (all versions).
        public static let bootFlag = 0x1FE
        /// `jump`, u16: a short jump (0xEB, offset) over the header; the offset byte sets its end (2.00+).
        public static let jump = 0x200
        /// `header`, u32: the magic "HdrS" (2.00+).
        public static let header = 0x202
        /// `version`, u16: the boot protocol version, major in the high byte (2.00+).
        public static let version = 0x206
        /// `realmode_swtch`, u32 (2.00+).
        public static let realmodeSwtch = 0x208
        /// `start_sys_seg`, u16 (2.00+, obsolete).
        public static let startSysSeg = 0x20C
        /// `kernel_version`, u16: the version string's offset minus 0x200 (2.00+).
        public static let kernelVersion = 0x20E
        /// `type_of_loader`, u8: 0xFF for a loader with no assigned ID (2.00+).
        public static let typeOfLoader = 0x210
        /// `loadflags`, u8: `LoadFlags` (2.00+).
        public static let loadflags = 0x211
        /// `setup_move_size`, u16 (2.00+).
        public static let setupMoveSize = 0x212
        /// `code32_start`, u32: the 32-bit entry, the default load address (2.00+).
        public static let code32Start = 0x214
        /// `ramdisk_image`, u32: the initrd's address, low 32 bits (2.00+).
        public static let ramdiskImage = 0x218
        /// `ramdisk_size`, u32: the initrd's size, low 32 bits (2.00+).
        public static let ramdiskSize = 0x21C
        /// `bootsect_kludge`, u32 (2.00+, obsolete).
        public static let bootsectKludge = 0x220
        /// `heap_end_ptr`, u16: end of the real-mode setup heap, relative to the setup start (2.01+).
        public static let heapEndPtr = 0x224
        /// `ext_loader_ver`, u8 (2.02+).
        public static let extLoaderVer = 0x226
        /// `ext_loader_type`, u8 (2.02+).
        public static let extLoaderType = 0x227
        /// `cmd_line_ptr`, u32: the command line's address, low 32 bits (2.02+).
        public static let cmdLinePtr = 0x228
        /// `initrd_addr_max`, u32: the highest address the initrd may occupy (2.03+).
        public static let initrdAddrMax = 0x22C
        /// `kernel_alignment`, u32: the alignment a relocatable kernel needs (2.05+).
        public static let kernelAlignment = 0x230
        /// `relocatable_kernel`, u8: non-zero if the kernel may be loaded anywhere aligned (2.05+).
        public static let relocatableKernel = 0x234
        /// `min_alignment`, u8: log2 of the minimum alignment (2.10+).
        public static let minAlignment = 0x235
        /// `xloadflags`, u16: `XLoadFlags` (2.12+).
        public static let xloadflags = 0x236
        /// `cmdline_size`, u32: the longest command line, terminating NUL excluded (2.06+).
        public static let cmdlineSize = 0x238
        /// `hardware_subarch`, u32: 0 for a normal PC (2.07+).
        public static let hardwareSubarch = 0x23C
        /// `hardware_subarch_data`, u64 (2.07+).
        public static let hardwareSubarchData = 0x240
        /// `payload_offset`, u32 (2.08+).
        public static let payloadOffset = 0x248
        /// `payload_length`, u32 (2.08+).
        public static let payloadLength = 0x24C
        /// `setup_data`, u64: a linked list of `struct setup_data`, 0 for none (2.09+).
        public static let setupData = 0x250
        /// `pref_address`, u64: the preferred load address (2.10+).
        public static let prefAddress = 0x258
        /// `init_size`, u32: linear memory the kernel needs from its runtime start (2.10+).
        public static let initSize = 0x260
        /// `handover_offset`, u32: the EFI handover entry (2.11+).
        public static let handoverOffset = 0x264
        /// `kernel_info_offset`, u32 (2.15+).
        public static let kernelInfoOffset = 0x268
        /// The end of `struct setup_header`'s space in `struct boot_params` (`edd_mbr_sig_buffer`
        /// follows): no setup header may extend past it.
        public static let setupHeaderLimit = 0x290

        // After the header (zero-page.rst).
        /// `e820_table`, `struct boot_e820_entry[E820_MAX_ENTRIES_ZEROPAGE]`, 20 bytes each.
        public static let e820Table = 0x2D0
    }

    /// `loadflags` (boot.rst, "Details of Header Fields").
    public struct LoadFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Bit 0, read: the protected-mode code is loaded at 0x100000 (a bzImage).
        public static let loadedHigh = LoadFlags(rawValue: 1 << 0)
        /// Bit 1, kernel internal: KASLR was used.
        public static let kaslrFlag = LoadFlags(rawValue: 1 << 1)
        /// Bit 5, write: suppress early messages.
        public static let quietFlag = LoadFlags(rawValue: 1 << 5)
        /// Bit 6, write (obsolete): do not reload segment registers in the 32-bit entry.
        public static let keepSegments = LoadFlags(rawValue: 1 << 6)
        /// Bit 7, write: `heap_end_ptr` is valid.
        public static let canUseHeap = LoadFlags(rawValue: 1 << 7)
    }

    /// `xloadflags` (boot.rst, protocol 2.12+).
    public struct XLoadFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// XLF_KERNEL_64: the kernel has the legacy 64-bit entry point at 0x200.
        public static let kernel64 = XLoadFlags(rawValue: 1 << 0)
        /// XLF_CAN_BE_LOADED_ABOVE_4G: kernel, zero page, command line and initrd may be above 4 GiB.
        public static let canBeLoadedAbove4G = XLoadFlags(rawValue: 1 << 1)
        /// XLF_EFI_HANDOVER_32.
        public static let efiHandover32 = XLoadFlags(rawValue: 1 << 2)
        /// XLF_EFI_HANDOVER_64.
        public static let efiHandover64 = XLoadFlags(rawValue: 1 << 3)
        /// XLF_EFI_KEXEC.
        public static let efiKexec = XLoadFlags(rawValue: 1 << 4)
        /// XLF_5LEVEL.
        public static let fiveLevelPaging = XLoadFlags(rawValue: 1 << 5)
        /// XLF_5LEVEL_ENABLED.
        public static let fiveLevelPagingEnabled = XLoadFlags(rawValue: 1 << 6)
    }

    /// `type_of_loader` for a boot loader without an assigned ID.
    public static let undefinedLoaderType: UInt8 = 0xFF
    /// `vid_mode` "normal": no mode switch.
    public static let normalVideoMode: UInt16 = 0xFFFF

    /// The 4096 bytes of the zero page.
    public private(set) var bytes: [UInt8]

    /// An all-zero zero page.
    public init() {
        bytes = Array(repeating: 0, count: Self.size)
    }

    /// A zero page holding `kernel`'s setup header (0x1F1 up to `0x202 + byte at 0x201`), with the
    /// loader-written header fields set as this loader boots a kernel: `type_of_loader` 0xFF,
    /// `vid_mode` "normal", `loadflags` with LOADED_HIGH kept and CAN_USE_HEAP and KEEP_SEGMENTS
    /// cleared (the 64-bit entry does not run the real-mode setup code that uses the heap, so
    /// `heap_end_ptr` is 0), `setup_sects` 4 where the image says 0, and no `setup_data`,
    /// command line or initrd yet.
    public init(kernel: BzImage) {
        self.init()
        let header = kernel.setupHeader
        bytes.replaceSubrange(Offset.setupHeader..<Offset.setupHeader + header.count, with: header)
        set(UInt8(kernel.setupSectors), at: Offset.setupSects)
        set(Self.normalVideoMode, at: Offset.vidMode)
        set(Self.undefinedLoaderType, at: Offset.typeOfLoader)
        var flags = LoadFlags(rawValue: kernel.loadFlags.rawValue)
        flags.insert(.loadedHigh)
        flags.subtract([.canUseHeap, .keepSegments])
        set(flags.rawValue, at: Offset.loadflags)
        set(UInt16(0), at: Offset.heapEndPtr)
        set(UInt64(0), at: Offset.setupData)
        set(UInt32(0), at: Offset.cmdLinePtr)
        set(UInt32(0), at: Offset.ramdiskImage)
        set(UInt32(0), at: Offset.ramdiskSize)
    }

    /// The little-endian integer at `offset`. `offset` is one of `Offset`'s constants; an offset
    /// past the zero page reads as 0.
    public func value<T: FixedWidthInteger>(_ type: T.Type = T.self, at offset: Int) -> T {
        let width = MemoryLayout<T>.size
        guard offset >= 0, offset <= Self.size - width else { return 0 }
        var result: T = 0
        for index in 0..<width {
            result |= T(truncatingIfNeeded: bytes[offset + index]) << (8 * index)
        }
        return result
    }

    /// Stores `value` little-endian at `offset`, one of `Offset`'s constants. An offset past the
    /// zero page is ignored (the constants never are).
    public mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        let width = MemoryLayout<T>.size
        guard offset >= 0, offset <= Self.size - width else { return }
        for index in 0..<width {
            bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index))
        }
    }

    /// `cmd_line_ptr` and `ext_cmd_line_ptr`: the command line is at `address`.
    public mutating func setCommandLine(at address: GuestAddress) {
        set(UInt32(truncatingIfNeeded: address.rawValue), at: Offset.cmdLinePtr)
        set(UInt32(truncatingIfNeeded: address.rawValue >> 32), at: Offset.extCmdLinePtr)
    }

    /// `ramdisk_image`/`ramdisk_size` and their `ext_` high halves: the initrd is `size` bytes at
    /// `address` (0 and 0 for none).
    public mutating func setInitrd(at address: GuestAddress, size: UInt64) {
        set(UInt32(truncatingIfNeeded: address.rawValue), at: Offset.ramdiskImage)
        set(UInt32(truncatingIfNeeded: address.rawValue >> 32), at: Offset.extRamdiskImage)
        set(UInt32(truncatingIfNeeded: size), at: Offset.ramdiskSize)
        set(UInt32(truncatingIfNeeded: size >> 32), at: Offset.extRamdiskSize)
    }

    /// `e820_entries` and `e820_table`: `map`'s entries, 20 bytes each (`struct boot_e820_entry`:
    /// u64 addr, u64 size, u32 type, packed). `E820Map` never holds more than the table's 128.
    public mutating func setE820(_ map: E820Map) {
        let table = map.encoded
        set(UInt8(map.entries.count), at: Offset.e820Entries)
        bytes.replaceSubrange(Offset.e820Table..<Offset.e820Table + table.count, with: table)
    }

    /// `cmd_line_ptr | ext_cmd_line_ptr << 32`.
    public var commandLineAddress: GuestAddress {
        GuestAddress(UInt64(value(UInt32.self, at: Offset.cmdLinePtr)) | UInt64(value(UInt32.self, at: Offset.extCmdLinePtr)) << 32)
    }

    /// `ramdisk_image | ext_ramdisk_image << 32`.
    public var initrdAddress: GuestAddress {
        GuestAddress(UInt64(value(UInt32.self, at: Offset.ramdiskImage)) | UInt64(value(UInt32.self, at: Offset.extRamdiskImage)) << 32)
    }

    /// `ramdisk_size | ext_ramdisk_size << 32`.
    public var initrdSize: UInt64 {
        UInt64(value(UInt32.self, at: Offset.ramdiskSize)) | UInt64(value(UInt32.self, at: Offset.extRamdiskSize)) << 32
    }

    /// Copies the zero page into guest memory at `address`.
    public func write(to memory: GuestMemory, at address: GuestAddress) throws(GuestMemoryError) {
        try memory.write(bytes, at: address)
    }
}
