import VMMCore

/// Why a kernel could not be parsed or loaded. Each description is one line that says what is
/// wrong and what to do about it.
public enum LinuxBootError: Error, Equatable, Sendable, CustomStringConvertible {
    // MARK: The bzImage

    /// No `HdrS` signature at 0x202: not a Linux x86 boot image at all.
    case notBzImage(name: String)
    /// The boot sector signature at 0x1FE is not 0xAA55.
    case missingBootFlag(name: String, found: UInt16)
    /// The file is shorter than what its header declares (`needed` bytes for `what`).
    case truncated(name: String, size: Int, needed: Int, what: String)
    /// The boot protocol version is older than this loader needs.
    case protocolTooOld(name: String, version: BootProtocolVersion, minimum: BootProtocolVersion)
    /// The kernel has no 64-bit entry point (`XLF_KERNEL_64` unset, or a protocol before 2.12).
    case notSixtyFourBit(name: String, version: BootProtocolVersion)
    /// `LOADED_HIGH` is not set: a zImage, which loads at 0x10000 and cannot be booted here.
    case notLoadableHigh(name: String)
    /// A header field holds a value the protocol does not allow.
    case invalidHeaderField(name: String, field: String, value: UInt64, requirement: String)

    // MARK: The command line

    /// A command-line fragment contains a NUL byte, which would end the command line early.
    case commandLineContainsNUL(fragment: String)
    /// The command line would be `length` bytes; the kernel accepts at most `maximum` (NUL excluded).
    case commandLineTooLong(length: Int, maximum: Int)
    /// A `key=value` key is empty or contains whitespace, `=` or `"`.
    case commandLineInvalidKey(key: String)
    /// A `key=value` value contains `"`, which the kernel's parser cannot quote.
    case commandLineInvalidValue(key: String, value: String)

    // MARK: Memory

    /// The kernel (loaded image plus `init_size` at its runtime address) is not inside guest RAM.
    case kernelDoesNotFit(start: GuestAddress, end: GuestAddress, ramEnd: GuestAddress)
    /// No page-aligned place for the initrd in RAM above the kernel and below `ceiling`.
    case initrdDoesNotFit(size: Int, ceiling: GuestAddress, kernelEnd: GuestAddress)
    /// The initrd is empty.
    case initrdEmpty
    /// A structure the loader writes at a fixed address is not in guest RAM.
    case notInGuestRAM(what: String, start: GuestAddress, end: GuestAddress)
    /// Two things the loader places would overlap (or one overlaps a range the VMM reserved).
    case overlap(first: String, second: String)
    /// More e820 entries than the zero page holds (E820_MAX_ENTRIES_ZEROPAGE).
    case tooManyE820Entries(count: Int)
    /// An e820 entry is empty, passes the end of the address space, or overlaps another.
    case invalidE820Entry(String)
    /// A guest memory access failed (a bug: the loader checks ranges before writing).
    case guestMemory(GuestMemoryError)

    public var description: String {
        switch self {
        case .notBzImage(let name):
            "\(name) is not a Linux bzImage (no HdrS signature): pass the kernel's arch/x86/boot/bzImage or /boot/vmlinuz-*"
        case .missingBootFlag(let name, let found):
            "\(name) has boot flag \(hex(found)) at 0x1FE instead of 0xAA55: it is not a bzImage or is corrupt; pass the kernel's arch/x86/boot/bzImage or /boot/vmlinuz-*"
        case .truncated(let name, let size, let needed, let what):
            "\(name) is truncated: it is \(size) bytes but \(what) needs \(needed); copy or rebuild the kernel image"
        case .protocolTooOld(let name, let version, let minimum):
            "\(name) uses boot protocol \(version), older than the \(minimum) this loader needs: use an x86_64 Linux 3.8 or newer bzImage"
        case .notSixtyFourBit(let name, let version) where version < .v2_12:
            "\(name) uses boot protocol \(version), which has no 64-bit entry point (XLF_KERNEL_64 needs 2.12): use an x86_64 Linux 3.8 or newer bzImage"
        case .notSixtyFourBit(let name, let version):
            "\(name) (boot protocol \(version)) has no 64-bit entry point (XLF_KERNEL_64 not set): use an x86_64 kernel (CONFIG_X86_64=y)"
        case .notLoadableHigh(let name):
            "\(name) is a zImage, not a bzImage (LOADED_HIGH not set in loadflags): rebuild with `make bzImage`"
        case .invalidHeaderField(let name, let field, let value, let requirement):
            "\(name) has \(field) = \(hex(value)), but \(requirement): the image is corrupt; copy or rebuild it"
        case .commandLineContainsNUL(let fragment):
            "kernel command line fragment \(quoted(fragment)) contains a NUL byte, which would end the command line there: remove it"
        case .commandLineTooLong(let length, let maximum):
            "kernel command line of \(length) bytes is longer than the kernel's limit of \(maximum) (cmdline_size): shorten it"
        case .commandLineInvalidKey(let key):
            "kernel command line key \(quoted(key)) is empty or contains a space, '=' or '\"': use a parameter name such as console"
        case .commandLineInvalidValue(let key, let value):
            "kernel command line value \(quoted(value)) for \(key) contains '\"', which the kernel cannot parse: remove it"
        case .kernelDoesNotFit(let start, let end, let ramEnd):
            "the kernel needs guest RAM from \(start) to \(end) (its image and init_size; at least \(formatSize(end.rawValue)) of memory) but RAM there ends at \(ramEnd): give the VM more memory (--memory)"
        case .initrdDoesNotFit(let size, let ceiling, let kernelEnd):
            "initrd of \(formatSize(UInt64(size))) does not fit below \(ceiling) above the kernel (which ends at \(kernelEnd)): give the VM more memory (--memory)"
        case .initrdEmpty:
            "the initrd is empty: pass a cpio archive, or no initrd"
        case .notInGuestRAM(let what, let start, let end):
            "the \(what) at \(start)..<\(end) is not in guest RAM: lay out guest memory with LinuxBootLayout.guestMemoryLayout(size:)"
        case .overlap(let first, let second):
            "the \(first) overlaps the \(second): move one of them"
        case .tooManyE820Entries(let count):
            "the e820 map has \(count) entries but the zero page holds at most \(E820Map.maximumEntries): use fewer guest memory regions"
        case .invalidE820Entry(let reason):
            "invalid e820 map: \(reason)"
        case .guestMemory(let error):
            "loading the kernel failed: \(error)"
        }
    }
}

/// `0x1A2B`.
func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16, uppercase: true) }

/// A fragment the user gave, quoted with NUL and other control bytes made visible.
func quoted(_ text: String) -> String {
    var result = "\""
    for scalar in text.unicodeScalars {
        if scalar.value < 0x20 || scalar.value == 0x7F {
            result += "\\x" + String(scalar.value, radix: 16, uppercase: true)
        } else {
            result.unicodeScalars.append(scalar)
        }
    }
    return result + "\""
}

/// A byte count for people: "64 MiB", "51.5 MiB", "12 KiB", "100 bytes" (one decimal, rounded up).
func formatSize(_ bytes: UInt64) -> String {
    func scaled(_ unit: UInt64, _ name: String) -> String {
        let tenths = bytes / unit * 10 + (bytes % unit * 10 + unit - 1) / unit
        return tenths % 10 == 0 ? "\(tenths / 10) \(name)" : "\(tenths / 10).\(tenths % 10) \(name)"
    }
    if bytes >= 1 << 30 { return scaled(1 << 30, "GiB") }
    if bytes >= 1 << 20 { return scaled(1 << 20, "MiB") }
    if bytes >= 1 << 10 { return scaled(1 << 10, "KiB") }
    return "\(bytes) bytes"
}
