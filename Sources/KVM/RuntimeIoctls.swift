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
