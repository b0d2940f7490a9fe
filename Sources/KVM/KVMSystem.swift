import CKVM
import Glibc

/// The KVM subsystem: an open `/dev/kvm`.
///
/// One per process is enough; it creates virtual machines and answers questions about what the
/// host's KVM supports. Modelled on rust-vmm's `Kvm` (kvm-ioctls/src/ioctls/system.rs).
public final class KVMSystem: @unchecked Sendable {
    /// The stable KVM API version every kernel since 2.6.22 reports (api.rst, KVM_GET_API_VERSION).
    public static let expectedAPIVersion: Int32 = 12

    let descriptor: OwnedDescriptor
    /// The size of the shared `kvm_run` area each vCPU maps (KVM_GET_VCPU_MMAP_SIZE), asked once.
    public let vcpuMapSize: Int

    /// Opens `/dev/kvm` (or `path`) and checks the API version.
    ///
    /// Throws a `KVMError` whose hint says how to fix the usual problems: the device missing
    /// (module not loaded, virtualization disabled) or not permitted (the `kvm` group).
    public init(path: String = "/dev/kvm") throws(KVMError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let error = errno
            throw KVMError(call: "open(\(path))", errno: error, hint: KVMSystem.openHint(errno: error, path: path))
        }
        descriptor = OwnedDescriptor(fd)
        let version = try descriptor.ioctl(CKVM_GET_API_VERSION, "KVM_GET_API_VERSION")
        guard version == KVMSystem.expectedAPIVersion else {
            throw KVMError(
                call: "KVM_GET_API_VERSION", errno: 0,
                hint: "the kernel reports KVM API version \(version), this VMM speaks version \(KVMSystem.expectedAPIVersion)")
        }
        vcpuMapSize = Int(try descriptor.ioctl(CKVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE"))
    }

    /// What to tell a user whose `open(/dev/kvm)` failed with `errno`.
    static func openHint(errno: Int32, path: String) -> String {
        switch errno {
        case ENOENT, ENODEV, ENXIO:
            return "\(path) is not there: load the KVM module (modprobe kvm_intel or kvm_amd) and enable virtualization (VT-x/AMD-V) in the firmware settings"
        case EACCES, EPERM:
            return "no permission to use \(path): add your user to the kvm group (sudo usermod -aG kvm $USER, then log in again) or run as root"
        case EBUSY:
            return "\(path) is busy: another hypervisor (VirtualBox, VMware) may hold the virtualization extensions"
        default:
            return "check that \(path) is a working KVM device"
        }
    }

    /// Whether `/dev/kvm` exists at all (it may still be unusable).
    public static var deviceExists: Bool { access("/dev/kvm", F_OK) == 0 }

    /// KVM_CHECK_EXTENSION: the value the host reports for a capability (0 when unsupported).
    public func checkExtension(_ capability: Int32) -> Int32 {
        (try? descriptor.ioctl(CKVM_CHECK_EXTENSION, value: UInt(capability), "KVM_CHECK_EXTENSION")) ?? 0
    }

    /// KVM_CREATE_VM: a new, empty virtual machine.
    public func makeVirtualMachine() throws(KVMError) -> VirtualMachine {
        let fd = try descriptor.ioctl(CKVM_CREATE_VM, value: 0, "KVM_CREATE_VM")
        return VirtualMachine(descriptor: OwnedDescriptor(fd), system: self)
    }

    /// KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can offer a guest on this host.
    ///
    /// The list is the same for the life of the process; callers that create many VMs should ask
    /// once and keep it.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            let size = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(capacity)
            do {
                _ = try descriptor.ioctl(CKVM_GET_SUPPORTED_CPUID, buffer: buffer, "KVM_GET_SUPPORTED_CPUID")
            } catch where error.errno == E2BIG && capacity < 4096 {
                capacity *= 2
                continue
            }
            let count = Int(buffer.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent)
            let entries = (buffer + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
            return (0..<count).map { CPUIDEntry(entries[$0]) }
        }
    }
}

/// KVM capability numbers (KVM_CHECK_EXTENSION) the VMM asks about.
public enum KVMCapability {
    /// KVM_CAP_MAX_VCPUS: the most vCPUs one VM may have.
    public static let maxVCPUs = Int32(KVM_CAP_MAX_VCPUS)
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel local APIC has the TSC-deadline timer mode, which
    /// KVM_GET_SUPPORTED_CPUID never reports (it depends on KVM_CREATE_IRQCHIP).
    public static let tscDeadlineTimer = Int32(KVM_CAP_TSC_DEADLINE_TIMER)
}
