/// One entry of a resource template, the buffer a device's `_CRS` returns (ACPI 6.5 §6.4,
/// "Resource Data Types for ACPI"). Only the descriptors this machine's devices need.
public enum ResourceDescriptor: Equatable, Sendable {
    /// ASL `IO (Decode16, minimum, maximum, alignment, length)`: the I/O Port Descriptor (§6.4.2.5,
    /// small item 0x08, 7 data bytes), decoding all 16 address bits.
    case ioPort(minimum: UInt16, maximum: UInt16, alignment: UInt8, length: UInt8)
    /// ASL `IRQNoFlags () { irqs }`: the IRQ Descriptor without its flags byte (§6.4.2.1, small
    /// item 0x04, 2 data bytes), a mask of ISA IRQs 0–15; edge-triggered, active-high, exclusive.
    case irqNoFlags([UInt8])
    /// ASL `Memory32Fixed (ReadWrite or ReadOnly, base, length)`: the 32-bit Fixed Memory Range
    /// Descriptor (§6.4.3.4, large item 0x06, 9 data bytes).
    case memory32Fixed(base: UInt32, length: UInt32, writable: Bool)
    /// ASL `Interrupt (ResourceConsumer, Edge or Level, ActiveHigh or ActiveLow, Exclusive or Shared)
    /// { interrupts }`: the Extended Interrupt Descriptor (§6.4.3.6, large item 0x09) with global
    /// system interrupt numbers, consumed by the device; no resource source.
    case interrupt(_ interrupts: [UInt32], edgeTriggered: Bool, activeLow: Bool, shared: Bool)

    /// The descriptor's bytes.
    public func encoded() throws(FirmwareTableError) -> [UInt8] {
        var bytes: [UInt8] = []
        switch self {
        case .ioPort(let minimum, let maximum, let alignment, let length):
            bytes.append(Self.smallItem(name: 0x08, length: 7))
            bytes.append(0x01)  // bit 0: the device decodes 16 address bits
            bytes.appendLittleEndian(minimum)
            bytes.appendLittleEndian(maximum)
            bytes.append(alignment)
            bytes.append(length)
        case .irqNoFlags(let irqs):
            var mask: UInt16 = 0
            for irq in irqs {
                guard irq < 16 else { throw .invalidDescription("IRQ descriptor for IRQ \(irq): only ISA IRQs 0-15 fit its mask") }
                mask |= 1 << UInt16(irq)
            }
            bytes.append(Self.smallItem(name: 0x04, length: 2))
            bytes.appendLittleEndian(mask)
        case .memory32Fixed(let base, let length, let writable):
            guard UInt64(base) + UInt64(length) <= 1 << 32 else {
                throw .invalidDescription("Memory32Fixed at 0x\(String(base, radix: 16)) of 0x\(String(length, radix: 16)) bytes passes 4 GiB")
            }
            bytes.append(Self.largeItem(name: 0x06))
            bytes.appendLittleEndian(UInt16(9))
            bytes.append(writable ? 0x01 : 0x00)  // bit 0: write status
            bytes.appendLittleEndian(base)
            bytes.appendLittleEndian(length)
        case .interrupt(let interrupts, let edgeTriggered, let activeLow, let shared):
            guard !interrupts.isEmpty, interrupts.count <= 0xFF else {
                throw .tooLarge(what: "Interrupt descriptor interrupt count", size: interrupts.count, limit: 0xFF)
            }
            bytes.append(Self.largeItem(name: 0x09))
            bytes.appendLittleEndian(UInt16(2 + 4 * interrupts.count))
            // Interrupt vector flags: bit 0 consumer, bit 1 edge (else level), bit 2 active-low,
            // bit 3 shared, bit 4 wake capable (never here).
            var flags: UInt8 = 0x01
            if edgeTriggered { flags |= 1 << 1 }
            if activeLow { flags |= 1 << 2 }
            if shared { flags |= 1 << 3 }
            bytes.append(flags)
            bytes.append(UInt8(interrupts.count))
            for interrupt in interrupts { bytes.appendLittleEndian(interrupt) }
        }
        return bytes
    }

    /// `descriptors` followed by the End Tag (§6.4.2.9, small item 0x0F, 1 data byte): its checksum
    /// byte makes the whole template, end tag included, sum to zero. (ASL compilers write 0, which
    /// §6.4.2.9 also accepts as "treat the checksum as valid"; this one is the real sum.)
    public static func template(_ descriptors: [ResourceDescriptor]) throws(FirmwareTableError) -> [UInt8] {
        var bytes: [UInt8] = []
        for descriptor in descriptors { bytes += try descriptor.encoded() }
        bytes.append(smallItem(name: 0x0F, length: 1))
        bytes.append(zeroSumChecksum(bytes))
        return bytes
    }

    /// A small item's tag byte (§6.4.2): bit 7 clear, the item name in bits 6:3, the data length in
    /// bits 2:0.
    static func smallItem(name: UInt8, length: UInt8) -> UInt8 { name << 3 | length }

    /// A large item's tag byte (§6.4.3): bit 7 set, the item name in bits 6:0; a 16-bit data
    /// length follows.
    static func largeItem(name: UInt8) -> UInt8 { 0x80 | name }
}
