import VMMCore

/// Loads an uncompressed ELF kernel (a vmlinux, or a bzImage's payload decompressed in the host)
/// for a direct entry: the 64-bit entry at `e_entry` with the zero page in RSI, which is how the
/// bzImage's own decompressor starts the kernel it unpacked (arch/x86/boot/compressed/head_64.S
/// jumps to the kernel's `startup_64` in identity-mapped long mode with RSI = boot_params), or the
/// PVH entry (`PVHStartInfo`).
///
/// The segments go at their link-time physical addresses (`p_paddr`). A relocatable kernel could
/// run elsewhere, but only after its relocations are applied, which the in-guest decompressor
/// does; here it runs where it was linked (`CONFIG_PHYSICAL_START`), so there is no KASLR.
public enum DirectLoader {
    /// The `initrd_addr_max` a vmlinux without a setup header gets: the kernel's own header.S value.
    public static let defaultInitrdAddressMax: UInt32 = 0x7FFF_FFFF
    /// `cmdline_size` for a vmlinux without a setup header: x86's COMMAND_LINE_SIZE is 2048.
    public static let defaultCommandLineSize: UInt32 = 2047

    /// Loads `kernel`'s segments (bss zeroed), the command line, the initrd and the zero page.
    ///
    /// `setupHeader` is the bzImage the kernel came from, if any: its setup header goes into the
    /// zero page as the boot protocol asks, and its `init_size` from the kernel's start is kept
    /// clear as well. Without one (a bare vmlinux) the zero page gets a minimal header: the boot
    /// flag, "HdrS", protocol 2.15, `type_of_loader` 0xFF and LOADED_HIGH.
    ///
    /// Everything is checked before anything is written: each segment must be in RAM and clear of
    /// the zero page, the command line and `reserved` (the VMM's GDT, page tables, PVH start info).
    public static func load(
        kernel: ELFKernel, setupHeader: BzImage?, initrd: [UInt8]?, commandLine: KernelCommandLine, memory: GuestMemory,
        reserved: [Range<GuestAddress>] = []
    ) throws(LinuxBootError) -> LinuxBootInfo {
        let e820 = try E820Map(memory: memory)
        let commandLineSize = setupHeader?.commandLineSize ?? defaultCommandLineSize
        let commandLineLimit = min(Int(commandLineSize), LinuxBootLayout.commandLineCapacity - 1)
        guard commandLine.count <= commandLineLimit else {
            throw .commandLineTooLong(length: commandLine.count, maximum: commandLineLimit)
        }
        let commandLineBytes = commandLine.nulTerminatedBytes
        let commandLineRange = LinuxBootLayout.commandLine..<GuestAddress(LinuxBootLayout.commandLine.rawValue + UInt64(commandLineBytes.count))
        let zeroPageRange = LinuxBootLayout.zeroPage..<GuestAddress(LinuxBootLayout.zeroPage.rawValue + UInt64(BootParams.size))

        // The kernel's memory: its segments, and for a bzImage's payload init_size from its start
        // (the decompressor would have kept that much; the kernel's early code may rely on it).
        var kernelMemory = kernel.memory
        if let setupHeader {
            let (end, overflow) = kernelMemory.lowerBound.rawValue.addingReportingOverflow(UInt64(setupHeader.initSize))
            if !overflow, end > kernelMemory.upperBound.rawValue { kernelMemory = kernelMemory.lowerBound..<GuestAddress(end) }
        }
        for segment in kernel.segments where e820.ramEntry(containing: segment.range) == nil {
            let ramEnd = e820.ramEntry(containing: segment.physicalAddress)?.end ?? segment.physicalAddress
            throw .kernelDoesNotFit(start: segment.physicalAddress, end: segment.range.upperBound, ramEnd: ramEnd)
        }
        if e820.ramEntry(containing: kernelMemory) == nil {
            let ramEnd = e820.ramEntry(containing: kernelMemory.lowerBound)?.end ?? kernelMemory.lowerBound
            throw .kernelDoesNotFit(start: kernelMemory.lowerBound, end: kernelMemory.upperBound, ramEnd: ramEnd)
        }

        let fixed: [(name: String, range: Range<GuestAddress>)] =
            [("zero page", zeroPageRange), ("kernel command line", commandLineRange)]
            + reserved.filter { !$0.isEmpty }.map { (name: "range the VMM reserved", range: $0) }
        for item in fixed.prefix(2) where e820.ramEntry(containing: item.range) == nil {
            throw .notInGuestRAM(what: item.name, start: item.range.lowerBound, end: item.range.upperBound)
        }
        for (index, segment) in kernel.segments.enumerated() {
            for item in fixed where segment.range.overlaps(item.range) {
                throw .overlap(
                    first: "kernel segment \(index) (\(segment.range.lowerBound)..<\(segment.range.upperBound))",
                    second: "\(item.name) (\(item.range.lowerBound)..<\(item.range.upperBound))")
            }
        }

        var initrdPlacement: InitrdPlacement?
        if let initrd {
            guard !initrd.isEmpty else { throw .initrdEmpty }
            let ceiling = setupHeader?.initrdAddressMax ?? defaultInitrdAddressMax
            let address = try LinuxLoader.placeInitrd(
                size: initrd.count, ceiling: ceiling, above: kernelMemory.upperBound, e820: e820,
                avoiding: fixed.map(\.range) + [kernelMemory])
            initrdPlacement = InitrdPlacement(address: address, size: initrd.count)
        }

        var bootParams: BootParams
        if let setupHeader {
            bootParams = BootParams(kernel: setupHeader)
        } else {
            bootParams = BootParams.minimal(commandLineSize: commandLineSize)
        }
        bootParams.setCommandLine(at: commandLineRange.lowerBound)
        if let initrdPlacement { bootParams.setInitrd(at: initrdPlacement.address, size: UInt64(initrdPlacement.size)) }
        bootParams.setE820(e820)

        do throws(GuestMemoryError) {
            try write(kernel, to: memory)
            try memory.write(commandLineBytes, at: commandLineRange.lowerBound)
            if let initrd, let initrdPlacement { try memory.write(initrd, at: initrdPlacement.address) }
            try bootParams.write(to: memory, at: zeroPageRange.lowerBound)
        } catch {
            throw .guestMemory(error)
        }
        return LinuxBootInfo(
            zeroPage: zeroPageRange.lowerBound, entryPoint: kernel.entry, kernelLoadAddress: kernel.memory.lowerBound,
            kernelMemory: kernelMemory, commandLine: commandLineRange, initrd: initrdPlacement, e820: e820,
            bootParams: bootParams)
    }

    /// Copies each segment's file bytes to its physical address and zeroes the rest (the bss).
    /// The ranges were checked against guest RAM by the caller; `GuestMemory` checks them again.
    static func write(_ kernel: ELFKernel, to memory: GuestMemory) throws(GuestMemoryError) {
        for segment in kernel.segments {
            var failure: GuestMemoryError?
            kernel.bytes.withUnsafeBytes { file in
                let bytes = UnsafeRawBufferPointer(rebasing: file[segment.fileOffset..<segment.fileOffset + segment.fileSize])
                do throws(GuestMemoryError) { try memory.write(bytes, at: segment.physicalAddress) } catch { failure = error }
            }
            if let failure { throw failure }
            let bss = segment.memorySize - UInt64(segment.fileSize)
            if bss > 0, let start = segment.physicalAddress.adding(UInt64(segment.fileSize)) {
                guard bss <= UInt64(Int.max) else { throw .outOfBounds(address: start, length: Int.max) }
                try memory.fill(0, count: Int(bss), at: start)
            }
        }
    }
}

extension BootParams {
    /// The zero page for a kernel that came without a setup header (a bare vmlinux): the fields a
    /// boot loader's header would hold that the kernel proper reads (boot.rst): `boot_flag`,
    /// `header` "HdrS", `version` 2.15, `type_of_loader` 0xFF (undefined), `loadflags` LOADED_HIGH,
    /// `vid_mode` normal, `kernel_alignment` 2 MiB, `initrd_addr_max` and `cmdline_size`.
    public static func minimal(commandLineSize: UInt32) -> BootParams {
        var params = BootParams()
        params.set(UInt16(0xAA55), at: Offset.bootFlag)
        params.set(UInt32(BzImage.headerMagic), at: Offset.header)
        params.set(UInt16(0x020F), at: Offset.version)
        params.set(undefinedLoaderType, at: Offset.typeOfLoader)
        params.set(LoadFlags.loadedHigh.rawValue, at: Offset.loadflags)
        params.set(normalVideoMode, at: Offset.vidMode)
        params.set(UInt32(0x20_0000), at: Offset.kernelAlignment)
        params.set(DirectLoader.defaultInitrdAddressMax, at: Offset.initrdAddrMax)
        params.set(commandLineSize, at: Offset.cmdlineSize)
        return params
    }
}
