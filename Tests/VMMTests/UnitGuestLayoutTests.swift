import KVM
import Testing
import VMMCore

@testable import VMM

/// The tables `UnitGuestLayout` writes for each CPU mode, read back from guest memory and decoded
/// the way the CPU would (Intel SDM vol. 3: 3.4.5 segment descriptors, 6.14.1 64-bit IDT gates,
/// 8.7 the 64-bit TSS, 4.5 4-level paging), and the registers it derives. No /dev/kvm needed.
@Suite struct UnitGuestLayoutTests {
    static let memorySizes = [0x2_0000, 0x20_0000, 0x40_1000]
    static let tableModes: [CPUMode] = [.protected, .long, .user]
    static let sixtyFourBitModes: [CPUMode] = [.long, .user]
    /// Intel SDM vol. 3, table 6-1: the exceptions that push an error code.
    static let vectorsWithErrorCode: Set<Int> = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]
    static let filler: UInt8 = 0xCC

    /// Guest memory filled with `filler`, then the layout's tables installed over it.
    private func installed(_ layout: UnitGuestLayout) throws -> GuestMemory {
        let memory = try GuestMemory(size: Int(layout.memorySize))
        try memory.fill(Self.filler, count: memory.size, at: 0)
        try layout.install(in: memory)
        return memory
    }

    // MARK: - Where things go

    @Test(arguments: tableModes, memorySizes)
    func theReservedRegionIsTheTop64KiB(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let base = UInt64(memorySize) - 0x1_0000
        #expect(layout.reservedBase == base)
        #expect(layout.gdtBase == base)
        #expect(layout.idtBase == base + 0x1000)
        #expect(layout.tssBase == base + 0x2000)
        #expect(layout.stubBase == base + 0x5000)
        #expect(layout.pml4Base == base + 0x6000)
        #expect(layout.exceptionStackTop == UInt64(memorySize))
        #expect(layout.exceptionFrame == UInt64(memorySize) - 56)
        #expect(layout.stackTop == base)
        #expect(layout.pml4Base % 0x1000 == 0, "CR3 and the table addresses need 4 KiB alignment")
        #expect(layout.tssBase + UInt64(layout.tssLimit) < layout.stubBase, "the TSS and its bitmap end before the stub")

        let memory = try installed(layout)
        let below = try memory.read(count: Int(base), at: 0)
        #expect(below.allSatisfy { $0 == Self.filler }, "nothing below the reserved region is written")
    }

    @Test(arguments: [0x1_0000, 0x10_0000, 0x20_0000])
    func realModeInstallsNothing(memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: .real)
        #expect(layout.reservedBase == UInt64(memorySize))
        let fresh = try GuestMemory(size: memorySize)
        try layout.install(in: fresh)
        #expect(try fresh.read(count: memorySize, at: 0).allSatisfy { $0 == 0 })
        let filled = try installed(layout)
        #expect(try filled.read(count: memorySize, at: 0).allSatisfy { $0 == Self.filler })
    }

    @Test(arguments: memorySizes)
    func protectedModeInstallsOnlyTheGDT(memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: .protected)
        let memory = try installed(layout)
        #expect(try memory.load(UInt64.self, at: GuestAddress(layout.gdtBase + 0x18)) == 0x00CF_9A00_0000_FFFF)
        let rest = try memory.read(count: 0x1_0000 - 0x1000, at: GuestAddress(layout.idtBase))
        #expect(rest.allSatisfy { $0 == 0 }, "no IDT, TSS, stub or page tables: the region is cleared")
    }

    // MARK: - GDT

    @Test(arguments: tableModes, memorySizes)
    func gdtHoldsTheFlatSegments(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let memory = try installed(layout)
        let gdt = { (selector: UInt64) throws -> UInt64 in try memory.load(UInt64.self, at: GuestAddress(layout.gdtBase + selector)) }
        #expect(try gdt(0x00) == 0)
        #expect(try gdt(0x08) == 0x00AF_9A00_0000_FFFF)
        #expect(try gdt(0x10) == 0x00CF_9200_0000_FFFF)
        #expect(try gdt(0x18) == 0x00CF_9A00_0000_FFFF)
        #expect(try gdt(0x20) == 0x00CF_F200_0000_FFFF)
        #expect(try gdt(0x28) == 0x00AF_FA00_0000_FFFF)

        // Decoded: both 64-bit code segments have L set and D clear; DPL matches the selectors' RPL.
        for (selector, isCode, is64) in [
            (UnitGuestLayout.Selector.code64, true, true), (UnitGuestLayout.Selector.data, false, false),
            (UnitGuestLayout.Selector.code32, true, false), (UnitGuestLayout.Selector.userData, false, false),
            (UnitGuestLayout.Selector.userCode64, true, true),
        ] {
            let descriptor = SegmentDescriptor(try gdt(UInt64(selector & ~7)))
            #expect(descriptor.present && descriptor.isCodeOrData)
            #expect(descriptor.privilegeLevel == UInt8(selector & 3), "selector 0x\(String(selector, radix: 16))")
            #expect(descriptor.isCode == isCode)
            #expect(descriptor.longMode == is64)
            #expect(descriptor.defaultSize32 == !is64)
            #expect(descriptor.base == 0)
            #expect(descriptor.limit == 0xF_FFFF && descriptor.granularity)
        }
    }

    @Test(arguments: tableModes, memorySizes)
    func gdtHoldsTheSixteenByteTSSDescriptor(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let memory = try installed(layout)
        let low = try memory.load(UInt64.self, at: GuestAddress(layout.gdtBase + 0x30))
        let high = try memory.load(UInt64.self, at: GuestAddress(layout.gdtBase + 0x38))
        let base = (low >> 16 & 0xFF_FFFF) | (low >> 56 & 0xFF) << 24 | (high & 0xFFFF_FFFF) << 32
        let limit = (low & 0xFFFF) | (low >> 48 & 0xF) << 16
        #expect(base == layout.tssBase)
        #expect(limit == UInt64(layout.tssLimit))
        #expect(layout.tssLimit == 104 + 8192, "the limit covers the 104-byte TSS, the 8 KiB bitmap and its 0xFF byte")
        #expect(low >> 40 & 0xFF == 0x89, "present, DPL 0, available 64-bit TSS")
        #expect(low >> 52 & 0xF == 0, "byte granularity, no AVL/L/D bits")
        #expect(high >> 32 == 0, "the upper dword is reserved and zero")
    }

    // MARK: - IDT

    @Test(arguments: sixtyFourBitModes, memorySizes)
    func idtGatesPointAtTheStubEntries(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let memory = try installed(layout)
        for vector in 0..<32 {
            let gate = layout.idtBase + UInt64(vector * 16)
            let low = try memory.load(UInt64.self, at: GuestAddress(gate))
            let high = try memory.load(UInt64.self, at: GuestAddress(gate + 8))
            let handler = (low & 0xFFFF) | (low >> 48 & 0xFFFF) << 16 | (high & 0xFFFF_FFFF) << 32
            #expect(handler == layout.stubBase + UInt64(16 * vector), "vector \(vector)")
            #expect(low >> 16 & 0xFFFF == 0x08, "vector \(vector): the ring-0 64-bit code selector")
            #expect(low >> 32 & 0x7 == 1, "vector \(vector): IST 1")
            #expect(low >> 35 & 0x1F == 0, "vector \(vector): reserved bits")
            #expect(low >> 40 & 0xFF == 0x8E, "vector \(vector): present, DPL 0, 64-bit interrupt gate")
            #expect(high >> 32 == 0, "vector \(vector): reserved dword")
        }
        let rest = try memory.read(count: 0x1000 - 32 * 16, at: GuestAddress(layout.idtBase + 32 * 16))
        #expect(rest.allSatisfy { $0 == 0 })
    }

    // MARK: - TSS

    @Test(arguments: sixtyFourBitModes, memorySizes)
    func tssHoldsTheExceptionStackAndAnOpenIOBitmap(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let memory = try installed(layout)
        let tss = layout.tssBase
        #expect(try memory.load(UInt64.self, at: GuestAddress(tss + 0x04)) == layout.exceptionStackTop, "RSP0")
        #expect(try memory.load(UInt64.self, at: GuestAddress(tss + 0x0C)) == 0, "RSP1")
        #expect(try memory.load(UInt64.self, at: GuestAddress(tss + 0x14)) == 0, "RSP2")
        #expect(try memory.load(UInt64.self, at: GuestAddress(tss + 0x24)) == layout.exceptionStackTop, "IST1")
        for ist in 2...7 {
            #expect(try memory.load(UInt64.self, at: GuestAddress(tss + 0x24 + UInt64(ist - 1) * 8)) == 0, "IST\(ist)")
        }
        #expect(try memory.load(UInt16.self, at: GuestAddress(tss + 0x66)) == 104, "I/O map base")
        let bitmap = try memory.read(count: 8192, at: GuestAddress(tss + 104))
        #expect(bitmap.allSatisfy { $0 == 0 }, "every port allowed")
        #expect(try memory.load(UInt8.self, at: GuestAddress(tss + 104 + 8192)) == 0xFF, "the bitmap's closing byte")
        #expect(UInt64(layout.tssLimit) == 104 + 8192, "the closing byte is the TSS's last byte")
        #expect(layout.exceptionStackTop % 16 == 0)
    }

    // MARK: - Exception stub

    @Test(arguments: sixtyFourBitModes, memorySizes)
    func stubEntriesPushTheVectorAndJumpToTheCommonTail(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let memory = try installed(layout)
        let tail = layout.stubBase + 32 * 16
        #expect(try memory.read(count: 5, at: GuestAddress(tail)) == [0xE6, 0xF9, 0xF4, 0xEB, 0xFD], "out 0xF9, al; hlt; jmp hlt")
        #expect(UnitGuestLayout.exceptionPort == 0xF9)

        for vector in 0..<32 {
            let entry = layout.stubBase + UInt64(vector * 16)
            let bytes = try memory.read(count: 16, at: GuestAddress(entry))
            let prefix: [UInt8] =
                Self.vectorsWithErrorCode.contains(vector) ? [0x6A, UInt8(vector)] : [0x6A, 0x00, 0x6A, UInt8(vector)]
            #expect(Array(bytes.prefix(prefix.count)) == prefix, "vector \(vector)")
            #expect(bytes[prefix.count] == 0xE9, "vector \(vector): jmp rel32")
            let displacement = try memory.load(Int32.self, at: GuestAddress(entry + UInt64(prefix.count + 1)))
            let next = Int64(entry) + Int64(prefix.count + 5)
            #expect(next + Int64(displacement) == Int64(tail), "vector \(vector): the jump lands on the tail")
        }
    }

    // MARK: - Page tables

    /// Walks the 4-level tables from `cr3` the way the MMU does for `virtual`; returns the physical
    /// address and the flags of each level, or nil where an entry is not present.
    private func walk(_ memory: GuestMemory, cr3: UInt64, _ virtual: UInt64) throws -> (physical: UInt64, flags: [UInt64])? {
        let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000
        let pml4e = try memory.load(UInt64.self, at: GuestAddress((cr3 & addressMask) + (virtual >> 39 & 0x1FF) * 8))
        guard pml4e & 1 != 0 else { return nil }
        let pdpte = try memory.load(UInt64.self, at: GuestAddress((pml4e & addressMask) + (virtual >> 30 & 0x1FF) * 8))
        guard pdpte & 1 != 0 else { return nil }
        #expect(pdpte & 0x80 == 0, "no 1 GiB pages")
        let pde = try memory.load(UInt64.self, at: GuestAddress((pdpte & addressMask) + (virtual >> 21 & 0x1FF) * 8))
        guard pde & 1 != 0 else { return nil }
        #expect(pde & 0x80 != 0, "a 2 MiB page")
        let physical = (pde & 0x000F_FFFF_FFE0_0000) | (virtual & 0x1F_FFFF)
        return (physical, [pml4e & 0xFFF, pdpte & 0xFFF, pde & 0xFFF])
    }

    @Test(arguments: sixtyFourBitModes, memorySizes)
    func pageTablesIdentityMapTheFirst4GiBWith2MiBPages(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let memory = try installed(layout)
        let (_, special) = layout.cpuState(entry: 0x1000, from: SpecialRegisters())
        let addresses: [UInt64] = [
            0, 0x1F_FFFF, 0x20_0000, 0x12_3456, layout.reservedBase, layout.gdtBase + 0x30, layout.pml4Base,
            layout.exceptionStackTop - 1, UInt64(memorySize), 0x3FFF_FFFF, 0x4000_0000, 0x8765_4321,
            0xBFFF_FFFF, 0xC000_0000, 0xFEE0_0000, 0xFFE0_0000, 0xFFFF_FFFF,
        ]
        for virtual in addresses {
            let translation = try #require(try walk(memory, cr3: special.cr3, virtual), "0x\(String(virtual, radix: 16)) is mapped")
            #expect(translation.physical == virtual, "0x\(String(virtual, radix: 16)) maps onto itself")
            for (level, flags) in translation.flags.enumerated() {
                #expect(flags & 0x7 == 0x7, "0x\(String(virtual, radix: 16)) level \(level): present, writable, user")
            }
            #expect(translation.flags[2] & 0x80 != 0, "PS")
        }
        for virtual: UInt64 in [0x1_0000_0000, 0x1_2345_6789, 0x80_0000_0000, 0xFFFF_8000_0000_0000] {
            #expect(try walk(memory, cr3: special.cr3, virtual) == nil, "0x\(String(virtual, radix: 16)) is not mapped")
        }
        // Every one of the 2048 directory entries, in order.
        for page in 0..<2048 {
            let entry = try memory.load(UInt64.self, at: GuestAddress(layout.pml4Base + 0x2000 + UInt64(page) * 8))
            #expect(entry == UInt64(page) << 21 | 0x87, "PD entry \(page)")
            if entry != UInt64(page) << 21 | 0x87 { break }
        }
    }

    // MARK: - Registers

    /// What KVM's vCPU reset state roughly looks like: the point is that what the mode does not set survives.
    private static var resetState: SpecialRegisters {
        var special = SpecialRegisters()
        special.cr0 = 0x6000_0010
        special.apicBase = 0xFEE0_0900
        special.cr8 = 0
        special.cs = Segment(base: 0xFFFF_0000, limit: 0xFFFF, selector: 0xF000, type: 0xB)
        return special
    }

    @Test(arguments: [
        (UInt64(0x12345), UInt16(0x1000), UInt64(0x2345)),
        (0x7C00, 0x0000, 0x7C00),
        (0x0, 0x0000, 0x0),
        (0xF_FFFF, 0xF000, 0xFFFF),
        (0x1_FFFF, 0x1000, 0xFFFF),
        (0x8_0010, 0x8000, 0x0010),
    ])
    func realModeSplitsTheEntryIntoCSAndIP(entry: UInt64, segment: UInt16, ip: UInt64) {
        let layout = UnitGuestLayout(memorySize: 0x20_0000, mode: .real)
        var initial = Self.resetState
        initial.cr0 = 0x8000_0011  // PG and PE on: real mode must clear both
        let (registers, special) = layout.cpuState(entry: entry, from: initial)
        #expect(special.cs.selector == segment)
        #expect(special.cs.base == UInt64(segment) << 4)
        #expect(registers.rip == ip)
        #expect(special.cs.base + registers.rip == entry)
        #expect(special.cs.limit == 0xFFFF)
        #expect(special.cs.type == 0xB)
        #expect(!special.cs.defaultSize32 && !special.cs.longMode)
        for data in [special.ds, special.es, special.fs, special.gs, special.ss] {
            #expect(data == Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x3))
        }
        #expect(special.cr0 == 0x10, "PE and PG cleared, the rest kept")
        #expect(special.apicBase == initial.apicBase)
        #expect(registers.rsp == 0xFFF0)
        #expect(registers.rflags == 0x2)
    }

    @Test func realModeStackStaysInTheFirstSegment() {
        #expect(UnitGuestLayout(memorySize: 0x1_0000, mode: .real).stackTop == 0xFFF0)
        #expect(UnitGuestLayout(memorySize: 0x100_0000, mode: .real).stackTop == 0xFFF0)
    }

    @Test(arguments: memorySizes)
    func protectedModeState(memorySize: Int) {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: .protected)
        var initial = Self.resetState
        initial.cr4 = 0x20
        initial.efer = 0x500
        let (registers, special) = layout.cpuState(entry: 0x10_0000, from: initial)
        #expect(registers.rip == 0x10_0000)
        #expect(registers.rsp == layout.reservedBase)
        #expect(registers.rflags == 0x2)
        #expect(
            special.cs
                == Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x18, type: 0xB, defaultSize32: true, granularity: true))
        for data in [special.ds, special.es, special.fs, special.gs, special.ss] {
            #expect(
                data == Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, defaultSize32: true, granularity: true))
        }
        #expect(special.gdt == DescriptorTable(base: layout.gdtBase, limit: 63))
        #expect(special.idt == DescriptorTable(base: 0, limit: 0))
        #expect(special.cr0 == 0x33, "PE | MP | ET | NE, no paging")
        #expect(special.cr4 == 0)
        #expect(special.efer == 0)
        #expect(special.apicBase == initial.apicBase)
    }

    @Test(arguments: sixtyFourBitModes, memorySizes)
    func longAndUserModeState(mode: CPUMode, memorySize: Int) throws {
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let initial = Self.resetState
        let (registers, special) = layout.cpuState(entry: 0x1234, from: initial)
        let ring: UInt8 = mode == .user ? 3 : 0

        #expect(registers.rip == 0x1234)
        #expect(registers.rsp == layout.stackTop)
        #expect(layout.stackTop == layout.reservedBase)
        #expect((registers.rflags >> 12) & 3 == (mode == .user ? 3 : 0), "IOPL")
        #expect(registers.rflags & 0x2 != 0, "the reserved bit 1")
        #expect(registers.rflags & 0x200 == 0, "interrupts stay off")

        #expect(special.cr0 == 0x8001_0033)
        #expect(special.cr4 == 0x620)
        #expect(special.efer == 0x500)
        #expect(special.cr3 == layout.pml4Base)
        #expect(special.apicBase == initial.apicBase)

        #expect(special.cs.selector == (mode == .user ? 0x2B : 0x08))
        #expect(special.cs.longMode && !special.cs.defaultSize32)
        #expect(special.cs.privilegeLevel == ring)
        #expect(special.cs.type == 0xB)
        for data in [special.ds, special.es, special.fs, special.gs, special.ss] {
            #expect(data.selector == (mode == .user ? 0x23 : 0x10))
            #expect(data.privilegeLevel == ring)
            #expect(data.type == 0x3)
        }
        #expect(special.ss.privilegeLevel == special.cs.privilegeLevel, "SS.DPL = CPL")

        #expect(special.tr.base == layout.tssBase)
        #expect(special.tr.limit == layout.tssLimit)
        #expect(special.tr.selector == 0x30)
        #expect(special.tr.type == 0xB, "a busy 64-bit TSS")
        #expect(!special.tr.isCodeOrData && special.tr.present)

        #expect(special.gdt == DescriptorTable(base: layout.gdtBase, limit: 63))
        #expect(special.idt == DescriptorTable(base: layout.idtBase, limit: 32 * 16 - 1))

        // The registers agree with the tables in memory: CS and SS name descriptors of the same ring.
        let memory = try installed(layout)
        let cs = SegmentDescriptor(try memory.load(UInt64.self, at: GuestAddress(special.gdt.base + UInt64(special.cs.selector & ~7))))
        let ss = SegmentDescriptor(try memory.load(UInt64.self, at: GuestAddress(special.gdt.base + UInt64(special.ss.selector & ~7))))
        #expect(cs.isCode && cs.longMode && cs.privilegeLevel == ring)
        #expect(!ss.isCode && ss.privilegeLevel == ring)
        #expect(UInt64(special.gdt.limit) + 1 >= 0x40, "the GDT limit covers the TSS descriptor")
    }

    @Test func minimumMemory() {
        #expect(UnitGuestLayout.minimumMemory(for: .real) == 0x1_0000)
        for mode in Self.tableModes { #expect(UnitGuestLayout.minimumMemory(for: mode) == 0x2_0000) }
        #expect(UnitGuestLayout.maximumMemory == 1 << 32)
    }
}

/// An 8-byte code or data segment descriptor, decoded (Intel SDM vol. 3, figure 3-8).
private struct SegmentDescriptor {
    let base: UInt64
    let limit: UInt64
    let type: UInt8
    let isCodeOrData: Bool
    let privilegeLevel: UInt8
    let present: Bool
    let longMode: Bool
    let defaultSize32: Bool
    let granularity: Bool
    var isCode: Bool { type & 0x8 != 0 }

    init(_ raw: UInt64) {
        base = (raw >> 16 & 0xFF_FFFF) | (raw >> 56 & 0xFF) << 24
        limit = (raw & 0xFFFF) | (raw >> 48 & 0xF) << 16
        type = UInt8(raw >> 40 & 0xF)
        isCodeOrData = raw >> 44 & 1 != 0
        privilegeLevel = UInt8(raw >> 45 & 3)
        present = raw >> 47 & 1 != 0
        longMode = raw >> 53 & 1 != 0
        defaultSize32 = raw >> 54 & 1 != 0
        granularity = raw >> 55 & 1 != 0
    }
}
