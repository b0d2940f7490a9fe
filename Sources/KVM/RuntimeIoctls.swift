import CKVM

extension KVMSystem {
    /// The KVM ioctl requests the VMM makes once its machine is built and running (vCPU loops,
    /// interrupt lines, register dumps at a deadline, APIC and MSR state for starting CPUs): what a
    /// seccomp filter installed before the vCPUs start must allow. Creating VMs, vCPUs, memory
    /// slots and devices happens before, and is not in it.
    public static let runtimeIoctlRequests: [UInt] = [
        CKVM_RUN, CKVM_GET_REGS, CKVM_SET_REGS, CKVM_GET_SREGS, CKVM_SET_SREGS, CKVM_IRQ_LINE, CKVM_GET_LAPIC,
        CKVM_SET_LAPIC, CKVM_SET_MSRS, CKVM_CHECK_EXTENSION, CKVM_IRQFD, CKVM_IOEVENTFD,
    ]
}

extension KVMSystem {
    /// The KVM ioctl requests that building a machine makes (a VM, its memory slots, interrupt
    /// controllers and PIT, vCPUs and their first state): what the seccomp filter of a VMM that
    /// builds its machine again after a reset must allow too.
    public static let buildIoctlRequests: [UInt] = [
        CKVM_GET_API_VERSION, CKVM_CREATE_VM, CKVM_GET_VCPU_MMAP_SIZE, CKVM_GET_SUPPORTED_CPUID, CKVM_CREATE_VCPU,
        CKVM_SET_USER_MEMORY_REGION, CKVM_SET_TSS_ADDR, CKVM_SET_IDENTITY_MAP_ADDR, CKVM_CREATE_IRQCHIP, CKVM_CREATE_PIT2,
        CKVM_SET_CPUID2, CKVM_GET_MSRS, CKVM_SET_FPU,
    ]
}
