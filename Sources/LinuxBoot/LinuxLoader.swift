import VMMCore

/// Where the initrd went.
public struct InitrdPlacement: Equatable, Sendable {
    /// Page-aligned guest address of the first byte.
    public let address: GuestAddress
    /// Its size in bytes.
    public let size: Int
    public var range: Range<GuestAddress> { address..<GuestAddress(address.rawValue + UInt64(size)) }

    public init(address: GuestAddress, size: Int) {
        self.address = address
        self.size = size
    }
}

/// What the VMM needs to start the kernel through its 64-bit entry (boot.rst, "64-bit Boot
/// Protocol"): long mode with paging, identity mapping that covers `kernelMemory`, the zero page and
/// the command line; CS = `LinuxBootLayout.bootCodeSelector` (0x10) and DS/ES/SS =
/// `bootDataSelector` (0x18), flat 64-bit segments; interrupts off; RSI = `zeroPage`;
/// RIP = `entryPoint`.
public struct LinuxBootInfo: Sendable {
    /// The zero page (`struct boot_params`): RSI at entry.
    public let zeroPage: GuestAddress
    /// The 64-bit entry point, load address + 0x200: RIP at entry.
    public let entryPoint: GuestAddress
    /// Where the protected-mode kernel was copied.
    public let kernelLoadAddress: GuestAddress
    /// The memory the kernel occupies before it reads the e820 map: the loaded image and
    /// `init_size` bytes at its runtime start (`BzImage.kernelMemory(loadedAt:)`).
    public let kernelMemory: Range<GuestAddress>
    /// The NUL-terminated command line (`cmd_line_ptr`).
    public let commandLine: Range<GuestAddress>
    /// The initrd, if one was given.
    public let initrd: InitrdPlacement?
    /// The memory map written to the zero page.
    public let e820: E820Map
    /// The zero page as written.
    public let bootParams: BootParams
}

/// Loads a bzImage, its command line and an initrd into guest memory and writes the zero page
/// (Documentation/arch/x86/boot.rst). Pure: it touches nothing but `GuestMemory`.
public enum LinuxLoader {
    /// Loads `kernel` into `memory` for the 64-bit boot protocol:
    ///
    /// - the protected-mode kernel at 1 MiB (`LinuxBootLayout.kernelLoad`), after checking that it
    ///   and its `init_size` region at the runtime start are in RAM;
    /// - the command line at `LinuxBootLayout.commandLine`, NUL-terminated, no longer than the
    ///   kernel's `cmdline_size`;
    /// - the initrd as high as it goes: page-aligned, in RAM, ending at or below both
    ///   `initrd_addr_max + 1` and the top of RAM, above the kernel's memory and clear of `reserved`;
    /// - the zero page at `LinuxBootLayout.zeroPage`: the image's setup header plus the loader's
    ///   fields and an e820 map made from `memory`'s own regions.
    ///
    /// Everything is checked before anything is written. `reserved` names guest ranges the VMM
    /// keeps for itself (its GDT, page tables, ...): the loader places nothing there, and throws if a
    /// fixed structure would land on one.
    public static func load(
        kernel: BzImage, initrd: [UInt8]?, commandLine: KernelCommandLine, memory: GuestMemory,
        reserved: [Range<GuestAddress>] = []
    ) throws(LinuxBootError) -> LinuxBootInfo {
        let e820 = try E820Map(memory: memory)

        // The command line: the kernel's limit, then the room at its fixed address.
        let commandLineLimit = min(Int(kernel.commandLineSize), LinuxBootLayout.commandLineCapacity - 1)
        guard commandLine.count <= commandLineLimit else {
            throw .commandLineTooLong(length: commandLine.count, maximum: commandLineLimit)
        }
        let commandLineBytes = commandLine.nulTerminatedBytes
        let commandLineRange = LinuxBootLayout.commandLine..<GuestAddress(LinuxBootLayout.commandLine.rawValue + UInt64(commandLineBytes.count))
        let zeroPageRange = LinuxBootLayout.zeroPage..<GuestAddress(LinuxBootLayout.zeroPage.rawValue + UInt64(BootParams.size))

        // The kernel: the loaded image and its init_size region must be RAM.
        let loadAddress = LinuxBootLayout.kernelLoad
        guard let kernelMemory = kernel.kernelMemory(loadedAt: loadAddress),
            e820.ramEntry(containing: kernelMemory) != nil
        else {
            let end = kernel.kernelMemory(loadedAt: loadAddress)?.upperBound ?? GuestAddress(UInt64.max)
            let ramEnd = e820.ramEntry(containing: loadAddress)?.end ?? loadAddress
            throw .kernelDoesNotFit(start: loadAddress, end: end, ramEnd: ramEnd)
        }

        // The fixed structures: in RAM, apart from one another and from what the VMM reserved.
        let placed: [(name: String, range: Range<GuestAddress>)] = [
            ("zero page", zeroPageRange), ("kernel command line", commandLineRange), ("kernel", kernelMemory),
        ]
        for item in placed where e820.ramEntry(containing: item.range) == nil {
            throw .notInGuestRAM(what: item.name, start: item.range.lowerBound, end: item.range.upperBound)
        }
        let reservedNamed = reserved.filter { !$0.isEmpty }.map { (name: "range the VMM reserved", range: $0) }
        for (index, item) in placed.enumerated() {
            for other in placed[(index + 1)...] + reservedNamed where item.range.overlaps(other.range) {
                throw .overlap(first: describe(item), second: describe(other))
            }
        }

        // The initrd.
        var initrdPlacement: InitrdPlacement?
        if let initrd {
            guard !initrd.isEmpty else { throw .initrdEmpty }
            let address = try placeInitrd(
                size: initrd.count, kernel: kernel, above: kernelMemory.upperBound, e820: e820,
                avoiding: placed.map(\.range) + reserved)
            initrdPlacement = InitrdPlacement(address: address, size: initrd.count)
        }

        var bootParams = BootParams(kernel: kernel)
        bootParams.setCommandLine(at: commandLineRange.lowerBound)
        if let initrdPlacement {
            bootParams.setInitrd(at: initrdPlacement.address, size: UInt64(initrdPlacement.size))
        }
        bootParams.setE820(e820)

        do throws(GuestMemoryError) {
            var imageError: GuestMemoryError?
            kernel.protectedModeKernel.withUnsafeBytes { image in
                do throws(GuestMemoryError) { try memory.write(image, at: loadAddress) } catch { imageError = error }
            }
            if let imageError { throw imageError }
            try memory.write(commandLineBytes, at: commandLineRange.lowerBound)
            if let initrd, let initrdPlacement {
                try memory.write(initrd, at: initrdPlacement.address)
            }
            try bootParams.write(to: memory, at: zeroPageRange.lowerBound)
        } catch {
            throw .guestMemory(error)
        }

        return LinuxBootInfo(
            zeroPage: zeroPageRange.lowerBound,
            entryPoint: GuestAddress(loadAddress.rawValue + LinuxBootLayout.entryOffset64),
            kernelLoadAddress: loadAddress,
            kernelMemory: kernelMemory,
            commandLine: commandLineRange,
            initrd: initrdPlacement,
            e820: e820,
            bootParams: bootParams)
    }

    /// The highest page-aligned address for `size` bytes of initrd: inside one RAM entry of `e820`,
    /// at or above `floor` (the kernel's end), ending at or below `initrd_addr_max + 1`, and
    /// overlapping none of `avoiding`.
    public static func placeInitrd(
        size: Int, kernel: BzImage, above floor: GuestAddress, e820: E820Map, avoiding: [Range<GuestAddress>] = []
    ) throws(LinuxBootError) -> GuestAddress {
        try placeInitrd(size: size, ceiling: kernel.initrdAddressMax, above: floor, e820: e820, avoiding: avoiding)
    }

    /// The same, for a kernel whose `initrd_addr_max` is `initrdAddressMax`.
    public static func placeInitrd(
        size: Int, ceiling initrdAddressMax: UInt32, above floor: GuestAddress, e820: E820Map, avoiding: [Range<GuestAddress>] = []
    ) throws(LinuxBootError) -> GuestAddress {
        let ceiling = UInt64(initrdAddressMax) + 1  // initrd_addr_max is the last usable byte
        let length = UInt64(max(size, 0))
        let pageMask = LinuxBootLayout.pageSize - 1
        for entry in e820.ramEntries.reversed() {
            let low = max(entry.address.rawValue, floor.rawValue)
            var high = min(entry.end.rawValue, ceiling)
            while high > low, high - low >= length {
                let start = (high - length) & ~pageMask
                guard start >= low else { break }
                let candidate = GuestAddress(start)..<GuestAddress(start + length)
                if let blocking = avoiding.first(where: { !$0.isEmpty && $0.overlaps(candidate) }) {
                    high = blocking.lowerBound.rawValue  // below the start + length it overlaps: progress
                    continue
                }
                return GuestAddress(start)
            }
        }
        let top = e820.ramEntries.map { min($0.end.rawValue, ceiling) }.max() ?? 0
        throw .initrdDoesNotFit(size: size, ceiling: GuestAddress(top), kernelEnd: floor)
    }

    private static func describe(_ item: (name: String, range: Range<GuestAddress>)) -> String {
        "\(item.name) (\(item.range.lowerBound)..<\(item.range.upperBound))"
    }
}
