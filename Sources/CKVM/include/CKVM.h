// CKVM: the C face of <linux/kvm.h> for Swift.
//
// Swift cannot import the _IO/_IOR/_IOW macros that build ioctl request numbers, nor call the
// variadic ioctl(2). This header exports each request number as a `static const unsigned long`
// and offers three non-variadic ioctl shims. It holds no logic: everything else lives in the
// Swift `KVM` module, the only code that calls these.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>
// eventfd(2), for ioeventfds and irqfds (glibc's Swift module map leaves it out).
#include <sys/eventfd.h>

// MARK: - ioctl request numbers (Documentation/virt/kvm/api.rst)

// System ioctls, on the /dev/kvm file descriptor.
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

// VM ioctls, on a VM file descriptor.
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CKVM_IRQFD = KVM_IRQFD;
// VM state for snapshots: the in-kernel PIC and IOAPIC, the in-kernel PIT, the KVM clock.
static const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CKVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CKVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;

// vCPU ioctls, on a vCPU file descriptor.
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
// vCPU state for snapshots.
static const unsigned long CKVM_GET_CPUID2 = KVM_GET_CPUID2;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_GET_XSAVE2 = KVM_GET_XSAVE2;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;

// MARK: - kvm_run layout
// Swift imports the fields of kvm_run's anonymous union as computed properties, so
// MemoryLayout.offset(of:) cannot see them: the offsets Swift needs come from here.

/// Where an MMIO exit's data bytes lie in the run area.
static const unsigned long CKVM_RUN_MMIO_DATA_OFFSET = offsetof(struct kvm_run, mmio.data);

// MARK: - Non-variadic ioctl shims
// Each returns what ioctl(2) returns; errno is left for the caller to read.

int ckvm_ioctl(int fd, unsigned long request);
int ckvm_ioctl_pointer(int fd, unsigned long request, void *argument);
int ckvm_ioctl_value(int fd, unsigned long request, unsigned long argument);

// MARK: - Kicking a vCPU thread out of KVM_RUN

/// The signal the VMM sends a vCPU thread to interrupt a blocking KVM_RUN (SIGRTMIN + 1).
int ckvm_kick_signal(void);

/// Installs an empty handler for `signal` without SA_RESTART, so that a KVM_RUN interrupted by it
/// returns EINTR instead of being restarted. Returns 0, or -1 with errno set (sigaction(2)).
int ckvm_install_kick_handler(int signal);

/// Unblocks `signal` for the calling thread (pthread_sigmask(2)). A thread inherits its creator's
/// mask, and threads of Swift's and Dispatch's pools block most signals: a vCPU thread started from
/// one of them would never see its kick. Returns 0 or an errno value.
int ckvm_unblock_signal(int signal);

/// Names the calling thread (prctl(PR_SET_NAME); at most 15 bytes are kept). Returns prctl's result.
int ckvm_name_current_thread(const char *name);

#endif
