// LinuxBoot: the x86 Linux boot protocol (Documentation/arch/x86/boot.rst) — the bzImage setup
// header, the zero page, the e820 map, the command line and initrd placement. It depends only on
// VMMCore's guest memory, so every part of it is testable on in-memory images without /dev/kvm.
import VMMCore

/// Where the loader puts things in guest-physical memory, and the shape of guest RAM.
///
/// Low memory (below 1 MiB), as the loader uses it:
///
/// | range                 | contents                                                        |
/// |-----------------------|-----------------------------------------------------------------|
/// | 0x0_0000 – 0x0_04FF   | real-mode IVT and BIOS data area: left alone (zero)             |
/// | 0x0_0500 – 0x0_6FFF   | free for the VMM (a GDT, for instance)                          |
/// | 0x0_7000 – 0x0_7FFF   | the zero page, `struct boot_params` (`zeroPage`)                |
/// | 0x0_8000 – 0x1_FFFF   | free for the VMM (page tables, a boot stack)                    |
/// | 0x2_0000 – 0x9_FBFF   | the kernel command line, NUL-terminated (`commandLine`)         |
/// | 0x9_FC00 – 0xF_FFFF   | EBDA, VGA hole and BIOS area: e820 "reserved" (`legacyHole`)    |
/// | 0x10_0000 –           | the protected-mode kernel (`kernelLoad`), then its `init_size`  |
///
/// The zero page at 0x7000 and the command line at 0x20000 are the addresses Firecracker uses;
/// both lie in the first 640 KiB, which every PC guest has, and away from the real-mode IVT and
/// BDA. The kernel is loaded at 1 MiB, the conventional `code32_start`; a relocatable kernel then
/// decompresses itself at its runtime start (`pref_address`, usually 16 MiB), which
/// `BzImage.kernelMemory(loadedAt:)` accounts for.
///
/// Guest RAM is one region from 0 up to `mmioHoleStart` (3 GiB); whatever is left goes above
/// 4 GiB, so the 32-bit MMIO hole (LAPIC, IOAPIC, KVM's TSS pages, virtio-mmio devices) is never RAM.
public enum LinuxBootLayout {
    /// `struct boot_params`, 4 KiB. boot.rst lets it live anywhere; 0x7000 is Firecracker's choice.
    public static let zeroPage: GuestAddress = 0x7000
    /// The command line (`cmd_line_ptr`): boot.rst asks for it below 0xA0000 for old kernels and
    /// anywhere below 4 GiB from 2.02 on; low memory keeps it clear of the kernel and the initrd.
    public static let commandLine: GuestAddress = 0x2_0000
    /// The most bytes (NUL included) the command line may take: up to the EBDA at 0x9FC00.
    public static let commandLineCapacity = Int(ebdaStart.rawValue - commandLine.rawValue)
    /// Where the protected-mode kernel is copied: 1 MiB, the default `code32_start`.
    public static let kernelLoad: GuestAddress = 0x10_0000
    /// The 64-bit entry point is this far into the loaded kernel (boot.rst, "64-bit Boot Protocol").
    public static let entryOffset64: UInt64 = 0x200
    /// Start of the Extended BIOS Data Area: conventional RAM is 0 ..< 0x9FC00 (639 KiB).
    public static let ebdaStart: GuestAddress = 0x9_FC00
    /// The first address past the legacy hole; RAM resumes here.
    public static let highMemoryStart: GuestAddress = 0x10_0000
    /// EBDA, VGA memory, option ROMs and the BIOS: reported as e820 reserved.
    public static let legacyHole: Range<GuestAddress> = ebdaStart..<highMemoryStart
    /// The 32-bit MMIO hole starts at 3 GiB; RAM beyond this much moves above 4 GiB.
    public static let mmioHoleStart: GuestAddress = 0xC000_0000
    /// The first address above 4 GiB, where RAM that did not fit below the hole continues.
    public static let fourGiB: GuestAddress = 0x1_0000_0000
    /// Initrd placement granularity: boot.rst asks for page alignment.
    public static let pageSize: UInt64 = 0x1000

    /// Segment selectors the kernel's 64-bit entry expects (boot.rst: "__BOOT_CS(0x10) and
    /// __BOOT_DS(0x18)"; CS must be __BOOT_CS and DS, ES, SS __BOOT_DS).
    public static let bootCodeSelector: UInt16 = 0x10
    public static let bootDataSelector: UInt16 = 0x18

    /// The guest RAM regions for `size` bytes of memory, to pass to `GuestMemory(layout:)`:
    /// `0 ..< min(size, 3 GiB)`, and the rest, if any, from 4 GiB up. Give `E820Map(memory:)` the
    /// resulting `GuestMemory` and the e820 map describes exactly these regions.
    ///
    /// `size` should be a multiple of 4 KiB (`GuestMemory` refuses other sizes); a size of zero or
    /// less gives no regions.
    public static func guestMemoryLayout(size: Int) -> [(start: GuestAddress, size: Int)] {
        guard size > 0 else { return [] }
        let lowLimit = Int(mmioHoleStart.rawValue)
        let low = min(size, lowLimit)
        var layout: [(start: GuestAddress, size: Int)] = [(start: GuestAddress(0), size: low)]
        if size > low {
            layout.append((start: fourGiB, size: size - low))
        }
        return layout
    }
}
