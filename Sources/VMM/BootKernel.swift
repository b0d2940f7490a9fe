import KernelDecompression
import LinuxBoot
import VMMCore

/// The kernel `--kernel` named, made ready for the entry it boots through (docs/linux-boot.md):
///
/// - a **bzImage** through `.direct` (the default): its payload is decompressed in the host (or
///   read from `DecompressedKernelCache`), loaded as an ELF kernel at its link address, and
///   entered at `startup_64` in long mode with the bzImage's setup header in the zero page. A
///   payload whose format this build cannot decompress falls back to `.bits64` with a `note`.
/// - a **bzImage** through `.bits64` or `.bits32`: loaded whole; it decompresses itself in the guest.
/// - an **ELF vmlinux** through `.direct` (its 64-bit entry, `e_entry`) or `.pvh`.
/// - either through `.pvh`: the ELF kernel is entered at its `XEN_ELFNOTE_PHYS32_ENTRY` in 32-bit
///   protected mode with EBX = `hvm_start_info`.
public struct BootKernel {
    enum Image {
        case bzImage(BzImage)
        case elf(ELFKernel, header: BzImage?)
    }

    let image: Image
    /// The entry the kernel will be started at (`.bits64` after a fallback).
    public let entry: LinuxBootEntry
    /// One line for the user about how the kernel is booted, when it is not what was asked for
    /// (the fallback to in-guest decompression); nil otherwise.
    public let note: String?
    /// Whether the decompressed kernel came from the cache (nil when nothing was decompressed).
    public let decompressedFromCache: Bool?

    /// The longest command line the kernel takes (`cmdline_size`), NUL excluded.
    public var commandLineSize: UInt32 {
        switch image {
        case .bzImage(let kernel): kernel.commandLineSize
        case .elf(_, let header): header?.commandLineSize ?? DirectLoader.defaultCommandLineSize
        }
    }

    /// Parses `bytes` (read from `name`) for `entry`, decompressing a bzImage's payload when the
    /// entry needs an ELF kernel. Every error is one line that says what is wrong.
    public init(bytes: [UInt8], name: String, entry: LinuxBootEntry, cache: DecompressedKernelCache?) throws(VMMError) {
        if ELFKernel.isELF(bytes) {
            guard entry == .direct || entry == .pvh else {
                throw .configuration(
                    "\(name) is an ELF vmlinux, which has no \(entry.rawValue)-bit bzImage entry: boot it through the direct or the pvh entry")
            }
            let kernel: ELFKernel
            do { kernel = try ELFKernel(bytes: bytes, name: name) } catch { throw .configuration(error.description) }
            try Self.checkPVH(kernel, entry: entry, name: name)
            self.init(image: .elf(kernel, header: nil), entry: entry, note: nil, decompressedFromCache: nil)
            return
        }
        let bzImage: BzImage
        do { bzImage = try BzImage(bytes: bytes, name: name) } catch { throw .configuration(error.description) }
        guard entry == .direct || entry == .pvh else {
            self.init(image: .bzImage(bzImage), entry: entry, note: nil, decompressedFromCache: nil)
            return
        }

        // The payload, decompressed in the host; a format this build cannot read falls back.
        let payload: KernelPayload
        do { payload = try KernelPayload(of: bzImage) } catch {
            // No payload at all (payload_length 0) is a kernel-shaped guest such as the boot probe,
            // made to run through its own entry: it does so, without a note, since every Linux
            // kernel since protocol 2.08 declares its payload. A payload that points outside the
            // image is a corrupt image.
            guard entry == .direct, case .noPayload = error else { throw .configuration(error.description) }
            self.init(image: .bzImage(bzImage), entry: .bits64, note: nil, decompressedFromCache: nil)
            return
        }
        if let reason = Self.undecodable(payload) {
            guard entry == .direct else {
                throw .configuration("\(name) cannot boot through the pvh entry: \(reason); use the 64-bit entry")
            }
            self.init(image: .bzImage(bzImage), entry: .bits64, note: Self.fallbackNote(name, reason), decompressedFromCache: nil)
            return
        }
        let vmlinux: [UInt8]
        let fromCache: Bool
        do {
            if let cache {
                (vmlinux, fromCache) = try cache.decompressedKernel(of: bzImage, payload: payload)
            } else {
                (vmlinux, fromCache) = (try KernelDecompressor.decompress(payload, name: name), false)
            }
        } catch {
            throw .configuration(error.description)
        }
        let kernel: ELFKernel
        do { kernel = try ELFKernel(bytes: vmlinux, name: "\(name)'s decompressed kernel") } catch {
            throw .configuration(error.description)
        }
        try Self.checkPVH(kernel, entry: entry, name: name)
        self.init(image: .elf(kernel, header: bzImage), entry: entry, note: nil, decompressedFromCache: fromCache)
    }

    private init(image: Image, entry: LinuxBootEntry, note: String?, decompressedFromCache: Bool?) {
        self.image = image
        self.entry = entry
        self.note = note
        self.decompressedFromCache = decompressedFromCache
    }

    private static func checkPVH(_ kernel: ELFKernel, entry: LinuxBootEntry, name: String) throws(VMMError) {
        guard entry == .pvh, kernel.pvhEntry == nil else { return }
        throw .configuration(
            "\(name) has no PVH entry (no XEN_ELFNOTE_PHYS32_ENTRY note: the kernel was built without CONFIG_PVH): use the direct entry")
    }

    /// Why this build cannot decompress `payload`, or nil if it can.
    static func undecodable(_ payload: KernelPayload) -> String? {
        guard let format = payload.compression else { return "its payload's format is not recognised" }
        return KernelDecompressor.supportedFormats.contains(format) ? nil : "its \(format) payload cannot be decompressed by this build"
    }

    /// The `note` a boot of the file at `path` through `entry` will have, found from the header and
    /// the payload's magic alone (nothing is decompressed): for a front end that reports it before
    /// the guest starts. Nil when there is none, or when the file does not parse (the boot then
    /// reports that).
    public static func fallbackNote(kernelPath path: String, entry: LinuxBootEntry) -> String? {
        guard entry == .direct, let bytes = try? readHostFile(path), !ELFKernel.isELF(bytes),
            let bzImage = try? BzImage(bytes: bytes, name: path), let payload = try? KernelPayload(of: bzImage),
            let reason = undecodable(payload)
        else { return nil }
        return fallbackNote(path, reason)
    }

    private static func fallbackNote(_ name: String, _ reason: String) -> String {
        "\(name): \(reason); booting it through its own (in-guest) decompressor instead"
    }

    /// Guest memory the VMM keeps for the PVH start info, whichever entry is used.
    public static let reservedForStartInfo = PVHStartInfo.range

    /// Loads the kernel, command line, initrd and zero page (and for `.pvh` the `hvm_start_info`).
    public func load(
        initrd: [UInt8]?, commandLine: KernelCommandLine, memory: GuestMemory, reserved: [Range<GuestAddress>]
    ) throws(LinuxBootError) -> LinuxBootInfo {
        let reserved = reserved + [Self.reservedForStartInfo]
        switch image {
        case .bzImage(let kernel):
            return try LinuxLoader.load(kernel: kernel, initrd: initrd, commandLine: commandLine, memory: memory, reserved: reserved)
        case .elf(let kernel, let header):
            let info = try DirectLoader.load(
                kernel: kernel, setupHeader: header, initrd: initrd, commandLine: commandLine, memory: memory, reserved: reserved)
            if entry == .pvh {
                do { try PVHStartInfo(bootInfo: info).write(to: memory) } catch { throw .guestMemory(error) }
            }
            return info
        }
    }

    /// The first instruction's address: the bzImage's 64-bit entry (load address + 0x200) or its
    /// `code32_start`; the ELF kernel's `e_entry`; or its PVH entry.
    public func entryAddress(_ bootInfo: LinuxBootInfo) -> UInt64 {
        switch (image, entry) {
        case (.elf(let kernel, _), .pvh): kernel.pvhEntry?.rawValue ?? kernel.entry.rawValue
        case (.elf(let kernel, _), _): kernel.entry.rawValue
        case (.bzImage, _): LinuxEntryLayout(entry: entry).entryPoint(bootInfo)
        }
    }

    /// Returns the memory the decompression and parsing left in the allocator's free lists to the
    /// system (glibc keeps large freed blocks for reuse otherwise), so the VMM's own resident
    /// memory does not carry a kernel image it no longer needs. Call once the image is loaded and
    /// the `BootKernel` released.
    public static func releaseFreedMemory() { releaseFreedHeapMemory() }
}
