/// An interrupt input of the guest's interrupt controller, as a device sees it: a wire it drives
/// high or low. The VMM connects it to KVM (KVM_IRQ_LINE on a GSI, or an irqfd); tests connect it
/// to a recorder. Devices compute their level in one place and call `setLevel` only on change
/// (kvmtool's `serial8250_update_irq` shape).
public protocol InterruptLine: AnyObject {
    func setLevel(_ high: Bool)
}

/// Monotonic time as a device input, in nanoseconds since an arbitrary start. Devices never read
/// the wall clock themselves: the VMM gives them one of these, and tests give them a hand-wound one.
public protocol GuestClock: AnyObject {
    var nanoseconds: UInt64 { get }
}
