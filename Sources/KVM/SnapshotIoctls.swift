import CKVM
import Glibc

// The ioctls a snapshot needs: every piece of vCPU and VM state KVM keeps in the kernel, read out
// as plain values and written back. Each value is the kernel's own structure held as bytes
// (`KVMStateBlob`), so a snapshot keeps every field KVM has, including ones this VMM never looks
// at; the few fields the VMM must check before handing restored bytes back to KVM are exposed as
// typed properties. Documentation/virt/kvm/api.rst describes each structure.

/// Why restored state was refused before it reached KVM.
public struct KVMStateError: Error, Equatable, Sendable, CustomStringConvertible {
    public let what: String
    public let problem: String

    public init(_ what: String, _ problem: String) {
        self.what = what
        self.problem = problem
    }

    public var description: String { "\(what): \(problem)" }
}

/// One fixed-size KVM structure as bytes. `T` is the C structure; the byte count always equals
/// `MemoryLayout<T>.size`, which `init(bytes:)` checks.
public struct KVMStateBlob<T>: Equatable, Sendable {
    public let bytes: [UInt8]

    /// Bytes from a state file: refused unless they are exactly one `T`.
    public init(bytes: [UInt8], name: String) throws(KVMStateError) {
        guard bytes.count == MemoryLayout<T>.size else {
            throw KVMStateError(name, "\(bytes.count) bytes where KVM's structure has \(MemoryLayout<T>.size)")
        }
        self.bytes = bytes
    }

    init(_ value: T) {
        var copy = value
        bytes = withUnsafeBytes(of: &copy) { Array($0) }
    }

    /// The structure the bytes hold (POD: any byte pattern is a value).
    var value: T {
        let pointer = UnsafeMutablePointer<T>.allocate(capacity: 1)
        defer { pointer.deallocate() }
        UnsafeMutableRawPointer(pointer).initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
        bytes.withUnsafeBytes { UnsafeMutableRawPointer(pointer).copyMemory(from: $0.baseAddress!, byteCount: MemoryLayout<T>.size) }
        return pointer.pointee
    }

    /// How many bytes the structure has.
    public static var size: Int { MemoryLayout<T>.size }

    static func zeroed() -> KVMStateBlob<T> {
        KVMStateBlob(unchecked: [UInt8](repeating: 0, count: MemoryLayout<T>.size))
    }

    private init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    func field<F: FixedWidthInteger>(_ type: F.Type, at offset: Int) -> F {
        bytes.withUnsafeBytes { F(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: F.self)) }
    }
}

public typealias MPState = KVMStateBlob<kvm_mp_state>
public typealias RawRegisters = KVMStateBlob<kvm_regs>
public typealias RawSpecialRegisters = KVMStateBlob<kvm_sregs>
public typealias FPUState = KVMStateBlob<kvm_fpu>
public typealias XCRState = KVMStateBlob<kvm_xcrs>
public typealias DebugRegisterState = KVMStateBlob<kvm_debugregs>
public typealias LocalAPICState = KVMStateBlob<kvm_lapic_state>
public typealias VCPUEventState = KVMStateBlob<kvm_vcpu_events>
public typealias IRQChipState = KVMStateBlob<kvm_irqchip>
public typealias PITState = KVMStateBlob<kvm_pit_state2>
public typealias ClockState = KVMStateBlob<kvm_clock_data>

extension KVMStateBlob where T == kvm_mp_state {
    /// KVM_MP_STATE_RUNNABLE … KVM_MP_STATE_SUSPENDED.
    public var state: UInt32 { field(UInt32.self, at: 0) }
    /// The largest value api.rst defines (KVM_MP_STATE_SUSPENDED).
    public static let largestDefined: UInt32 = 10
}

extension KVMStateBlob where T == kvm_vcpu_events {
    public var exceptionInjected: Bool { value.exception.injected != 0 }
    public var exceptionVector: UInt8 { value.exception.nr }
    public var flags: UInt32 { value.flags }
    /// Every KVM_VCPUEVENT_VALID_* flag api.rst defines; a state file with another is refused.
    public static let knownFlags: UInt32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20
}

extension KVMStateBlob where T == kvm_xcrs {
    public var count: UInt32 { value.nr_xcrs }
    /// KVM_MAX_XCRS.
    public static let maximumCount = UInt32(KVM_MAX_XCRS)
}

extension KVMStateBlob where T == kvm_regs {
    public var rflags: UInt64 { value.rflags }
}

extension KVMStateBlob where T == kvm_irqchip {
    /// KVM_IRQCHIP_PIC_MASTER (0), KVM_IRQCHIP_PIC_SLAVE (1), KVM_IRQCHIP_IOAPIC (2).
    public var chipID: UInt32 { value.chip_id }
}

/// The XSAVE area (KVM_GET_XSAVE2 / KVM_SET_XSAVE): 4 KiB, or more when KVM_CAP_XSAVE2 says the
/// host's features (AMX) need more. Its size must match the host's on restore.
public struct XSaveState: Equatable, Sendable {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }
}

/// Everything KVM holds for one vCPU, as a snapshot saves it.
public struct VCPUState: Equatable, Sendable {
    public var cpuid: [CPUIDEntry]
    public var mpState: MPState
    public var registers: RawRegisters
    public var specialRegisters: RawSpecialRegisters
    /// XSAVE when the host has it (every x86-64 KVM since 2010), else the legacy FPU area.
    public var xsave: XSaveState?
    public var fpu: FPUState?
    public var xcrs: XCRState?
    public var debugRegisters: DebugRegisterState
    /// Only with the in-kernel irqchip (KVM_GET_LAPIC fails without one).
    public var localAPIC: LocalAPICState?
    /// (index, value) for every MSR of KVM's index list that KVM would read for this vCPU.
    public var msrs: [MSRValue]
    public var events: VCPUEventState
    /// KVM_GET_TSC_KHZ: the guest's TSC frequency.
    public var tscKHz: UInt32

    public init(
        cpuid: [CPUIDEntry], mpState: MPState, registers: RawRegisters, specialRegisters: RawSpecialRegisters,
        xsave: XSaveState?, fpu: FPUState?, xcrs: XCRState?, debugRegisters: DebugRegisterState, localAPIC: LocalAPICState?,
        msrs: [MSRValue], events: VCPUEventState, tscKHz: UInt32
    ) {
        self.cpuid = cpuid
        self.mpState = mpState
        self.registers = registers
        self.specialRegisters = specialRegisters
        self.xsave = xsave
        self.fpu = fpu
        self.xcrs = xcrs
        self.debugRegisters = debugRegisters
        self.localAPIC = localAPIC
        self.msrs = msrs
        self.events = events
        self.tscKHz = tscKHz
    }
}

public struct MSRValue: Equatable, Sendable {
    public var index: UInt32
    public var value: UInt64

    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }
}

/// What KVM keeps for the whole VM.
public struct VMKernelState: Equatable, Sendable {
    /// PIC master, PIC slave, IOAPIC (with KVM_CREATE_IRQCHIP); empty without.
    public var irqchips: [IRQChipState]
    /// The in-kernel PIT (KVM_CREATE_PIT2), if the VM has one.
    public var pit: PITState?
    public var clock: ClockState

    public init(irqchips: [IRQChipState], pit: PITState?, clock: ClockState) {
        self.irqchips = irqchips
        self.pit = pit
        self.clock = clock
    }
}

extension KVMCapability {
    public static let xsave = Int32(KVM_CAP_XSAVE)
    public static let xsave2 = Int32(KVM_CAP_XSAVE2)
    public static let xcrs = Int32(KVM_CAP_XCRS)
    public static let tscControl = Int32(KVM_CAP_TSC_CONTROL)
}

extension KVMSystem {
    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a guest on this host.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var capacity = 256
        while true {
            let size = MemoryLayout<kvm_msr_list>.size + capacity * MemoryLayout<UInt32>.stride
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            buffer.assumingMemoryBound(to: kvm_msr_list.self).pointee.nmsrs = UInt32(capacity)
            do {
                _ = try descriptor.ioctl(CKVM_GET_MSR_INDEX_LIST, buffer: buffer, "KVM_GET_MSR_INDEX_LIST")
            } catch where error.errno == E2BIG && capacity < 16384 {
                capacity *= 4
                continue
            }
            let count = min(capacity, Int(buffer.assumingMemoryBound(to: kvm_msr_list.self).pointee.nmsrs))
            let indices = (buffer + MemoryLayout<kvm_msr_list>.size).assumingMemoryBound(to: UInt32.self)
            return (0..<count).map { indices[$0] }
        }
    }

    /// The XSAVE area's size for KVM_GET_XSAVE2 (KVM_CAP_XSAVE2), at least `struct kvm_xsave`'s 4 KiB;
    /// nil when the host has no XSAVE (then the FPU ioctls carry the x87/SSE state).
    public var xsaveSize: Int? {
        guard checkExtension(KVMCapability.xsave) > 0 else { return nil }
        return max(MemoryLayout<kvm_xsave>.size, Int(checkExtension(KVMCapability.xsave2)))
    }
}

extension VCPU {
    private func get<T>(_ request: UInt, _ name: String, as type: T.Type) throws(KVMError) -> KVMStateBlob<T> {
        var value = KVMStateBlob<T>.zeroed().value
        _ = try descriptor.ioctl(request, &value, name)
        return KVMStateBlob(value)
    }

    private func set<T>(_ request: UInt, _ name: String, _ blob: KVMStateBlob<T>) throws(KVMError) {
        var value = blob.value
        _ = try descriptor.ioctl(request, &value, name)
    }

    /// KVM_GET_CPUID2: the CPUID table KVM_SET_CPUID2 gave this vCPU.
    public func cpuid() throws(KVMError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            let size = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(capacity)
            do {
                _ = try descriptor.ioctl(CKVM_GET_CPUID2, buffer: buffer, "KVM_GET_CPUID2")
            } catch where error.errno == E2BIG && capacity < 4096 {
                capacity *= 2
                continue
            }
            let count = min(capacity, Int(buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent))
            let entries = (buffer + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
            return (0..<count).map { CPUIDEntry(entries[$0]) }
        }
    }

    /// KVM_GET_MP_STATE. It runs kvm_apic_accept_events(), which may change the local APIC and
    /// the registers (a pending INIT or SIPI is taken): hence it comes first in `saveState`.
    public func mpState() throws(KVMError) -> MPState { try get(CKVM_GET_MP_STATE, "KVM_GET_MP_STATE", as: kvm_mp_state.self) }
    /// KVM_SET_MP_STATE.
    public func setMPState(_ state: MPState) throws(KVMError) { try set(CKVM_SET_MP_STATE, "KVM_SET_MP_STATE", state) }

    /// KVM_GET_REGS, every byte of `struct kvm_regs`.
    public func rawRegisters() throws(KVMError) -> RawRegisters { try get(CKVM_GET_REGS, "KVM_GET_REGS", as: kvm_regs.self) }
    /// KVM_SET_REGS.
    public func setRawRegisters(_ state: RawRegisters) throws(KVMError) { try set(CKVM_SET_REGS, "KVM_SET_REGS", state) }
    /// KVM_GET_SREGS, every byte of `struct kvm_sregs`.
    public func rawSpecialRegisters() throws(KVMError) -> RawSpecialRegisters { try get(CKVM_GET_SREGS, "KVM_GET_SREGS", as: kvm_sregs.self) }
    /// KVM_SET_SREGS.
    public func setRawSpecialRegisters(_ state: RawSpecialRegisters) throws(KVMError) { try set(CKVM_SET_SREGS, "KVM_SET_SREGS", state) }
    /// KVM_GET_FPU.
    public func fpu() throws(KVMError) -> FPUState { try get(CKVM_GET_FPU, "KVM_GET_FPU", as: kvm_fpu.self) }
    /// KVM_SET_FPU.
    public func setFPU(_ state: FPUState) throws(KVMError) { try set(CKVM_SET_FPU, "KVM_SET_FPU", state) }
    /// KVM_GET_XCRS.
    public func xcrs() throws(KVMError) -> XCRState { try get(CKVM_GET_XCRS, "KVM_GET_XCRS", as: kvm_xcrs.self) }
    /// KVM_SET_XCRS.
    public func setXCRs(_ state: XCRState) throws(KVMError) { try set(CKVM_SET_XCRS, "KVM_SET_XCRS", state) }
    /// KVM_GET_DEBUGREGS.
    public func debugRegisters() throws(KVMError) -> DebugRegisterState { try get(CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", as: kvm_debugregs.self) }
    /// KVM_SET_DEBUGREGS.
    public func setDebugRegisters(_ state: DebugRegisterState) throws(KVMError) { try set(CKVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", state) }
    /// KVM_GET_LAPIC, the whole 1 KiB register page.
    public func localAPIC() throws(KVMError) -> LocalAPICState { try get(CKVM_GET_LAPIC, "KVM_GET_LAPIC", as: kvm_lapic_state.self) }
    /// KVM_SET_LAPIC.
    public func setLocalAPIC(_ state: LocalAPICState) throws(KVMError) { try set(CKVM_SET_LAPIC, "KVM_SET_LAPIC", state) }
    /// KVM_GET_VCPU_EVENTS: pending or injected exceptions, interrupts, NMIs, SIPI, SMM.
    public func events() throws(KVMError) -> VCPUEventState { try get(CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", as: kvm_vcpu_events.self) }
    /// KVM_SET_VCPU_EVENTS.
    public func setEvents(_ state: VCPUEventState) throws(KVMError) { try set(CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", state) }

    /// KVM_GET_TSC_KHZ.
    public func tscKHz() throws(KVMError) -> UInt32 {
        UInt32(truncatingIfNeeded: try descriptor.ioctl(CKVM_GET_TSC_KHZ, "KVM_GET_TSC_KHZ"))
    }

    /// KVM_GET_XSAVE2 (or KVM_GET_XSAVE when the area is the classic 4 KiB) into `size` bytes.
    public func xsave(size: Int) throws(KVMError) -> XSaveState {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        if size > MemoryLayout<kvm_xsave>.size {
            _ = try descriptor.ioctl(CKVM_GET_XSAVE2, buffer: buffer, "KVM_GET_XSAVE2")
        } else {
            _ = try descriptor.ioctl(CKVM_GET_XSAVE, buffer: buffer, "KVM_GET_XSAVE")
        }
        return XSaveState(bytes: Array(UnsafeRawBufferPointer(start: buffer, count: size)))
    }

    /// KVM_SET_XSAVE: the buffer is as large as KVM_GET_XSAVE2 made it.
    public func setXSave(_ state: XSaveState) throws(KVMError) {
        let size = max(state.bytes.count, MemoryLayout<kvm_xsave>.size)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        state.bytes.withUnsafeBytes { if let base = $0.baseAddress { buffer.copyMemory(from: base, byteCount: state.bytes.count) } }
        _ = try descriptor.ioctl(CKVM_SET_XSAVE, buffer: buffer, "KVM_SET_XSAVE")
    }

    /// KVM_GET_MSRS for `indices`. KVM stops at the first MSR it cannot read for this vCPU and
    /// returns how many it read; that one is left out and the rest asked again, so the result holds
    /// every readable MSR of the list (at most `indices.count` rounds).
    public func msrs(_ indices: [UInt32]) throws(KVMError) -> [MSRValue] {
        var result: [MSRValue] = []
        var remaining = indices[...]
        while !remaining.isEmpty {
            let batch = Array(remaining)
            let size = MemoryLayout<kvm_msrs>.size + batch.count * MemoryLayout<kvm_msr_entry>.stride
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            buffer.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(batch.count)
            let slots = (buffer + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
            for (position, index) in batch.enumerated() { slots[position].index = index }
            let read = Int(try descriptor.ioctl(CKVM_GET_MSRS, buffer: buffer, "KVM_GET_MSRS"))
            let valid = min(max(read, 0), batch.count)
            for position in 0..<valid { result.append(MSRValue(index: slots[position].index, value: slots[position].data)) }
            // Skip the one KVM refused (if any) and go on after it.
            remaining = remaining.dropFirst(min(valid + 1, remaining.count))
        }
        return result
    }

    /// KVM_SET_MSRS for saved values.
    public func setMSRs(_ msrs: [MSRValue]) throws(KVMError) {
        try setMSRs(msrs.map { (index: $0.index, value: $0.value) })
    }

    /// Reads every piece of this vCPU's state. The vCPU must be outside KVM_RUN with its last exit
    /// completed (see `Machine`'s pause), and every other vCPU must be stopped too: KVM_GET_VCPU_EVENTS
    /// and KVM_GET_LAPIC are unsafe while other vCPUs can send this one interrupts.
    ///
    /// The order is KVM's (it follows from what each GET does inside the kernel):
    /// 1. MP state first: KVM_GET_MP_STATE calls kvm_apic_accept_events(), which may deliver a
    ///    pending INIT/SIPI and so change the registers and the local APIC. Read after it, they
    ///    agree with the MP state saved.
    /// 2. Registers, special registers, FPU/XSAVE, XCRs, debug registers: plain reads.
    /// 3. The local APIC, then MSRs: reading the APIC syncs its pending-interrupt registers
    ///    (KVM_GET_LAPIC runs kvm_apic_getstate → sync PIR to IRR with posted interrupts), and the
    ///    TSC-deadline MSR is read out of the APIC timer.
    /// 4. Events last: the GETs before may move an interrupt between the APIC and the event
    ///    queue; what is pending at the end is what the guest sees next.
    public func saveState(msrIndices: [UInt32], xsaveSize: Int?, hasLocalAPIC: Bool) throws(KVMError) -> VCPUState {
        let mp = try mpState()
        let cpuid = try cpuid()
        let registers = try rawRegisters()
        let special = try rawSpecialRegisters()
        var xsave: XSaveState?
        var fpu: FPUState?
        var xcrs: XCRState?
        if let xsaveSize {
            xsave = try self.xsave(size: xsaveSize)
            xcrs = try self.xcrs()
        } else {
            fpu = try self.fpu()
        }
        let debug = try debugRegisters()
        let apic = hasLocalAPIC ? try localAPIC() : nil
        let msrs = try msrs(msrIndices)
        let events = try events()
        let tsc = try tscKHz()
        return VCPUState(
            cpuid: cpuid, mpState: mp, registers: registers, specialRegisters: special, xsave: xsave, fpu: fpu, xcrs: xcrs,
            debugRegisters: debug, localAPIC: apic, msrs: msrs, events: events, tscKHz: tsc)
    }

    /// Writes `state` back into a new vCPU of a VM built like the one saved (its irqchip, if any,
    /// created and restored already). The order is KVM's:
    /// 1. CPUID first: KVM sizes XSAVE, allows MSRs and masks CR4 bits by the guest's CPUID, so
    ///    every later SET is checked against it.
    /// 2. MP state before the registers: setting it can reset the vCPU's INIT/SIPI handling,
    ///    which would otherwise overwrite the registers.
    /// 3. Registers, then special registers (which also restore the APIC base MSR and EFER, so
    ///    the long-mode state the XSAVE and MSR writes assume is in place).
    /// 4. FPU/XSAVE and XCRs (XCR0 checked against the CPUID's XSAVE leaf), debug registers.
    /// 5. The local APIC after the special registers: KVM_SET_SREGS sets the APIC base (and x2APIC
    ///    mode), which decides how KVM_SET_LAPIC reads the APIC ID register.
    /// 6. MSRs after the local APIC: MSR_IA32_TSC_DEADLINE is only taken while the APIC timer is
    ///    in TSC-deadline mode, which KVM_SET_LAPIC restores.
    /// 7. Events last, after the registers: KVM_SET_REGS clears a pending exception, which
    ///    KVM_SET_VCPU_EVENTS then restores.
    public func restoreState(_ state: VCPUState) throws(KVMError) {
        try setCPUID(state.cpuid)
        try setMPState(state.mpState)
        try setRawRegisters(state.registers)
        try setRawSpecialRegisters(state.specialRegisters)
        if let xsave = state.xsave { try setXSave(xsave) }
        if let fpu = state.fpu { try setFPU(fpu) }
        if let xcrs = state.xcrs { try setXCRs(xcrs) }
        try setDebugRegisters(state.debugRegisters)
        if let apic = state.localAPIC { try setLocalAPIC(apic) }
        // Only the MSRs whose saved value differs from the new vCPU's are written: KVM refuses
        // writes to some MSRs of its own list in some states (MSR_KVM_ASYNC_PF_ACK while async
        // page faults are off, measured on KVM-PVM) even of the value they already hold, and a
        // value that is already there needs no write. A differing value KVM refuses is an error.
        let current = Dictionary(try msrs(state.msrs.map(\.index)).map { ($0.index, $0.value) }, uniquingKeysWith: { first, _ in first })
        try setMSRs(state.msrs.filter { current[$0.index] != $0.value })
        try setEvents(state.events)
    }
}

extension VirtualMachine {
    /// KVM_GET_IRQCHIP for chip `id` (0 PIC master, 1 PIC slave, 2 IOAPIC).
    public func irqchip(_ id: UInt32) throws(KVMError) -> IRQChipState {
        var chip = kvm_irqchip()
        chip.chip_id = id
        _ = try descriptor.ioctl(CKVM_GET_IRQCHIP, &chip, "KVM_GET_IRQCHIP")
        return KVMStateBlob(chip)
    }

    /// KVM_SET_IRQCHIP: the chip id is inside the state.
    public func setIRQChip(_ state: IRQChipState) throws(KVMError) {
        var chip = state.value
        _ = try descriptor.ioctl(CKVM_SET_IRQCHIP, &chip, "KVM_SET_IRQCHIP")
    }

    /// KVM_GET_PIT2.
    public func pitState() throws(KVMError) -> PITState {
        var state = kvm_pit_state2()
        _ = try descriptor.ioctl(CKVM_GET_PIT2, &state, "KVM_GET_PIT2")
        return KVMStateBlob(state)
    }

    /// KVM_SET_PIT2.
    public func setPITState(_ state: PITState) throws(KVMError) {
        var raw = state.value
        _ = try descriptor.ioctl(CKVM_SET_PIT2, &raw, "KVM_SET_PIT2")
    }

    /// KVM_GET_CLOCK: the kvmclock's current value in ns.
    public func clock() throws(KVMError) -> ClockState {
        var data = kvm_clock_data()
        _ = try descriptor.ioctl(CKVM_GET_CLOCK, &data, "KVM_GET_CLOCK")
        return KVMStateBlob(data)
    }

    /// KVM_SET_CLOCK with only the clock value (flags cleared: KVM_CLOCK_REALTIME and the host
    /// TSC of another boot mean nothing here), so the guest's kvmclock continues from it.
    public func setClock(_ state: ClockState) throws(KVMError) {
        var data = kvm_clock_data()
        data.clock = state.value.clock
        _ = try descriptor.ioctl(CKVM_SET_CLOCK, &data, "KVM_SET_CLOCK")
    }

    /// Everything KVM keeps for the VM. `hasIRQChip` and `hasPIT` say what was created.
    public func saveState(hasIRQChip: Bool, hasPIT: Bool) throws(KVMError) -> VMKernelState {
        let chips = hasIRQChip ? try [0, 1, 2].map { (id: UInt32) throws(KVMError) in try irqchip(id) } : []
        return VMKernelState(irqchips: chips, pit: hasPIT ? try pitState() : nil, clock: try clock())
    }

    /// Writes the VM state back, before any vCPU state (see `Machine`'s restore): the PIC, IOAPIC
    /// and PIT route interrupts into the local APICs that the vCPUs' state then fills.
    public func restoreState(_ state: VMKernelState) throws(KVMError) {
        for chip in state.irqchips { try setIRQChip(chip) }
        if let pit = state.pit { try setPITState(pit) }
        try setClock(state.clock)
    }
}

extension KVMSystem {
    /// The KVM ioctl requests that saving and restoring a snapshot make (every state pair above):
    /// what the seccomp filter of a VMM whose control API can take a snapshot must allow on its
    /// own threads.
    public static let snapshotIoctlRequests: [UInt] = [
        CKVM_GET_CLOCK, CKVM_GET_CPUID2, CKVM_GET_DEBUGREGS, CKVM_GET_FPU, CKVM_GET_IRQCHIP, CKVM_GET_LAPIC, CKVM_GET_MP_STATE,
        CKVM_GET_MSRS, CKVM_GET_MSR_INDEX_LIST, CKVM_GET_PIT2, CKVM_GET_REGS, CKVM_GET_SREGS, CKVM_GET_TSC_KHZ,
        CKVM_GET_VCPU_EVENTS, CKVM_GET_XCRS, CKVM_GET_XSAVE, CKVM_GET_XSAVE2, CKVM_SET_CLOCK, CKVM_SET_DEBUGREGS, CKVM_SET_FPU,
        CKVM_SET_IRQCHIP, CKVM_SET_LAPIC, CKVM_SET_MP_STATE, CKVM_SET_PIT2, CKVM_SET_REGS, CKVM_SET_SREGS, CKVM_SET_VCPU_EVENTS,
        CKVM_SET_XCRS, CKVM_SET_XSAVE,
    ]
}
