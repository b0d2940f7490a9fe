import Synchronization
import VMMCore

/// Where a split virtqueue lives and how big it is, as the driver wrote it through the transport's
/// Queue* registers (virtio 1.2 §2.7, §4.2.2).
public struct VirtqueueConfiguration: Equatable, Sendable {
    /// QueueNum: the number of descriptors (a power of two, at most the device's maximum).
    public var size: UInt16 = 0
    public var ready = false
    /// The descriptor table: `size` entries of 16 bytes.
    public var descriptorTable: UInt64 = 0
    /// The driver area ("available ring"): flags, idx, `size` ring entries, used_event.
    public var availableRing: UInt64 = 0
    /// The device area ("used ring"): flags, idx, `size` entries of (id, len), avail_event.
    public var usedRing: UInt64 = 0

    public init(size: UInt16 = 0, descriptorTable: UInt64 = 0, availableRing: UInt64 = 0, usedRing: UInt64 = 0) {
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
    }

    /// Bytes of each area for a queue of `size` entries (§2.7: 16·n, 6 + 2·n, 6 + 8·n).
    static func areaSizes(_ size: UInt16) -> (descriptors: Int, available: Int, used: Int) {
        (16 * Int(size), 6 + 2 * Int(size), 6 + 8 * Int(size))
    }
}

/// One buffer of a descriptor chain: guest-physical, not yet checked against guest RAM (the device
/// checks each one when it touches it, through `GuestMemory`).
public struct VirtqueueBuffer: Equatable, Sendable {
    public var address: UInt64
    public var length: UInt32
    /// Device-writable (VIRTQ_DESC_F_WRITE); otherwise device-readable.
    public var writable: Bool

    public init(address: UInt64, length: UInt32, writable: Bool) {
        self.address = address
        self.length = length
        self.writable = writable
    }
}

/// Why a virtqueue cannot be used any more. Each of these is a driver error (or a hostile guest):
/// the transport marks the device DEVICE_NEEDS_RESET and stops serving the queue until the driver
/// resets it. None of them is ever a crash.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible, Sendable {
    /// QueueNum is zero, above the maximum, or not a power of two.
    case invalidSize(UInt16, maximum: UInt16)
    /// One of the three areas is misaligned or not wholly inside guest RAM.
    case areaOutsideMemory(name: String, address: UInt64)
    /// The driver's idx ran more than a queue's worth ahead of what the device has consumed.
    case availableIndexJump(available: UInt16, consumed: UInt16)
    /// A chain's head, or a `next` link, names a descriptor past the end of the table.
    case descriptorOutOfRange(index: UInt16, size: UInt16)
    /// A chain visits more descriptors than the table holds: it loops.
    case chainTooLong(head: UInt16)
    /// VIRTQ_DESC_F_INDIRECT, which this device does not offer.
    case indirectDescriptor(head: UInt16)
    /// A device-readable buffer after a device-writable one (§2.7.4.2 forbids it).
    case readableAfterWritable(head: UInt16)
    /// A snapshot's queue indices that no drained queue can have.
    case restoredIndices(nextAvailable: UInt16, nextUsed: UInt16, published: UInt16)

    public var description: String {
        switch self {
        case .invalidSize(let size, let maximum): "queue size \(size) is not a power of two between 1 and \(maximum)"
        case .areaOutsideMemory(let name, let address): "the \(name) at 0x\(String(address, radix: 16)) is misaligned or outside guest RAM"
        case .availableIndexJump(let available, let consumed): "available idx \(available) is more than a queue ahead of \(consumed)"
        case .descriptorOutOfRange(let index, let size): "descriptor \(index) is outside a table of \(size)"
        case .restoredIndices(let available, let used, let published):
            "restored queue indices (next available \(available), next used \(used)) do not match a drained queue whose used idx is \(published)"
        case .chainTooLong(let head): "the chain at descriptor \(head) is longer than the queue (a loop)"
        case .indirectDescriptor(let head): "the chain at descriptor \(head) uses indirect descriptors, which were not offered"
        case .readableAfterWritable(let head): "the chain at descriptor \(head) has a device-readable buffer after a writable one"
        }
    }
}

/// The device's side of a split virtqueue (virtio 1.2 §2.7): it takes chains the driver made
/// available and returns them in the used ring.
///
/// It knows only guest memory and the three addresses; every guest-controlled value (indices,
/// links, flags, lengths) is checked before it is believed. Not thread-safe: one thread (the
/// device's I/O worker) owns a queue while it is being served.
public struct SplitVirtqueue: Sendable {
    public let configuration: VirtqueueConfiguration
    /// The next available-ring position the device will read (its "last_avail_idx").
    public private(set) var nextAvailable: UInt16 = 0
    /// The idx the device will publish in the used ring next.
    public private(set) var nextUsed: UInt16 = 0
    /// While this asks for a stop, `nextChain` hands out no more chains (see `VirtqueueStopRequest`).
    public var stopRequest: VirtqueueStopRequest?

    static let descriptorNext: UInt16 = 1
    static let descriptorWrite: UInt16 = 2
    static let descriptorIndirect: UInt16 = 4
    /// VIRTQ_AVAIL_F_NO_INTERRUPT: the driver asks not to be interrupted.
    static let availableNoInterrupt: UInt16 = 1

    /// Checks what the driver configured: the size against `maximumSize`, and that each area is
    /// aligned (§2.7: 16, 2 and 4 bytes) and wholly inside guest RAM.
    public init(_ configuration: VirtqueueConfiguration, maximumSize: UInt16, memory: GuestMemory) throws(VirtqueueError) {
        let size = configuration.size
        guard size > 0, size <= maximumSize, size & (size &- 1) == 0 else {
            throw .invalidSize(size, maximum: maximumSize)
        }
        let sizes = VirtqueueConfiguration.areaSizes(size)
        for (name, address, length, alignment) in [
            ("descriptor table", configuration.descriptorTable, sizes.descriptors, UInt64(16)),
            ("available ring", configuration.availableRing, sizes.available, 2),
            ("used ring", configuration.usedRing, sizes.used, 4),
        ] {
            guard address % alignment == 0, (try? memory.hostPointer(for: GuestAddress(address), length: length)) != nil else {
                throw .areaOutsideMemory(name: name, address: address)
            }
        }
        self.configuration = configuration
    }

    private var size: UInt16 { configuration.size }

    /// A queue restored from a snapshot: the driver's configuration (checked as when the driver
    /// enables it) and the device's two indices. In-flight requests were drained before the
    /// snapshot, so every chain taken was used: `nextAvailable` must equal `nextUsed`, and
    /// `nextUsed` the used-ring idx the device last published in guest memory.
    public init(
        restoring configuration: VirtqueueConfiguration, maximumSize: UInt16, nextAvailable: UInt16, nextUsed: UInt16, memory: GuestMemory
    ) throws(VirtqueueError) {
        try self.init(configuration, maximumSize: maximumSize, memory: memory)
        let published = try load(UInt16.self, configuration.usedRing + 2, memory)
        guard nextAvailable == nextUsed, published == nextUsed else { throw .restoredIndices(nextAvailable: nextAvailable, nextUsed: nextUsed, published: published) }
        self.nextAvailable = nextAvailable
        self.nextUsed = nextUsed
    }

    /// Takes the next chain the driver made available: its head index and buffers (appended to
    /// `buffers`, which is emptied first). Nil when there is nothing new, or when `stopRequest`
    /// asks the device to stop (the chain stays available; a reset or disable discards it).
    public mutating func nextChain(memory: GuestMemory, buffers: inout [VirtqueueBuffer]) throws(VirtqueueError) -> UInt16? {
        buffers.removeAll(keepingCapacity: true)
        if let stopRequest, stopRequest.isRequested { return nil }
        let available = try load(UInt16.self, configuration.availableRing + 2, memory)
        guard available != nextAvailable else { return nil }
        guard available &- nextAvailable <= size else {
            throw .availableIndexJump(available: available, consumed: nextAvailable)
        }
        // The ring entry must be read after idx (the driver wrote it before idx).
        atomicMemoryFence(ordering: .acquiring)
        let slot = configuration.availableRing + 4 + 2 * UInt64(nextAvailable % size)
        let head = try load(UInt16.self, slot, memory)
        nextAvailable &+= 1

        var index = head
        var seenWritable = false
        for _ in 0..<Int(size) {
            guard index < size else { throw .descriptorOutOfRange(index: index, size: size) }
            let entry = configuration.descriptorTable + 16 * UInt64(index)
            let flags = try load(UInt16.self, entry + 12, memory)
            guard flags & Self.descriptorIndirect == 0 else { throw .indirectDescriptor(head: head) }
            let writable = flags & Self.descriptorWrite != 0
            guard writable || !seenWritable else { throw .readableAfterWritable(head: head) }
            seenWritable = writable
            buffers.append(
                VirtqueueBuffer(
                    address: try load(UInt64.self, entry, memory), length: try load(UInt32.self, entry + 8, memory),
                    writable: writable))
            guard flags & Self.descriptorNext != 0 else { return head }
            index = try load(UInt16.self, entry + 14, memory)
        }
        throw .chainTooLong(head: head)
    }

    /// Gives back the last `count` chains `nextChain` took and that were not used, so the next
    /// calls take them again (a device that found too few buffers for a whole frame waits for more).
    /// The driver may not touch an available chain until it is used (§2.7.13), so nothing changed.
    public mutating func rewind(_ count: UInt16) {
        precondition(count <= size, "rewind past more chains than the queue holds")
        nextAvailable &-= count
    }

    /// Returns chain `head` to the driver, saying the device wrote `length` bytes into its writable
    /// buffers, and publishes the new used idx.
    public mutating func addUsed(head: UInt16, length: UInt32, memory: GuestMemory) throws(VirtqueueError) {
        let entry = configuration.usedRing + 4 + 8 * UInt64(nextUsed % size)
        try store(UInt32(head), entry, memory)
        try store(length, entry + 4, memory)
        nextUsed &+= 1
        // The entry must be visible before the idx that covers it.
        atomicMemoryFence(ordering: .releasing)
        try store(nextUsed, configuration.usedRing + 2, memory)
    }

    /// Whether the driver set VIRTQ_AVAIL_F_NO_INTERRUPT (it polls, or is busy and will look anyway).
    public func driverSuppressesInterrupts(memory: GuestMemory) -> Bool {
        guard let flags = try? load(UInt16.self, configuration.availableRing, memory) else { return false }
        return flags & Self.availableNoInterrupt != 0
    }

    // The areas were checked to lie inside guest RAM when the queue was made; memory cannot shrink,
    // so these only fail if that check was wrong. They still fail cleanly.
    private func load<T: FixedWidthInteger>(_ type: T.Type, _ address: UInt64, _ memory: GuestMemory) throws(VirtqueueError) -> T {
        do { return try memory.load(T.self, at: GuestAddress(address)) } catch {
            throw .areaOutsideMemory(name: "queue area", address: address)
        }
    }

    private func store<T: FixedWidthInteger>(_ value: T, _ address: UInt64, _ memory: GuestMemory) throws(VirtqueueError) {
        do { try memory.store(value, at: GuestAddress(address)) } catch {
            throw .areaOutsideMemory(name: "queue area", address: address)
        }
    }
}
