import KVM
import VMMCore

/// The processor mode a unit guest starts in. The VMM builds whatever the mode needs (GDT, page
/// tables, IDT, TSS) and sets the registers, so the guest's first instruction runs in that mode.
public enum CPUMode: String, CaseIterable, Sendable {
    /// 16-bit real mode: every segment 0, SP = 0xFFF0.
    case real
    /// 32-bit protected mode, flat segments, no paging, no IDT (an exception triple-faults).
    case protected
    /// 64-bit long mode, ring 0, the first 4 GiB identity-mapped with 2 MiB pages, an IDT that
    /// reports exceptions.
    case long
    /// 64-bit long mode at CPL 3 with IOPL 3 (so `in`/`out` work directly), all memory user-accessible;
    /// the VMM's ring-0 stub reports exceptions. On hosts whose KVM emulates guest ring 0, only this
    /// mode runs guest code natively.
    case user
}

/// Where the VMM puts its own structures in a unit guest, and the values it loads into the CPU.
///
/// The top 64 KiB of RAM are reserved (for every mode but real mode):
///
/// | offset  | contents                                                     |
/// |---------|--------------------------------------------------------------|
/// | 0x0000  | GDT: null, code64 0x08, data 0x10, code32 0x18, user data 0x20, user code64 0x28, TSS 0x30 |
/// | 0x1000  | IDT: 32 interrupt gates, all on IST 1                         |
/// | 0x2000  | 64-bit TSS (RSP0 and IST1 = the top of this region), then its I/O permission bitmap: all 65,536 ports allowed |
/// | 0x5000  | exception stub: one 16-byte entry per vector, then a common tail that writes port 0xF9 |
/// | 0x6000  | PML4, then the PDPT at 0x7000, then four page directories     |
/// | 0xC000  | the stack exceptions run on, up to 0x10000                     |
///
/// User mode needs the I/O bitmap as well as IOPL 3: KVM-PVM clears IOPL while the guest runs and
/// checks the bitmap instead (measured on the project's hosts; hardware honours either).
///
/// The guest's own stack starts just below the reserved region.
public struct UnitGuestLayout: Equatable, Sendable {
    public static let reservedSize: UInt64 = 0x1_0000
    /// The smallest RAM a unit guest may have: 64 KiB in real mode, 128 KiB otherwise.
    public static func minimumMemory(for mode: CPUMode) -> Int { mode == .real ? 0x1_0000 : 0x2_0000 }
    /// Unit guests identity-map the first 4 GiB; RAM must fit there.
    public static let maximumMemory = 1 << 32

    public enum Selector {
        public static let code64: UInt16 = 0x08
        public static let data: UInt16 = 0x10
        public static let code32: UInt16 = 0x18
        public static let userData: UInt16 = 0x20 | 3
        public static let userCode64: UInt16 = 0x28 | 3
        public static let tss: UInt16 = 0x30
    }

    /// The exception stub writes this port once the interrupt frame is on the exception stack.
    public static let exceptionPort: UInt16 = 0xF9
    static let vectorCount = 32
    /// Vectors for which the CPU pushes an error code (Intel SDM vol. 3, table 6-1).
    static let vectorsWithErrorCode: Set<Int> = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]

    public let memorySize: UInt64
    public let mode: CPUMode

    public init(memorySize: Int, mode: CPUMode) {
        self.memorySize = UInt64(memorySize)
        self.mode = mode
    }

    /// The first byte of the reserved region (RAM above it belongs to the VMM).
    public var reservedBase: UInt64 { mode == .real ? memorySize : memorySize - Self.reservedSize }
    public var gdtBase: UInt64 { reservedBase }
    public var idtBase: UInt64 { reservedBase + 0x1000 }
    public var tssBase: UInt64 { reservedBase + 0x2000 }
    /// The TSS's I/O permission bitmap follows the 104-byte TSS: one bit per port, then an 0xFF byte (SDM vol. 1, 19.5.2).
    static let ioBitmapOffset: UInt64 = 104
    static let ioBitmapSize: UInt64 = 65536 / 8 + 1
    /// The TSS limit covers the bitmap and its closing byte.
    public var tssLimit: UInt32 { UInt32(Self.ioBitmapOffset + Self.ioBitmapSize - 1) }
    public var stubBase: UInt64 { reservedBase + 0x5000 }
    public var pml4Base: UInt64 { reservedBase + 0x6000 }
    public var exceptionStackTop: UInt64 { reservedBase + Self.reservedSize }
    /// Where the exception stub leaves the frame: vector, error code, RIP, CS, RFLAGS, RSP, SS.
    public var exceptionFrame: UInt64 { exceptionStackTop - 7 * 8 }
    /// The guest's initial stack pointer.
    public var stackTop: UInt64 { mode == .real ? min(memorySize, 0x1_0000) - 0x10 : reservedBase }

    /// Writes the GDT, IDT, TSS, exception stub and page tables the mode needs into `memory`.
    public func install(in memory: GuestMemory) throws(GuestMemoryError) {
        guard mode != .real else { return }
        try memory.fill(0, count: Int(Self.reservedSize), at: GuestAddress(reservedBase))
        try memory.write(gdt(), at: GuestAddress(gdtBase))
        guard mode != .protected else { return }
        try memory.write(idt(), at: GuestAddress(idtBase))
        try memory.store(exceptionStackTop, at: GuestAddress(tssBase + 4))  // RSP0
        try memory.store(exceptionStackTop, at: GuestAddress(tssBase + 0x24))  // IST1
        try memory.store(UInt16(Self.ioBitmapOffset), at: GuestAddress(tssBase + 0x66))  // I/O map base
        try memory.store(UInt8(0xFF), at: GuestAddress(tssBase + Self.ioBitmapOffset + Self.ioBitmapSize - 1))
        try memory.write(exceptionStub(), at: GuestAddress(stubBase))
        try IdentityPaging.install(pageTables(), at: pml4Base, in: memory)
    }

    /// The CPU state that enters the guest at `entry`, derived from the state KVM created the vCPU
    /// with (get → this pure function → set, so nothing KVM initialised is lost).
    public func cpuState(entry: UInt64, from initial: SpecialRegisters) -> (Registers, SpecialRegisters) {
        var registers = Registers()
        var special = initial
        registers.rsp = stackTop
        switch mode {
        case .real:
            let codeSegment = UInt16(truncatingIfNeeded: (entry >> 4) & 0xF000)
            registers.rip = entry - UInt64(codeSegment) << 4
            special.cs = Segment(base: UInt64(codeSegment) << 4, limit: 0xFFFF, selector: codeSegment, type: 0xB)
            let data = Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x3)
            (special.ds, special.es, special.fs, special.gs, special.ss) = (data, data, data, data, data)
            special.cr0 = initial.cr0 & ~0x8000_0001  // PE and PG off
        case .protected:
            registers.rip = entry
            special.cs = Segment(
                base: 0, limit: 0xFFFF_FFFF, selector: Selector.code32, type: 0xB, defaultSize32: true, granularity: true)
            let data = Segment(
                base: 0, limit: 0xFFFF_FFFF, selector: Selector.data, type: 0x3, defaultSize32: true, granularity: true)
            (special.ds, special.es, special.fs, special.gs, special.ss) = (data, data, data, data, data)
            special.gdt = DescriptorTable(base: gdtBase, limit: 8 * 8 - 1)
            special.idt = DescriptorTable(base: 0, limit: 0)
            special.cr0 = 0x33  // PE | MP | ET | NE
            special.cr4 = 0
            special.efer = 0
        case .long, .user:
            registers.rip = entry
            let ring: UInt8 = mode == .user ? 3 : 0
            special.cs = Segment(
                base: 0, limit: 0xFFFF_FFFF, selector: ring == 3 ? Selector.userCode64 : Selector.code64, type: 0xB,
                privilegeLevel: ring, longMode: true, granularity: true)
            let data = Segment(
                base: 0, limit: 0xFFFF_FFFF, selector: ring == 3 ? Selector.userData : Selector.data, type: 0x3,
                privilegeLevel: ring, defaultSize32: true, granularity: true)
            (special.ds, special.es, special.fs, special.gs, special.ss) = (data, data, data, data, data)
            special.tr = Segment(
                base: tssBase, limit: tssLimit, selector: Selector.tss, type: 0xB, isCodeOrData: false)
            special.gdt = DescriptorTable(base: gdtBase, limit: 8 * 8 - 1)
            special.idt = DescriptorTable(base: idtBase, limit: UInt16(Self.vectorCount * 16 - 1))
            special.cr3 = pml4Base
            special.cr4 = 0x620  // PAE | OSFXSR | OSXMMEXCPT: SSE works in the guest
            special.cr0 = 0x8001_0033  // PG | WP | NE | ET | MP | PE
            special.efer = 0x500  // LME | LMA
            if mode == .user { registers.rflags = 0x3002 }  // IOPL 3: ring-3 port I/O
        }
        return (registers, special)
    }

    // MARK: - Tables

    func gdt() -> [UInt8] {
        var table: [UInt64] = [
            0,
            0x00AF_9A00_0000_FFFF,  // 0x08 code64, ring 0
            0x00CF_9200_0000_FFFF,  // 0x10 data, ring 0
            0x00CF_9A00_0000_FFFF,  // 0x18 code32, ring 0
            0x00CF_F200_0000_FFFF,  // 0x20 data, ring 3
            0x00AF_FA00_0000_FFFF,  // 0x28 code64, ring 3
        ]
        // 0x30: 64-bit TSS descriptor, 16 bytes (SDM vol. 3, 8.2.3), type 9 (available), present.
        let base = tssBase
        let limit = UInt64(tssLimit)
        table.append(
            (limit & 0xFFFF) | (base & 0xFF_FFFF) << 16 | UInt64(0x89) << 40 | (limit >> 16 & 0xF) << 48
                | (base >> 24 & 0xFF) << 56)
        table.append(base >> 32)
        return table.flatMap(Self.littleEndianBytes)
    }

    func idt() -> [UInt8] {
        (0..<Self.vectorCount).flatMap { vector -> [UInt8] in
            let handler = stubBase + UInt64(vector * 16)
            let low =
                (handler & 0xFFFF) | UInt64(Selector.code64) << 16 | UInt64(1) << 32  // IST 1
                | UInt64(0x8E) << 40  // present, DPL 0, 64-bit interrupt gate
                | (handler >> 16 & 0xFFFF) << 48
            return Self.littleEndianBytes(low) + Self.littleEndianBytes(handler >> 32)
        }
    }

    /// Per vector: `push 0` (when the CPU pushes no error code), `push vector`, `jmp common`;
    /// common: `out 0xF9, al`, then `hlt` forever. The frame is then at `exceptionFrame`.
    func exceptionStub() -> [UInt8] {
        let commonOffset = Self.vectorCount * 16
        var code = [UInt8](repeating: 0x90, count: commonOffset)
        for vector in 0..<Self.vectorCount {
            var entry: [UInt8] = Self.vectorsWithErrorCode.contains(vector) ? [] : [0x6A, 0x00]
            entry += [0x6A, UInt8(vector)]
            let next = vector * 16 + entry.count + 5
            entry += [0xE9] + Self.littleEndianBytes(UInt32(commonOffset - next))
            code.replaceSubrange(vector * 16..<vector * 16 + entry.count, with: entry)
        }
        code += [0xE6, UInt8(Self.exceptionPort), 0xF4, 0xEB, 0xFD]
        return code
    }

    /// The identity map of the first 4 GiB, user-accessible so user mode can reach all of RAM.
    func pageTables() -> [UInt64] { IdentityPaging.tables(at: pml4Base, userAccessible: true) }

    static func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }
}
