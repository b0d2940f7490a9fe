import CKVM
import Glibc

/// An eventfd(2): a 64-bit counter in the kernel that one side adds to and the other reads,
/// waking it. KVM uses them in both directions: an ioeventfd is signalled by KVM when the guest
/// writes a given address (no exit to user space), an irqfd is signalled by us to make KVM
/// inject an interrupt (no ioctl per interrupt).
public final class EventFD: @unchecked Sendable {
    // @unchecked: the descriptor is immutable; eventfd reads and writes are thread-safe in the kernel.
    public let descriptor: Int32

    /// A non-blocking eventfd with a counter of zero.
    public init() throws(KVMError) {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { throw KVMError(call: "eventfd", errno: errno) }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Adds one to the counter, waking a reader (or, for an irqfd, injecting the interrupt).
    public func signal() {
        var one: UInt64 = 1
        // Fails only if the counter would overflow 2^64 - 2, i.e. never in practice; it stays signalled then.
        _ = withUnsafeBytes(of: &one) { write(descriptor, $0.baseAddress, 8) }
    }

    /// Reads and clears the counter: how many signals arrived since the last read (0 if none).
    @discardableResult
    public func consume() -> UInt64 {
        var value: UInt64 = 0
        let count = withUnsafeMutableBytes(of: &value) { read(descriptor, $0.baseAddress, 8) }
        return count == 8 ? value : 0
    }
}
