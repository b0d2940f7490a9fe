import VMMCore

/// A parsed and validated x86-64 ELF kernel: an uncompressed `vmlinux`, or what a bzImage's
/// payload decompresses to (System V ABI, "ELF-64 Object File Format"; the x86-64 psABI).
///
/// Every field the loader uses is checked here with checked arithmetic: the program headers lie
/// inside the file, each `PT_LOAD` segment's file bytes lie inside the file, `p_filesz <= p_memsz`,
/// `p_paddr + p_memsz` does not wrap, and no two segments overlap in physical memory. Where the
/// segments go in a particular guest is checked when they are loaded (`DirectLoader`).
public struct ELFKernel: Sendable {
    /// One `PT_LOAD` segment: `fileSize` bytes from `fileOffset` go to `physicalAddress`, and the
    /// rest of `memorySize` (the bss) is zero.
    public struct Segment: Equatable, Sendable {
        public let physicalAddress: GuestAddress
        public let fileOffset: Int
        public let fileSize: Int
        public let memorySize: UInt64
        /// Guest-physical memory the segment occupies.
        public var range: Range<GuestAddress> { physicalAddress..<GuestAddress(physicalAddress.rawValue + memorySize) }
    }

    /// `\x7FELF`.
    public static let magic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]
    /// ELFCLASS64, ELFDATA2LSB, EV_CURRENT.
    static let class64: UInt8 = 2
    static let littleEndian: UInt8 = 1
    static let headerSize = 64
    static let programHeaderSize = 56
    static let typeExecutable: UInt16 = 2  // ET_EXEC
    static let machineX86_64: UInt16 = 62  // EM_X86_64
    static let loadSegment: UInt32 = 1  // PT_LOAD
    static let noteSegment: UInt32 = 4  // PT_NOTE
    /// More program headers than any kernel has (vmlinux has five): a bound on the work.
    public static let maximumProgramHeaders = 128
    /// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h): the 32-bit physical address of
    /// the PVH entry point, in a note named "Xen".
    public static let pvhEntryNoteType: UInt32 = 18

    /// What the kernel is called in error messages.
    public let name: String
    /// The whole file.
    public let bytes: [UInt8]
    /// `e_entry`. For vmlinux the linker script sets it to `phys_startup_64`, the physical address
    /// of the 64-bit entry (arch/x86/kernel/vmlinux.lds.S: `ENTRY(phys_startup_64)`).
    public let entry: GuestAddress
    /// The `PT_LOAD` segments with a non-zero size, in program-header order.
    public let segments: [Segment]
    /// The PVH entry from the `XEN_ELFNOTE_PHYS32_ENTRY` note, if the kernel has one (CONFIG_PVH).
    public let pvhEntry: GuestAddress?

    /// Whether `bytes` starts like an ELF file (the magic only).
    public static func isELF(_ bytes: [UInt8]) -> Bool { bytes.starts(with: magic) }

    /// Guest-physical memory from the lowest segment's start to the highest segment's end.
    public var memory: Range<GuestAddress> {
        let low = segments.map(\.physicalAddress.rawValue).min() ?? 0
        let high = segments.map(\.range.upperBound.rawValue).max() ?? 0
        return GuestAddress(low)..<GuestAddress(high)
    }

    /// Parses and validates `bytes` as an x86-64 ELF executable. `name` appears in errors.
    public init(bytes: [UInt8], name: String = "the kernel") throws(ELFKernelError) {
        self.name = name
        self.bytes = bytes
        guard Self.isELF(bytes) else { throw .notELF(name: name) }
        guard bytes.count >= Self.headerSize else {
            throw .truncated(name: name, size: bytes.count, needed: Self.headerSize, what: "the ELF header")
        }
        func field<T: FixedWidthInteger>(_ type: T.Type, _ offset: Int) -> T { bytes.littleEndian(T.self, at: offset) ?? 0 }
        guard bytes[4] == Self.class64, bytes[5] == Self.littleEndian else {
            throw .unsupported(name: name, reason: "it is not a 64-bit little-endian ELF file (class \(bytes[4]), data \(bytes[5]))")
        }
        let machine = field(UInt16.self, 18)
        guard machine == Self.machineX86_64 else {
            throw .unsupported(name: name, reason: "its e_machine is \(machine), not x86-64 (62)")
        }
        let type = field(UInt16.self, 16)
        guard type == Self.typeExecutable else {
            throw .unsupported(name: name, reason: "its e_type is \(type), not an executable (2)")
        }
        entry = GuestAddress(field(UInt64.self, 24))
        let programHeaderOffset = field(UInt64.self, 32)
        let entrySize = Int(field(UInt16.self, 54))
        let count = Int(field(UInt16.self, 56))
        guard entrySize == Self.programHeaderSize else {
            throw .invalidField(name: name, field: "e_phentsize", value: UInt64(entrySize), requirement: "ELF64 program headers are 56 bytes")
        }
        guard count > 0, count <= Self.maximumProgramHeaders else {
            throw .invalidField(
                name: name, field: "e_phnum", value: UInt64(count), requirement: "a kernel has 1 to \(Self.maximumProgramHeaders) program headers")
        }
        // count * 56 is at most 7168: only the offset can overflow.
        let (tableEnd, overflow) = programHeaderOffset.addingReportingOverflow(UInt64(count * entrySize))
        guard !overflow, tableEnd <= UInt64(bytes.count) else {
            throw .truncated(
                name: name, size: bytes.count, needed: overflow ? Int.max : Int(clamping: tableEnd),
                what: "its \(count) program headers at e_phoff \(hex(programHeaderOffset))")
        }

        var segments: [Segment] = []
        var pvhEntry: GuestAddress?
        for index in 0..<count {
            let header = Int(programHeaderOffset) + index * entrySize
            let segmentType = field(UInt32.self, header)
            let offset = field(UInt64.self, header + 8)
            let physical = field(UInt64.self, header + 24)
            let fileSize = field(UInt64.self, header + 32)
            let memorySize = field(UInt64.self, header + 40)
            guard segmentType == Self.loadSegment || segmentType == Self.noteSegment else { continue }
            let (fileEnd, fileOverflow) = offset.addingReportingOverflow(fileSize)
            guard !fileOverflow, fileEnd <= UInt64(bytes.count) else {
                throw .truncated(
                    name: name, size: bytes.count, needed: fileOverflow ? Int.max : Int(clamping: fileEnd),
                    what: "segment \(index) (p_offset \(hex(offset)), p_filesz \(hex(fileSize)))")
            }
            if segmentType == Self.noteSegment {
                if let found = try Self.pvhEntry(in: bytes[Int(offset)..<Int(fileEnd)], name: name) { pvhEntry = found }
                continue
            }
            guard fileSize <= memorySize else {
                throw .invalidField(
                    name: name, field: "segment \(index) p_filesz", value: fileSize,
                    requirement: "it must not exceed p_memsz (\(hex(memorySize)))")
            }
            let (_, memoryOverflow) = physical.addingReportingOverflow(memorySize)
            guard !memoryOverflow else {
                throw .segmentOverflows(name: name, index: index, address: physical, size: memorySize)
            }
            guard memorySize > 0 else { continue }
            segments.append(
                Segment(physicalAddress: GuestAddress(physical), fileOffset: Int(offset), fileSize: Int(fileSize), memorySize: memorySize))
        }
        guard !segments.isEmpty else { throw .noLoadableSegments(name: name) }
        for (index, segment) in segments.enumerated() {
            for other in segments[(index + 1)...] where segment.range.overlaps(other.range) {
                throw .segmentsOverlap(name: name, first: segment.range, second: other.range)
            }
        }
        self.segments = segments
        self.pvhEntry = pvhEntry
    }

    /// The PVH entry in a PT_NOTE segment's notes: each is namesz, descsz, type (32-bit words),
    /// then the name and the descriptor, each padded to 4 bytes (ELF64 notes in Linux use 4-byte
    /// alignment). Linux writes the entry as a pointer-sized value (`_ASM_PTR`, 8 bytes on x86-64);
    /// a 4-byte descriptor is accepted too. A note that runs past its segment is an error.
    static func pvhEntry(in notes: ArraySlice<UInt8>, name: String) throws(ELFKernelError) -> GuestAddress? {
        let bytes = Array(notes)
        var position = 0
        var found: GuestAddress?
        while bytes.count - position >= 12 {
            let nameSize = Int(bytes.littleEndian(UInt32.self, at: position) ?? 0)
            let descriptorSize = Int(bytes.littleEndian(UInt32.self, at: position + 4) ?? 0)
            let type = bytes.littleEndian(UInt32.self, at: position + 8) ?? 0
            let nameStart = position + 12
            // Each size is below 2^32, so these sums cannot overflow a 64-bit Int.
            let descriptorStart = nameStart + (nameSize + 3) & ~3
            let next = descriptorStart + (descriptorSize + 3) & ~3
            guard descriptorStart + descriptorSize <= bytes.count else {
                throw .truncated(name: name, size: bytes.count, needed: descriptorStart + descriptorSize, what: "a note in its PT_NOTE segment")
            }
            let noteName = bytes[nameStart..<nameStart + nameSize]
            if type == pvhEntryNoteType, Array(noteName) == Array("Xen\0".utf8) {
                let value: UInt64? =
                    switch descriptorSize {
                    case 4: bytes.littleEndian(UInt32.self, at: descriptorStart).map(UInt64.init)
                    case 8: bytes.littleEndian(UInt64.self, at: descriptorStart)
                    default: nil
                    }
                guard let value, value < 1 << 32 else {
                    throw .invalidField(
                        name: name, field: "the XEN_ELFNOTE_PHYS32_ENTRY note", value: value ?? UInt64(descriptorSize),
                        requirement: "it must hold a 4- or 8-byte address below 4 GiB")
                }
                found = GuestAddress(value)
            }
            position = min(next, bytes.count)
        }
        return found
    }
}

/// Why an ELF kernel could not be parsed. Each description is one line.
public enum ELFKernelError: Error, Equatable, Sendable, CustomStringConvertible {
    case notELF(name: String)
    case unsupported(name: String, reason: String)
    case truncated(name: String, size: Int, needed: Int, what: String)
    case invalidField(name: String, field: String, value: UInt64, requirement: String)
    /// `p_paddr + p_memsz` passes the end of the 64-bit address space.
    case segmentOverflows(name: String, index: Int, address: UInt64, size: UInt64)
    case noLoadableSegments(name: String)
    case segmentsOverlap(name: String, first: Range<GuestAddress>, second: Range<GuestAddress>)

    public var description: String {
        switch self {
        case .notELF(let name):
            "\(name) is not an ELF file (no \\x7FELF magic): pass a vmlinux or a bzImage"
        case .unsupported(let name, let reason):
            "\(name) cannot be booted: \(reason); pass an x86-64 vmlinux or bzImage"
        case .truncated(let name, let size, let needed, let what):
            "\(name) is truncated: it is \(size) bytes but \(what) needs \(needed == Int.max ? "more than the address space" : "\(needed)"); copy or rebuild the kernel"
        case .invalidField(let name, let field, let value, let requirement):
            "\(name) has \(field) = \(hex(value)), but \(requirement): the file is corrupt; copy or rebuild it"
        case .segmentOverflows(let name, let index, let address, let size):
            "\(name) has segment \(index) at \(hex(address)) with p_memsz \(hex(size)), which passes the end of the address space: the file is corrupt; copy or rebuild it"
        case .noLoadableSegments(let name):
            "\(name) has no PT_LOAD segment to load: pass a vmlinux, not an object file or a stripped stub"
        case .segmentsOverlap(let name, let first, let second):
            "\(name) has segments that overlap (\(first.lowerBound)..<\(first.upperBound) and \(second.lowerBound)..<\(second.upperBound)): the file is corrupt; copy or rebuild it"
        }
    }
}
