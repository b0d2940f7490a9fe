import Synchronization
import VMMCore
import Virtio

/// Counts interrupt edges.
public final class CountingTrigger: InterruptTrigger, @unchecked Sendable {
    private let count = Atomic<Int>(0)
    public init() {}
    public var edges: Int { count.load(ordering: .relaxed) }
    public func trigger() { count.add(1, ordering: .relaxed) }
}

/// A virtio-mmio driver in plain memory, as Linux's virtio_mmio.c and virtio_ring.c would act:
/// it negotiates through the transport's registers, lays out a split queue in guest RAM, builds
/// descriptor chains there and reads the used ring back. Tests also use it to write what no
/// well-behaved driver would.
public struct MockDriver {
    public let transport: VirtioMMIOTransport
    public let memory: GuestMemory
    public let queueSize: UInt16
    // Queue areas and a data arena, all inside the 1 MiB of test RAM.
    public let descriptorTable: UInt64
    public let availableRing: UInt64
    public let usedRing: UInt64
    public var nextFree: UInt64
    public var availableIndex: UInt16 = 0
    public var nextDescriptor: UInt16 = 0
    /// The queue this driver drives (a device with several queues gets one driver per queue, each
    /// with its own areas and arena: `areas` moves them by that many bytes).
    public let queueIndex: UInt32

    public static func makeMemory(size: Int = 1 << 20) -> GuestMemory { try! GuestMemory(size: size) }

    public init(transport: VirtioMMIOTransport, queueSize: UInt16 = 16, queueIndex: UInt32 = 0, areas: UInt64 = 0, arena: UInt64 = 0x10000) {
        self.transport = transport
        self.memory = transport.memory
        self.queueSize = queueSize
        self.queueIndex = queueIndex
        descriptorTable = 0x1000 + areas
        availableRing = 0x3000 + areas
        usedRing = 0x4000 + areas
        nextFree = arena
    }

    // MARK: registers

    public func read(_ offset: UInt64) -> UInt32 {
        var value: UInt32 = 0
        withUnsafeMutableBytes(of: &value) { transport.read(offset: offset, data: $0) }
        return UInt32(littleEndian: value)
    }

    public func write(_ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { transport.write(offset: offset, data: $0) }
    }

    public var deviceFeatures: UInt64 {
        write(0x14, 0)
        let low = UInt64(read(0x10))
        write(0x14, 1)
        return low | UInt64(read(0x10)) << 32
    }

    /// The §3.1.1 sequence up to DRIVER_OK, accepting `features` (all offered ones by default) and
    /// setting up queue 0. Returns whether FEATURES_OK stuck.
    @discardableResult
    public func initialize(features: UInt64? = nil, size: UInt16? = nil, alsoSetUp others: [MockDriver] = []) -> Bool {
        write(0x70, 0)
        write(0x70, Virtio.Status.acknowledge)
        write(0x70, Virtio.Status.acknowledge | Virtio.Status.driver)
        let accepted = features ?? deviceFeatures
        write(0x24, 0)
        write(0x20, UInt32(truncatingIfNeeded: accepted))
        write(0x24, 1)
        write(0x20, UInt32(truncatingIfNeeded: accepted >> 32))
        write(0x70, Virtio.Status.acknowledge | Virtio.Status.driver | Virtio.Status.featuresOK)
        guard read(0x70) & Virtio.Status.featuresOK != 0 else { return false }
        setUpQueue(size: size ?? queueSize)
        for other in others { other.setUpQueue(size: other.queueSize) }
        write(0x70, Virtio.Status.acknowledge | Virtio.Status.driver | Virtio.Status.featuresOK | Virtio.Status.driverOK)
        return true
    }

    public func setUpQueue(size: UInt16, descriptors: UInt64? = nil, available: UInt64? = nil, used: UInt64? = nil) {
        write(0x30, queueIndex)
        write(0x38, UInt32(size))
        let table = descriptors ?? descriptorTable
        let avail = available ?? availableRing
        let usedAt = used ?? usedRing
        write(0x80, UInt32(truncatingIfNeeded: table))
        write(0x84, UInt32(truncatingIfNeeded: table >> 32))
        write(0x90, UInt32(truncatingIfNeeded: avail))
        write(0x94, UInt32(truncatingIfNeeded: avail >> 32))
        write(0xA0, UInt32(truncatingIfNeeded: usedAt))
        write(0xA4, UInt32(truncatingIfNeeded: usedAt >> 32))
        write(0x44, 1)
    }

    // MARK: memory

    /// Reserves `count` bytes of the data arena, filled with `bytes` if given.
    public mutating func allocate(_ count: Int, bytes: [UInt8] = []) -> UInt64 {
        let address = nextFree
        nextFree += UInt64((count + 15) / 16 * 16)
        try! memory.fill(0, count: count, at: GuestAddress(address))
        if !bytes.isEmpty { try! memory.write(bytes, at: GuestAddress(address)) }
        return address
    }

    /// Writes a raw descriptor.
    public func setDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let entry = GuestAddress(descriptorTable + 16 * UInt64(index))
        try! memory.store(address, at: entry)
        try! memory.store(length, at: entry.adding(8)!)
        try! memory.store(flags, at: entry.adding(12)!)
        try! memory.store(next, at: entry.adding(14)!)
    }

    /// Links `buffers` into a chain of fresh descriptors and returns its head.
    public mutating func addChain(_ buffers: [(address: UInt64, length: UInt32, writable: Bool)]) -> UInt16 {
        let head = nextDescriptor
        for (position, buffer) in buffers.enumerated() {
            let index = (nextDescriptor + UInt16(position)) % queueSize
            let last = position == buffers.count - 1
            setDescriptor(
                index, address: buffer.address, length: buffer.length,
                flags: (last ? 0 : 1) | (buffer.writable ? 2 : 0), next: (index + 1) % queueSize)
        }
        nextDescriptor = (nextDescriptor + UInt16(buffers.count)) % queueSize
        return head
    }

    /// Puts `head` in the available ring and publishes it.
    public mutating func makeAvailable(_ head: UInt16) {
        try! memory.store(head, at: GuestAddress(availableRing + 4 + 2 * UInt64(availableIndex % queueSize)))
        availableIndex &+= 1
        try! memory.store(availableIndex, at: GuestAddress(availableRing + 2))
    }

    public func notify() { write(0x50, queueIndex) }

    public var usedIndex: UInt16 { try! memory.load(UInt16.self, at: GuestAddress(usedRing + 2)) }

    /// The used-ring element at position `position`: (descriptor head, bytes written).
    public func usedElement(_ position: UInt16) -> (id: UInt32, length: UInt32) {
        let entry = GuestAddress(usedRing + 4 + 8 * UInt64(position % queueSize))
        return (try! memory.load(UInt32.self, at: entry), try! memory.load(UInt32.self, at: entry.adding(4)!))
    }

    public func bytes(_ address: UInt64, _ count: Int) -> [UInt8] { try! memory.read(count: count, at: GuestAddress(address)) }
}

/// A virtio-blk request header: type, reserved, sector (little-endian).
public func blockHeader(type: UInt32, sector: UInt64) -> [UInt8] {
    var bytes: [UInt8] = []
    for index in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: type >> (8 * UInt32(index)))) }
    bytes += [0, 0, 0, 0]
    for index in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: sector >> (8 * UInt64(index)))) }
    return bytes
}

/// Deterministic disk contents.
public func pattern(_ count: Int, seed: UInt32 = 1) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 1_103_515_245 &+ 12345
        return UInt8(truncatingIfNeeded: state >> 16)
    }
}
