import LinuxBoot
import Testing
import VMMCore

/// A synthetic x86-64 ELF executable: a header, program headers, segment bytes and an optional
/// PT_NOTE with notes. Offsets are literals from the ELF-64 specification, not the library's.
struct FakeELF {
    struct Segment {
        var type: UInt32 = 1  // PT_LOAD
        var physical: UInt64
        var fileSize: UInt64
        var memorySize: UInt64
        /// Overrides the file offset the builder picks.
        var offset: UInt64?
        var seed: UInt8 = 3
    }
    var segments: [Segment] = [
        Segment(physical: 0x100_0000, fileSize: 0x3000, memorySize: 0x3000, seed: 1),
        Segment(physical: 0x100_4000, fileSize: 0x1000, memorySize: 0x5000, seed: 2),  // with 16 KiB of bss
    ]
    var entry: UInt64 = 0x100_0000
    var machine: UInt16 = 62
    var elfClass: UInt8 = 2
    var type: UInt16 = 2
    var programHeaderSize: UInt16 = 56
    var programHeaderOffset: UInt64 = 64
    /// Notes for one PT_NOTE segment: (name with its NUL, type, descriptor).
    var notes: [(name: [UInt8], type: UInt32, descriptor: [UInt8])] = [
        (Array("Linux\0".utf8), 6, [1, 2, 3, 4]),
        (Array("Xen\0".utf8), 18, [0x40, 0x12, 0x00, 0x01, 0, 0, 0, 0]),  // PVH entry 0x1001240, 8 bytes
    ]
    var truncateTo: Int?

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

    var noteBytes: [UInt8] {
        notes.flatMap { note -> [UInt8] in
            func pad(_ bytes: [UInt8]) -> [UInt8] { bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4) }
            return Self.le(UInt32(note.name.count)) + Self.le(UInt32(note.descriptor.count)) + Self.le(note.type)
                + pad(note.name) + pad(note.descriptor)
        }
    }

    var bytes: [UInt8] {
        let headers = segments.count + (notes.isEmpty ? 0 : 1)
        var data: [UInt8] = []
        // A far-away e_phoff is written as given, but the table is still laid out after the header.
        let tableOffset = programHeaderOffset > 0x800 ? 64 : Int(programHeaderOffset)
        var dataStart = tableOffset + headers * 56
        dataStart = (dataStart + 0xFFF) & ~0xFFF
        var table: [UInt8] = []
        for segment in segments {
            let offset = segment.offset ?? UInt64(dataStart + data.count)
            table += Self.le(segment.type) + Self.le(UInt32(5)) + Self.le(offset) + Self.le(segment.physical | 0xFFFF_FFFF_0000_0000)
                + Self.le(segment.physical) + Self.le(segment.fileSize) + Self.le(segment.memorySize) + Self.le(UInt64(0x1000))
            if segment.offset == nil { data += patterned(count: Int(min(segment.fileSize, 1 << 20)), seed: segment.seed) }
        }
        if !notes.isEmpty {
            let notesData = noteBytes
            table += Self.le(UInt32(4)) + Self.le(UInt32(4)) + Self.le(UInt64(dataStart + data.count)) + Self.le(UInt64(0))
                + Self.le(UInt64(0)) + Self.le(UInt64(notesData.count)) + Self.le(UInt64(0)) + Self.le(UInt64(4))
            data += notesData
        }
        var header: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, elfClass, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        header += Self.le(type) + Self.le(machine) + Self.le(UInt32(1)) + Self.le(entry) + Self.le(programHeaderOffset)
        header += Self.le(UInt64(0)) + Self.le(UInt32(0)) + Self.le(UInt16(64)) + Self.le(programHeaderSize)
        header += Self.le(UInt16(headers)) + Self.le(UInt16(64)) + Self.le(UInt16(0)) + Self.le(UInt16(0))
        var image = header + [UInt8](repeating: 0, count: max(0, tableOffset - header.count))
        image += table
        image += [UInt8](repeating: 0, count: max(0, dataStart - image.count))
        image += data
        if let truncateTo { image = Array(image.prefix(truncateTo)) }
        return image
    }

    func parse() throws(ELFKernelError) -> ELFKernel { try ELFKernel(bytes: bytes, name: "vmlinux") }
}

func elfError(_ body: () throws -> Void) -> ELFKernelError? {
    do {
        try body()
        return nil
    } catch let error as ELFKernelError {
        return error
    } catch {
        Issue.record("expected an ELFKernelError, got \(error)")
        return nil
    }
}

@Suite struct ELFKernelTests {
    @Test func parsesSegmentsEntryAndThePVHNote() throws {
        let kernel = try FakeELF().parse()
        #expect(kernel.entry == 0x100_0000)
        #expect(kernel.segments.map(\.physicalAddress) == [0x100_0000, 0x100_4000])
        #expect(kernel.segments.map(\.memorySize) == [0x3000, 0x5000])
        #expect(kernel.memory == GuestAddress(0x100_0000)..<GuestAddress(0x100_9000))
        #expect(kernel.pvhEntry == 0x100_1240)
        var fourByte = FakeELF()
        fourByte.notes = [(Array("Xen\0".utf8), 18, [0x00, 0x10, 0x00, 0x01])]
        #expect(try fourByte.parse().pvhEntry == 0x100_1000)
        var none = FakeELF()
        none.notes = [(Array("Xen\0".utf8), 17, [1, 2, 3, 4]), (Array("Xe\0".utf8), 18, [1, 2, 3, 4])]
        #expect(try none.parse().pvhEntry == nil)
    }

    @Test func refusesWhatIsNotAnX86_64Executable() {
        #expect(elfError { _ = try ELFKernel(bytes: [0x4D, 0x5A, 0, 0], name: "vmlinux") } == .notELF(name: "vmlinux"))
        var arm = FakeELF()
        arm.machine = 183
        #expect(elfError { _ = try arm.parse() }?.description == "vmlinux cannot be booted: its e_machine is 183, not x86-64 (62); pass an x86-64 vmlinux or bzImage")
        var elf32 = FakeELF()
        elf32.elfClass = 1
        #expect(elfError { _ = try elf32.parse() } != nil)
        var object = FakeELF()
        object.type = 1
        #expect(elfError { _ = try object.parse() } != nil)
        var noLoad = FakeELF()
        noLoad.segments = []
        #expect(elfError { _ = try noLoad.parse() } == .noLoadableSegments(name: "vmlinux"))
    }

    @Test func refusesTruncatedFiles() {
        let full = FakeELF().bytes
        for cut in [10, 63, 64 + 56, 0x1000 + 0x2FFF] {
            var fake = FakeELF()
            fake.truncateTo = cut
            let error = elfError { _ = try fake.parse() }
            guard case .truncated(let name, let size, _, _) = error else {
                Issue.record("cut at \(cut): \(String(describing: error))")
                continue
            }
            #expect(name == "vmlinux" && size == cut)
            #expect(error?.description.contains("\n") == false)
        }
        #expect(full.count > 0x1000 + 0x3000)
        var farTable = FakeELF()
        farTable.programHeaderOffset = UInt64.max - 10
        #expect(elfError { _ = try farTable.parse() }?.description == "vmlinux is truncated: it is \(farTable.bytes.count) bytes but its 3 program headers at e_phoff 0xFFFFFFFFFFFFFFF5 needs more than the address space; copy or rebuild the kernel")
    }

    @Test func refusesOverflowingAndInconsistentSizes() {
        var wraps = FakeELF()
        wraps.segments[1].memorySize = UInt64.max - 0x1000
        #expect(elfError { _ = try wraps.parse() } == .segmentOverflows(name: "vmlinux", index: 1, address: 0x100_4000, size: UInt64.max - 0x1000))
        var offsetWraps = FakeELF()
        offsetWraps.segments[0].offset = UInt64.max - 0x100
        #expect(elfError { _ = try offsetWraps.parse() }?.description.hasPrefix("vmlinux is truncated") == true)
        var bigFile = FakeELF()
        bigFile.segments[1].memorySize = 0x800
        #expect(elfError { _ = try bigFile.parse() }?.description == "vmlinux has segment 1 p_filesz = 0x1000, but it must not exceed p_memsz (0x800): the file is corrupt; copy or rebuild it")
        var badNote = FakeELF()
        badNote.notes = [(Array("Xen\0".utf8), 18, [1, 2])]
        #expect(elfError { _ = try badNote.parse() } != nil)
        var highNote = FakeELF()
        highNote.notes = [(Array("Xen\0".utf8), 18, [0, 0, 0, 0, 1, 0, 0, 0])]
        #expect(elfError { _ = try highNote.parse() } != nil)
    }

    @Test func refusesOverlappingSegments() {
        var fake = FakeELF()
        fake.segments[1].physical = 0x100_2000  // inside segment 0
        let error = elfError { _ = try fake.parse() }
        #expect(error == .segmentsOverlap(name: "vmlinux", first: 0x100_0000..<0x100_3000, second: 0x100_2000..<0x100_7000))
        #expect(error?.description == "vmlinux has segments that overlap (0x1000000..<0x1003000 and 0x1002000..<0x1007000): the file is corrupt; copy or rebuild it")
    }

    /// Random changes to a valid image: each parses or throws, never traps.
    @Test func fuzzedHeadersNeverTrap() {
        var generator = SystemRandomNumberGenerator()
        let valid = FakeELF().bytes
        for _ in 0..<2000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                // Mostly the ELF header, program headers and notes, where the parser looks.
                let limit = Int.random(in: 0..<4, using: &generator) == 0 ? bytes.count : 64 + 3 * 56
                bytes[Int.random(in: 16..<limit, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &generator))) }
            if let kernel = try? ELFKernel(bytes: bytes, name: "fuzz") {
                for segment in kernel.segments { #expect(segment.fileOffset + segment.fileSize <= bytes.count) }
            }
        }
    }
}

@Suite struct DirectLoaderTests {
    func memory(_ size: Int = 64 * MiB) throws -> GuestMemory { try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: size)) }

    @Test func loadsSegmentsZeroesBssAndWritesTheZeroPage() throws {
        let fake = FakeELF()
        let kernel = try fake.parse()
        let guest = try memory()
        try guest.fill(0xAB, count: 0x5000, at: 0x100_4000)  // the bss must be cleared
        var line = KernelCommandLine(maximumLength: 2047)
        try line.append("console=ttyS0")
        let info = try DirectLoader.load(
            kernel: kernel, setupHeader: nil, initrd: [UInt8](repeating: 7, count: 5000), commandLine: line, memory: guest)
        #expect(info.entryPoint == 0x100_0000)
        #expect(try guest.read(count: 0x3000, at: 0x100_0000) == patterned(count: 0x3000, seed: 1))
        #expect(try guest.read(count: 0x1000, at: 0x100_4000) == patterned(count: 0x1000, seed: 2))
        #expect(try guest.read(count: 0x4000, at: 0x100_5000) == [UInt8](repeating: 0, count: 0x4000))
        // A minimal setup header: boot flag, HdrS, 2.15, loader 0xFF, the command line and initrd.
        #expect(try guest.load(UInt16.self, at: 0x71FE) == 0xAA55)
        #expect(try guest.load(UInt32.self, at: 0x7202) == 0x5372_6448)
        #expect(try guest.load(UInt16.self, at: 0x7206) == 0x020F)
        #expect(try guest.load(UInt8.self, at: 0x7210) == 0xFF)
        #expect(try guest.load(UInt32.self, at: 0x7228) == 0x2_0000)
        #expect(try guest.read(count: 14, at: 0x2_0000) == Array("console=ttyS0\0".utf8))
        let initrd = try #require(info.initrd)
        #expect(initrd.address >= info.kernelMemory.upperBound)
        #expect(try guest.load(UInt32.self, at: 0x7218) == UInt32(initrd.address.rawValue))
        #expect(try guest.load(UInt32.self, at: 0x721C) == 5000)
        #expect(try guest.load(UInt8.self, at: 0x71E8) == UInt8(info.e820.entries.count))
    }

    @Test func aBzImagesHeaderGoesIntoTheZeroPage() throws {
        var bz = FakeKernel()
        bz.initSize = 0x100_0000  // 16 MiB from the kernel's start: the initrd goes above it
        let header = try bz.parse()
        let guest = try memory()
        let info = try DirectLoader.load(
            kernel: try FakeELF().parse(), setupHeader: header, initrd: [1, 2, 3], commandLine: KernelCommandLine(for: header),
            memory: guest)
        #expect(try guest.load(UInt16.self, at: 0x7206) == 0x020F)
        #expect(try guest.load(UInt32.self, at: 0x7260) == 0x100_0000)  // init_size, from the bzImage
        #expect(info.kernelMemory == GuestAddress(0x100_0000)..<GuestAddress(0x200_0000))
        #expect(try #require(info.initrd).address >= 0x200_0000)
    }

    @Test func refusesSegmentsOnTheLoadersStructuresOrPastRAM() throws {
        let line = KernelCommandLine(maximumLength: 2047)
        func load(_ fake: FakeELF, size: Int = 64 * MiB, reserved: [Range<GuestAddress>] = []) -> LinuxBootError? {
            linuxBootError { _ = try DirectLoader.load(kernel: try fake.parse(), setupHeader: nil, initrd: nil, commandLine: line, memory: try memory(size), reserved: reserved) }
        }
        var onZeroPage = FakeELF()
        onZeroPage.segments = [.init(physical: 0x7800, fileSize: 0x100, memorySize: 0x100)]
        #expect(load(onZeroPage) == .overlap(first: "kernel segment 0 (0x7800..<0x7900)", second: "zero page (0x7000..<0x8000)"))
        var onCommandLine = FakeELF()
        onCommandLine.segments = [.init(physical: 0x1_F000, fileSize: 0x1000, memorySize: 0x2000)]
        #expect(load(onCommandLine)?.description.hasPrefix("the kernel segment 0 (0x1f000..<0x21000) overlaps the kernel command line") == true)
        var onTables = FakeELF()
        onTables.segments = [.init(physical: 0x9000, fileSize: 0x100, memorySize: 0x100)]
        #expect(load(onTables, reserved: [0x9000..<0xF000]) == .overlap(first: "kernel segment 0 (0x9000..<0x9100)", second: "range the VMM reserved (0x9000..<0xf000)"))
        var pastRAM = FakeELF()
        pastRAM.segments[1].memorySize = 64 * UInt64(MiB)
        let error = load(pastRAM)
        #expect(error == .kernelDoesNotFit(start: 0x100_4000, end: GuestAddress(0x100_4000 + 64 * UInt64(MiB)), ramEnd: GuestAddress(64 * UInt64(MiB))))
        #expect(error?.description.contains("\n") == false)
        var inHole = FakeELF()
        inHole.segments = [.init(physical: 0xA_0000, fileSize: 0x100, memorySize: 0x100)]
        #expect(load(inHole) != nil)
        // An initrd that cannot fit above the kernel.
        let small = try memory(24 * MiB)
        #expect(linuxBootError { _ = try DirectLoader.load(kernel: try FakeELF().parse(), setupHeader: nil, initrd: [UInt8](repeating: 1, count: 9 * MiB), commandLine: line, memory: small) } != nil)
    }
}

@Suite struct PVHStartInfoTests {
    @Test func encodesTheStructModuleListAndMemoryMap() throws {
        let memory = try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: 64 * MiB))
        let e820 = try E820Map(memory: memory)
        let initrd = InitrdPlacement(address: 0x300_0000, size: 12345)
        let info = PVHStartInfo(commandLine: 0x2_0000, initrd: initrd, e820: e820, rsdp: 0xE_0000)
        try info.write(to: memory)
        // Offsets from xen/include/public/arch-x86/hvm/start_info.h.
        #expect(try memory.load(UInt32.self, at: 0x6000) == 0x336E_C578)
        #expect(try memory.load(UInt32.self, at: 0x6004) == 1)
        #expect(try memory.load(UInt32.self, at: 0x600C) == 1)  // nr_modules
        #expect(try memory.load(UInt64.self, at: 0x6010) == 0x6040)  // modlist_paddr
        #expect(try memory.load(UInt64.self, at: 0x6018) == 0x2_0000)  // cmdline_paddr
        #expect(try memory.load(UInt64.self, at: 0x6020) == 0xE_0000)  // rsdp_paddr
        #expect(try memory.load(UInt64.self, at: 0x6028) == 0x6080)  // memmap_paddr
        #expect(try memory.load(UInt32.self, at: 0x6030) == UInt32(e820.entries.count))
        #expect(try memory.load(UInt64.self, at: 0x6040) == 0x300_0000)
        #expect(try memory.load(UInt64.self, at: 0x6048) == 12345)
        for (index, entry) in e820.entries.enumerated() {
            let base = GuestAddress(0x6080 + UInt64(index * 24))
            #expect(try memory.load(UInt64.self, at: base) == entry.address.rawValue)
            #expect(try memory.load(UInt64.self, at: GuestAddress(base.rawValue + 8)) == entry.size)
            #expect(try memory.load(UInt32.self, at: GuestAddress(base.rawValue + 16)) == entry.type.rawValue)
        }
        #expect(PVHStartInfo.range.upperBound <= LinuxBootLayout.zeroPage)
        let none = PVHStartInfo(commandLine: 0x2_0000, initrd: nil, e820: e820)
        #expect(none.encoded[0].bytes[12] == 0 && none.encoded[0].bytes[16] == 0)
    }
}
