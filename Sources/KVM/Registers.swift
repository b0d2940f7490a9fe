import CKVM

/// The general-purpose registers of a vCPU (`struct kvm_regs`, KVM_GET_REGS / KVM_SET_REGS).
public struct Registers: Equatable, Sendable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is reserved and always set (Intel SDM vol. 1, 3.4.3).
    public var rflags: UInt64 = 0x2

    public init() {}

    init(_ raw: kvm_regs) {
        rax = raw.rax; rbx = raw.rbx; rcx = raw.rcx; rdx = raw.rdx
        rsi = raw.rsi; rdi = raw.rdi; rsp = raw.rsp; rbp = raw.rbp
        r8 = raw.r8; r9 = raw.r9; r10 = raw.r10; r11 = raw.r11
        r12 = raw.r12; r13 = raw.r13; r14 = raw.r14; r15 = raw.r15
        rip = raw.rip; rflags = raw.rflags
    }

    var raw: kvm_regs {
        kvm_regs(
            rax: rax, rbx: rbx, rcx: rcx, rdx: rdx, rsi: rsi, rdi: rdi, rsp: rsp, rbp: rbp,
            r8: r8, r9: r9, r10: r10, r11: r11, r12: r12, r13: r13, r14: r14, r15: r15,
            rip: rip, rflags: rflags)
    }
}

/// A segment register as KVM sees it: the visible selector and the hidden descriptor cache.
public struct Segment: Equatable, Sendable {
    public var base: UInt64 = 0
    /// The limit in bytes (already scaled when `granularity` is set).
    public var limit: UInt32 = 0xFFFF
    public var selector: UInt16 = 0
    /// The descriptor type field (Intel SDM vol. 3, 3.4.5.1): 0xB for an accessed, readable code segment.
    public var type: UInt8 = 0
    public var present = true
    public var privilegeLevel: UInt8 = 0
    /// D/B: 32-bit default operand size.
    public var defaultSize32 = false
    /// S: a code or data segment (not a system segment such as a TSS).
    public var isCodeOrData = true
    /// L: a 64-bit code segment.
    public var longMode = false
    /// G: the limit counts 4 KiB pages.
    public var granularity = false
    public var unusable = false

    public init() {}

    public init(
        base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, privilegeLevel: UInt8 = 0,
        defaultSize32: Bool = false, isCodeOrData: Bool = true, longMode: Bool = false, granularity: Bool = false
    ) {
        self.base = base
        self.limit = limit
        self.selector = selector
        self.type = type
        self.privilegeLevel = privilegeLevel
        self.defaultSize32 = defaultSize32
        self.isCodeOrData = isCodeOrData
        self.longMode = longMode
        self.granularity = granularity
    }

    init(_ raw: kvm_segment) {
        base = raw.base; limit = raw.limit; selector = raw.selector; type = raw.type
        present = raw.present != 0; privilegeLevel = raw.dpl; defaultSize32 = raw.db != 0
        isCodeOrData = raw.s != 0; longMode = raw.l != 0; granularity = raw.g != 0; unusable = raw.unusable != 0
    }

    var raw: kvm_segment {
        var segment = kvm_segment()
        segment.base = base; segment.limit = limit; segment.selector = selector; segment.type = type
        segment.present = present ? 1 : 0; segment.dpl = privilegeLevel; segment.db = defaultSize32 ? 1 : 0
        segment.s = isCodeOrData ? 1 : 0; segment.l = longMode ? 1 : 0; segment.g = granularity ? 1 : 0
        segment.unusable = unusable ? 1 : 0
        return segment
    }
}

/// A descriptor-table register (GDTR or IDTR).
public struct DescriptorTable: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt16

    public init(base: UInt64, limit: UInt16) {
        self.base = base
        self.limit = limit
    }
}

/// The system registers of a vCPU (`struct kvm_sregs`, KVM_GET_SREGS / KVM_SET_SREGS).
public struct SpecialRegisters: Equatable, Sendable {
    public var cs = Segment(), ds = Segment(), es = Segment(), fs = Segment(), gs = Segment(), ss = Segment()
    public var tr = Segment(), ldt = Segment()
    public var gdt = DescriptorTable(base: 0, limit: 0xFFFF), idt = DescriptorTable(base: 0, limit: 0xFFFF)
    public var cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var apicBase: UInt64 = 0
    /// The pending-interrupt bitmap is carried through unchanged between get and set.
    var interruptBitmap: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    public init() {}

    init(_ raw: kvm_sregs) {
        cs = Segment(raw.cs); ds = Segment(raw.ds); es = Segment(raw.es); fs = Segment(raw.fs)
        gs = Segment(raw.gs); ss = Segment(raw.ss); tr = Segment(raw.tr); ldt = Segment(raw.ldt)
        gdt = DescriptorTable(base: raw.gdt.base, limit: raw.gdt.limit)
        idt = DescriptorTable(base: raw.idt.base, limit: raw.idt.limit)
        cr0 = raw.cr0; cr2 = raw.cr2; cr3 = raw.cr3; cr4 = raw.cr4; cr8 = raw.cr8
        efer = raw.efer; apicBase = raw.apic_base
        interruptBitmap = raw.interrupt_bitmap
    }

    var raw: kvm_sregs {
        var sregs = kvm_sregs()
        sregs.cs = cs.raw; sregs.ds = ds.raw; sregs.es = es.raw; sregs.fs = fs.raw
        sregs.gs = gs.raw; sregs.ss = ss.raw; sregs.tr = tr.raw; sregs.ldt = ldt.raw
        sregs.gdt.base = gdt.base; sregs.gdt.limit = gdt.limit
        sregs.idt.base = idt.base; sregs.idt.limit = idt.limit
        sregs.cr0 = cr0; sregs.cr2 = cr2; sregs.cr3 = cr3; sregs.cr4 = cr4; sregs.cr8 = cr8
        sregs.efer = efer; sregs.apic_base = apicBase
        sregs.interrupt_bitmap = interruptBitmap
        return sregs
    }

    public static func == (lhs: SpecialRegisters, rhs: SpecialRegisters) -> Bool {
        lhs.cs == rhs.cs && lhs.ds == rhs.ds && lhs.es == rhs.es && lhs.fs == rhs.fs && lhs.gs == rhs.gs
            && lhs.ss == rhs.ss && lhs.tr == rhs.tr && lhs.ldt == rhs.ldt && lhs.gdt == rhs.gdt && lhs.idt == rhs.idt
            && lhs.cr0 == rhs.cr0 && lhs.cr2 == rhs.cr2 && lhs.cr3 == rhs.cr3 && lhs.cr4 == rhs.cr4
            && lhs.cr8 == rhs.cr8 && lhs.efer == rhs.efer && lhs.apicBase == rhs.apicBase
    }
}
