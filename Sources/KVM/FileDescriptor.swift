import CKVM
import Glibc

/// An owned file descriptor: closed exactly once, when its owner goes away.
///
/// `KVMSystem`, `VirtualMachine` and `VCPU` each own one; nothing else closes it.
final class OwnedDescriptor {
    let rawValue: Int32

    init(_ rawValue: Int32) { self.rawValue = rawValue }

    deinit { close(rawValue) }

    /// An ioctl with no argument.
    @inline(__always)
    func ioctl(_ request: UInt, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
        try retryingInterrupts(name()) { ckvm_ioctl(rawValue, request) }
    }

    /// An ioctl whose argument is an integer.
    @inline(__always)
    func ioctl(_ request: UInt, value: UInt, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
        try retryingInterrupts(name()) { ckvm_ioctl_value(rawValue, request, value) }
    }

    /// An ioctl whose argument points at a structure the kernel reads or fills.
    @inline(__always)
    func ioctl<T>(_ request: UInt, _ argument: inout T, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
        try retryingInterrupts(name()) { withUnsafeMutablePointer(to: &argument) { ckvm_ioctl_pointer(rawValue, request, $0) } }
    }

    /// An ioctl whose argument is a raw buffer (for variable-length structures such as `kvm_cpuid2`).
    @inline(__always)
    func ioctl(_ request: UInt, buffer: UnsafeMutableRawPointer, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
        try retryingInterrupts(name()) { ckvm_ioctl_pointer(rawValue, request, buffer) }
    }
}
