import CKVM
import Glibc

/// A virtual CPU: its file descriptor and the `kvm_run` area shared with the kernel.
///
/// The vCPU owns the mapping and unmaps it when it goes away. Run it from one OS thread only; the
/// only thing another thread may do is `kick` it out of KVM_RUN (api.rst: "immediate_exit").
public final class VCPU: @unchecked Sendable {
    public let id: UInt32
    let descriptor: OwnedDescriptor
    let runArea: UnsafeMutableRawPointer
    let runAreaSize: Int

    init(id: UInt32, descriptor: OwnedDescriptor, runArea: UnsafeMutableRawPointer, runAreaSize: Int) {
        self.id = id
        self.descriptor = descriptor
        self.runArea = runArea
        self.runAreaSize = runAreaSize
    }

    deinit { munmap(runArea, runAreaSize) }

    /// KVM_RUN: enters the guest until the next exit and decodes it.
    ///
    /// A signal during KVM_RUN (a kick) is not an error: it comes back as `.interrupted`.
    @inline(__always)
    public func run() throws(KVMError) -> VCPUExit {
        if ckvm_ioctl(descriptor.rawValue, CKVM_RUN) < 0 {
            let error = errno
            if error == EINTR || error == EAGAIN { return .interrupted }
            throw KVMError(call: "KVM_RUN", errno: error)
        }
        return try VCPUExit.decode(run: runArea, size: runAreaSize)
    }

    /// `kvm_run.immediate_exit`: while set, KVM_RUN returns EINTR at once instead of entering the guest.
    ///
    /// Set it before sending the kick signal, so a signal that lands just before KVM_RUN is not lost.
    public var immediateExit: Bool {
        get { runArea.assumingMemoryBound(to: kvm_run.self).pointee.immediate_exit != 0 }
        set { runArea.assumingMemoryBound(to: kvm_run.self).pointee.immediate_exit = newValue ? 1 : 0 }
    }

    /// KVM_GET_REGS.
    public func registers() throws(KVMError) -> Registers {
        var raw = kvm_regs()
        _ = try descriptor.ioctl(CKVM_GET_REGS, &raw, "KVM_GET_REGS")
        return Registers(raw)
    }

    /// KVM_SET_REGS.
    public func setRegisters(_ registers: Registers) throws(KVMError) {
        var raw = registers.raw
        _ = try descriptor.ioctl(CKVM_SET_REGS, &raw, "KVM_SET_REGS")
    }

    /// KVM_GET_SREGS.
    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        var raw = kvm_sregs()
        _ = try descriptor.ioctl(CKVM_GET_SREGS, &raw, "KVM_GET_SREGS")
        return SpecialRegisters(raw)
    }

    /// KVM_SET_SREGS.
    public func setSpecialRegisters(_ registers: SpecialRegisters) throws(KVMError) {
        var raw = registers.raw
        _ = try descriptor.ioctl(CKVM_SET_SREGS, &raw, "KVM_SET_SREGS")
    }

    /// KVM_SET_CPUID2: what CPUID reports inside the guest.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        let size = MemoryLayout<kvm_cpuid2>.size + entries.count * MemoryLayout<kvm_cpuid_entry2>.stride
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(entries.count)
        let slots = (buffer + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
        for (index, entry) in entries.enumerated() { slots[index] = entry.raw }
        _ = try descriptor.ioctl(CKVM_SET_CPUID2, buffer: buffer, "KVM_SET_CPUID2")
    }

    /// KVM_GET_LAPIC / KVM_SET_LAPIC around `change`: the local APIC's 1 KiB register page, as
    /// bytes at the APIC's own offsets (Intel SDM vol. 3, table 11-1). Needs the in-kernel irqchip.
    public func modifyLocalAPIC(_ change: (inout [UInt8]) -> Void) throws(KVMError) {
        var state = kvm_lapic_state()
        _ = try descriptor.ioctl(CKVM_GET_LAPIC, &state, "KVM_GET_LAPIC")
        var bytes = withUnsafeBytes(of: state.regs) { Array($0) }
        change(&bytes)
        withUnsafeMutableBytes(of: &state.regs) { raw in
            for index in 0..<min(raw.count, bytes.count) { raw[index] = bytes[index] }
        }
        _ = try descriptor.ioctl(CKVM_SET_LAPIC, &state, "KVM_SET_LAPIC")
    }

    /// KVM_SET_MSRS: writes model-specific registers, given as (index, value) pairs.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        let size = MemoryLayout<kvm_msrs>.size + msrs.count * MemoryLayout<kvm_msr_entry>.stride
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        buffer.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(msrs.count)
        let slots = (buffer + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        for (position, msr) in msrs.enumerated() {
            slots[position].index = msr.index
            slots[position].data = msr.value
        }
        let written = try descriptor.ioctl(CKVM_SET_MSRS, buffer: buffer, "KVM_SET_MSRS")
        guard written == msrs.count else {
            let failed = msrs[Int(written)].index
            throw KVMError(call: "KVM_SET_MSRS", errno: 0, hint: "KVM refused MSR 0x\(String(failed, radix: 16))")
        }
    }
}
