import CKVM
import Glibc

/// A virtual machine: the file descriptor KVM_CREATE_VM returned.
///
/// It holds guest memory slots and creates vCPUs. Modelled on rust-vmm's `VmFd`.
public final class VirtualMachine: @unchecked Sendable {
    let descriptor: OwnedDescriptor
    /// The system the VM was created from (kept alive for the `kvm_run` map size).
    public let system: KVMSystem

    init(descriptor: OwnedDescriptor, system: KVMSystem) {
        self.descriptor = descriptor
        self.system = system
    }

    /// KVM_SET_USER_MEMORY_REGION: maps `size` bytes of host memory at `hostAddress` into the guest's
    /// physical address space at `guestAddress`, as memory slot `slot`.
    ///
    /// The host memory must stay mapped for as long as the slot exists; the caller owns it.
    public func setUserMemoryRegion(
        slot: UInt32, guestAddress: UInt64, size: UInt64, hostAddress: UnsafeMutableRawPointer, readOnly: Bool = false
    ) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: readOnly ? UInt32(KVM_MEM_READONLY) : 0, guest_phys_addr: guestAddress,
            memory_size: size, userspace_addr: UInt64(UInt(bitPattern: hostAddress)))
        _ = try descriptor.ioctl(CKVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION")
    }

    /// KVM_SET_TSS_ADDR: three pages of guest-physical address space, outside RAM, that Intel VMX
    /// needs for real-mode emulation. Harmless elsewhere.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        _ = try descriptor.ioctl(CKVM_SET_TSS_ADDR, value: UInt(address), "KVM_SET_TSS_ADDR")
    }

    /// KVM_SET_IDENTITY_MAP_ADDR: one page, outside RAM, for VMX's real-mode identity page table.
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var value = address
        _ = try descriptor.ioctl(CKVM_SET_IDENTITY_MAP_ADDR, &value, "KVM_SET_IDENTITY_MAP_ADDR")
    }

    /// KVM_CREATE_IRQCHIP: the in-kernel PIC, IOAPIC and local APICs.
    public func createInterruptController() throws(KVMError) {
        _ = try descriptor.ioctl(CKVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP")
    }

    /// KVM_CREATE_PIT2: KVM's in-kernel 8254 PIT on ports 0x40–0x43, wired to GSI 0. With
    /// `speakerDummy`, port 0x61 is emulated too (KVM_PIT_SPEAKER_DUMMY), as Linux's calibration needs.
    public func createInKernelPIT(speakerDummy: Bool = true) throws(KVMError) {
        var config = kvm_pit_config()
        config.flags = speakerDummy ? UInt32(KVM_PIT_SPEAKER_DUMMY) : 0
        _ = try descriptor.ioctl(CKVM_CREATE_PIT2, &config, "KVM_CREATE_PIT2")
    }

    /// KVM_IRQ_LINE: drives an in-kernel interrupt controller input (GSI) high or low.
    public func setInterruptLine(_ gsi: UInt32, high: Bool) throws(KVMError) {
        var level = kvm_irq_level()
        level.irq = gsi
        level.level = high ? 1 : 0
        _ = try descriptor.ioctl(CKVM_IRQ_LINE, &level, "KVM_IRQ_LINE")
    }

    /// KVM_IOEVENTFD: from now on a guest write of `length` bytes to MMIO `address` (or, with
    /// `datamatch`, only a write of that value) signals `event` inside KVM and the vCPU carries on
    /// without an exit to user space. Used for virtio queue notifications.
    public func registerIOEventFD(_ event: EventFD, mmioAddress address: UInt64, length: UInt32, datamatch: UInt64? = nil)
        throws(KVMError)
    {
        var request = kvm_ioeventfd()
        request.addr = address
        request.len = length
        request.fd = event.descriptor
        if let datamatch {
            request.datamatch = datamatch
            request.flags = UInt32(1 << kvm_ioeventfd_flag_nr_datamatch)
        }
        _ = try descriptor.ioctl(CKVM_IOEVENTFD, &request, "KVM_IOEVENTFD")
    }

    /// KVM_IRQFD: from now on signalling `event` makes KVM pulse interrupt input `gsi` (an edge
    /// on the in-kernel PIC and IOAPIC), without an ioctl from us.
    public func registerIRQFD(_ event: EventFD, gsi: UInt32) throws(KVMError) {
        var request = kvm_irqfd()
        request.fd = UInt32(bitPattern: event.descriptor)
        request.gsi = gsi
        _ = try descriptor.ioctl(CKVM_IRQFD, &request, "KVM_IRQFD")
    }

    /// KVM_CREATE_VCPU: vCPU number `id`, with its `kvm_run` area mapped.
    public func makeVCPU(id: UInt32) throws(KVMError) -> VCPU {
        let fd = try descriptor.ioctl(CKVM_CREATE_VCPU, value: UInt(id), "KVM_CREATE_VCPU")
        let owned = OwnedDescriptor(fd)
        let size = system.vcpuMapSize
        guard let area = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), area != MAP_FAILED else {
            throw KVMError(call: "mmap(kvm_run)", errno: errno)
        }
        return VCPU(id: id, descriptor: owned, runArea: area, runAreaSize: size)
    }
}
