import Synchronization
import VMMCore

/// Which offloads a backend may use on the frames it hands the device (the guest's receive
/// offloads; for a tap, TUNSETOFFLOAD's TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6).
public struct NetworkOffloads: OptionSet, Equatable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Frames may carry a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM).
    public static let checksum = NetworkOffloads(rawValue: 1)
    /// TCP over IPv4 segments up to 64 KiB (VIRTIO_NET_HDR_GSO_TCPV4).
    public static let tcp4Segmentation = NetworkOffloads(rawValue: 2)
    /// TCP over IPv6 segments up to 64 KiB (VIRTIO_NET_HDR_GSO_TCPV6).
    public static let tcp6Segmentation = NetworkOffloads(rawValue: 4)
}

/// A backend's failure to move a frame: the call and what it said.
public struct NetworkBackendError: Error, Equatable, CustomStringConvertible, Sendable {
    public var operation: String
    public var reason: String

    public init(operation: String, reason: String) {
        self.operation = operation
        self.reason = reason
    }

    public var description: String { "\(operation): \(reason)" }
}

/// Where a virtio-net device's frames go and come from: a tap, a user-mode network stack, a test.
/// The device knows nothing else about it (no descriptors, no threads): it hands over the guest's
/// frames as spans of guest memory and asks for one frame at a time when it has room.
public protocol NetworkBackend: AnyObject, Sendable {
    /// Whether frames cross with the 12-byte `virtio_net_hdr` in front (a tap with IFF_VNET_HDR and
    /// TUNSETVNETHDRSZ 12). Only such a backend gets the offload features offered to the guest; for
    /// one that does not, the device strips the header from sent frames and adds an empty one.
    var carriesVirtioHeader: Bool { get }
    /// Sends one frame, gathered from `segments` (header first if `carriesVirtioHeader`).
    func send(_ segments: [UnsafeRawBufferPointer]) throws(NetworkBackendError)
    /// Receives one frame into `buffer` (header first if `carriesVirtioHeader`) and returns its
    /// length, or nil if none is waiting. A frame longer than `buffer` is dropped or cut by the backend.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(NetworkBackendError) -> Int?
    /// The guest accepted these receive offloads (called when it sets FEATURES_OK).
    func setReceiveOffloads(_ offloads: NetworkOffloads)
}

extension NetworkBackend {
    public func setReceiveOffloads(_ offloads: NetworkOffloads) {}
}

/// virtio-net (virtio 1.2 §5.1): receive queue 0, transmit queue 1, a MAC address and a link that is
/// always up, over a `NetworkBackend`.
///
/// Every frame starts with the 12-byte `struct virtio_net_hdr` (§5.1.6: flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset, num_buffers; always 12 bytes with VERSION_1). It is passed through
/// to a backend that takes it, and stripped (transmit) or added zeroed (receive) for one that does not.
///
/// Receive goes through one buffer of `maximumFrameLength` bytes that the device owns, so a frame can be
/// spread across several merged buffers (VIRTIO_NET_F_MRG_RXBUF) and the device only reads the backend
/// when that buffer is free. When the guest has no receive buffers the frame waits there and the device
/// stops reading the backend (`wantsBackendInput` turns false); the guest's next receive notification
/// serves queue 0, which delivers it and reads on. So receive never stalls after the guest backs up
/// (the cause of Firecracker's CVE-2020-16843) and never buffers more than one frame. Transmit gathers
/// each frame straight from guest memory.
///
/// The guest is untrusted. Chains that break the split-queue rules (loops, bad indices) break the queue
/// (`SplitVirtqueue`); a frame whose chain is too short for the header, longer than
/// `maximumFrameLength`, outside guest RAM, or has buffers of the wrong direction is refused alone:
/// its chain is returned with nothing written and `statistics` counts it.
public final class VirtioNet: VirtioDevice, @unchecked Sendable {
    // @unchecked: `frame`, `pendingLength`, `statistics` and the scratch arrays belong to the thread
    // that serves the queues (the transport serialises `serve`); `acceptedFeatures` is atomic.

    /// Device feature bits (§5.1.3).
    public enum Feature {
        /// VIRTIO_NET_F_CSUM: the device takes frames with a partial checksum.
        public static let checksum: UInt64 = 1 << 0
        /// VIRTIO_NET_F_GUEST_CSUM: the driver takes frames with a partial checksum.
        public static let guestChecksum: UInt64 = 1 << 1
        /// VIRTIO_NET_F_MAC: `mac` in the configuration is valid.
        public static let mac: UInt64 = 1 << 5
        /// VIRTIO_NET_F_GUEST_TSO4 / TSO6: the driver takes TCP segments up to 64 KiB.
        public static let guestTSO4: UInt64 = 1 << 7
        public static let guestTSO6: UInt64 = 1 << 8
        /// VIRTIO_NET_F_HOST_TSO4 / TSO6: the device takes TCP segments up to 64 KiB.
        public static let hostTSO4: UInt64 = 1 << 11
        public static let hostTSO6: UInt64 = 1 << 12
        /// VIRTIO_NET_F_MRG_RXBUF: a received frame may span several receive chains.
        public static let mergeableReceiveBuffers: UInt64 = 1 << 15
        /// VIRTIO_NET_F_STATUS: `status` in the configuration is valid.
        public static let status: UInt64 = 1 << 16

        /// What a backend that carries the header can do: all of the above.
        public static let offloads = checksum | guestChecksum | guestTSO4 | guestTSO6 | hostTSO4 | hostTSO6
    }

    /// `struct virtio_net_hdr` is 12 bytes with VERSION_1 (§5.1.6); num_buffers is at offset 10.
    public static let headerLength = 12
    /// The longest frame a chain may carry, header included: a 64 KiB TSO segment with its Ethernet
    /// and VLAN headers (65,550 bytes) plus the header, as Firecracker sizes it.
    public static let maximumFrameLength = 65_562
    public static let queueSize: UInt16 = 256
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    /// At most this many frames are moved per `serve`, so receive and transmit take turns.
    static let framesPerServe = 256
    /// VIRTIO_NET_S_LINK_UP.
    static let linkUp: UInt16 = 1

    public struct Statistics: Sendable, Equatable {
        public var framesSent = 0
        public var bytesSent = 0
        public var framesReceived = 0
        public var bytesReceived = 0
        /// Transmit chains refused (too short, too long, outside RAM, device-writable) or failed by the backend.
        public var transmitErrors = 0
        /// Receive chains refused (too short for the header, outside RAM, device-readable).
        public var receiveChainErrors = 0
        /// Frames dropped on receive: too long for every buffer the guest offers, or a backend error.
        public var receiveDropped = 0
    }

    public let backend: any NetworkBackend
    public let macAddress: [UInt8]
    public let deviceType = Virtio.DeviceID.network
    public let features: UInt64
    public let maximumQueueSizes = [VirtioNet.queueSize, VirtioNet.queueSize]
    public let configurationSpace: [UInt8]
    public private(set) var statistics = Statistics()

    private let acceptedFeatures = Atomic<UInt64>(0)
    /// The frame waiting for receive buffers (header first, always), `pendingLength` bytes of it.
    private var frame: [UInt8]
    private var pendingLength = 0
    private var buffers: [VirtqueueBuffer] = []
    private var segments: [UnsafeRawBufferPointer] = []
    private var chains: [(head: UInt16, buffers: [VirtqueueBuffer])] = []

    /// `macAddress` must be 6 bytes (the caller validates what a user typed).
    public init(backend: any NetworkBackend, macAddress: [UInt8]) {
        precondition(macAddress.count == 6, "a MAC address is 6 bytes")
        self.backend = backend
        self.macAddress = macAddress
        // MRG_RXBUF is the device's own business (it spreads a frame over chains and sets
        // num_buffers), so every backend gets it; the offloads need a backend that takes the header.
        features =
            Virtio.Feature.version1 | Feature.mac | Feature.status | Feature.mergeableReceiveBuffers
            | (backend.carriesVirtioHeader ? Feature.offloads : 0)
        // struct virtio_net_config (§5.1.4): mac[6], status (le16); the rest needs features not offered.
        configurationSpace = macAddress + [UInt8(Self.linkUp), 0]
        frame = [UInt8](repeating: 0, count: Self.maximumFrameLength)
    }

    /// Whether the device can take a frame from the backend now (its receive buffer is free). The I/O
    /// worker waits for the backend's input only while this holds.
    public var wantsBackendInput: Bool { pendingLength == 0 }

    /// The features the driver accepted at FEATURES_OK.
    public var negotiatedFeatures: UInt64 { acceptedFeatures.load(ordering: .acquiring) }

    public func driverAccepted(features: UInt64) {
        acceptedFeatures.store(features, ordering: .releasing)
        var offloads: NetworkOffloads = []
        if features & Feature.guestChecksum != 0 {
            offloads.insert(.checksum)
            // GUEST_TSO4/6 require GUEST_CSUM (§5.1.3.1); without it they are not passed on.
            if features & Feature.guestTSO4 != 0 { offloads.insert(.tcp4Segmentation) }
            if features & Feature.guestTSO6 != 0 { offloads.insert(.tcp6Segmentation) }
        }
        if backend.carriesVirtioHeader { backend.setReceiveOffloads(offloads) }
    }

    public func serve(queue index: Int, _ queue: inout SplitVirtqueue, memory: GuestMemory) throws(VirtqueueError) -> Int {
        switch index {
        case Self.receiveQueue: return try receive(&queue, memory: memory)
        case Self.transmitQueue: return try transmit(&queue, memory: memory)
        default: return 0
        }
    }

    // MARK: - Transmit (§5.1.6.2)

    private func transmit(_ queue: inout SplitVirtqueue, memory: GuestMemory) throws(VirtqueueError) -> Int {
        var used = 0
        while used < Self.framesPerServe, let head = try queue.nextChain(memory: memory, buffers: &buffers) {
            if gatherFrame(memory: memory) {
                do {
                    try backend.send(segments)
                    statistics.framesSent += 1
                    statistics.bytesSent += segments.reduce(0) { $0 + $1.count }
                } catch {
                    statistics.transmitErrors += 1
                }
            } else {
                statistics.transmitErrors += 1
            }
            try queue.addUsed(head: head, length: 0, memory: memory)
            used += 1
        }
        return used
    }

    /// Fills `segments` with the frame in `buffers` as the backend takes it. False if the chain is
    /// not a frame: a device-writable buffer, a buffer outside RAM, shorter than the header, or
    /// longer than `maximumFrameLength`.
    private func gatherFrame(memory: GuestMemory) -> Bool {
        segments.removeAll(keepingCapacity: true)
        var total = 0
        for buffer in buffers {
            guard !buffer.writable else { return false }
            let length = Int(buffer.length)
            total += length  // at most 2^16 buffers of < 2^32 bytes: no overflow in 64 bits
            guard total <= Self.maximumFrameLength else { return false }
            guard length > 0 else { continue }
            guard let host = try? memory.hostPointer(for: GuestAddress(buffer.address), length: length) else { return false }
            segments.append(UnsafeRawBufferPointer(start: host, count: length))
        }
        guard total >= Self.headerLength else { return false }
        if !backend.carriesVirtioHeader { Self.drop(Self.headerLength, from: &segments) }
        return true
    }

    /// Removes the first `count` bytes of `segments`.
    static func drop(_ count: Int, from segments: inout [UnsafeRawBufferPointer]) {
        var left = count
        while left > 0, let first = segments.first {
            if first.count <= left {
                left -= first.count
                segments.removeFirst()
            } else {
                segments[0] = UnsafeRawBufferPointer(rebasing: first[left...])
                left = 0
            }
        }
    }

    // MARK: - Receive (§5.1.6.3, §5.1.6.4)

    private func receive(_ queue: inout SplitVirtqueue, memory: GuestMemory) throws(VirtqueueError) -> Int {
        var used = 0
        var moved = 0
        while moved < Self.framesPerServe {
            if pendingLength == 0 {
                guard readBackend() else { break }
            }
            guard let outcome = try deliver(&queue, memory: memory, used: &used) else { break }  // no room: wait
            if outcome { moved += 1 }
        }
        return used
    }

    /// Reads the next frame from the backend into `frame`. False when there is none (or the
    /// backend failed: the worker waits on it again).
    private func readBackend() -> Bool {
        let carries = backend.carriesVirtioHeader
        let length: Int?
        do {
            length = try frame.withUnsafeMutableBytes { bytes throws(NetworkBackendError) in
                try backend.receive(into: carries ? bytes : UnsafeMutableRawBufferPointer(rebasing: bytes[Self.headerLength...]))
            }
        } catch {
            statistics.receiveDropped += 1
            return false
        }
        guard let length else { return false }
        let total = carries ? length : length + Self.headerLength
        guard total >= Self.headerLength, total <= Self.maximumFrameLength else {
            statistics.receiveDropped += 1  // a backend that says it read more than it was given
            return false
        }
        if !carries { for index in 0..<Self.headerLength { frame[index] = 0 } }
        pendingLength = total
        return true
    }

    /// Puts the pending frame into receive chains. Nil if the guest has not made enough buffers
    /// available (the frame stays pending, every chain taken is given back); true if delivered, false
    /// if dropped (larger than every buffer the queue could offer).
    private func deliver(_ queue: inout SplitVirtqueue, memory: GuestMemory, used: inout Int) throws(VirtqueueError) -> Bool? {
        let mergeable = negotiatedFeatures & Feature.mergeableReceiveBuffers != 0
        chains.removeAll(keepingCapacity: true)
        var room = 0
        while room < pendingLength {
            guard chains.count < Int(queue.configuration.size) else {
                // Every descriptor is in use and the frame still does not fit: it never will.
                try returnEmpty(&queue, memory: memory, used: &used, from: 0)
                statistics.receiveDropped += 1
                pendingLength = 0
                return false
            }
            guard let head = try queue.nextChain(memory: memory, buffers: &buffers) else {
                queue.rewind(UInt16(chains.count))
                return nil
            }
            guard let capacity = receiveCapacity(memory: memory), capacity >= (chains.isEmpty ? Self.headerLength : 1) else {
                statistics.receiveChainErrors += 1
                try queue.addUsed(head: head, length: 0, memory: memory)
                used += 1
                guard chains.isEmpty else {
                    // Chains taken before this one can no longer be given back in order: return them
                    // empty too and drop the frame (only a broken driver mixes such chains in).
                    try returnEmpty(&queue, memory: memory, used: &used, from: 0)
                    statistics.receiveDropped += 1
                    pendingLength = 0
                    return false
                }
                continue
            }
            chains.append((head, buffers))
            room += capacity
            if !mergeable && room < pendingLength {
                // Without MRG_RXBUF a frame must fit one chain (§5.1.6.3.1): this one is too small.
                try returnEmpty(&queue, memory: memory, used: &used, from: 0)
                statistics.receiveDropped += 1
                pendingLength = 0
                return false
            }
        }
        // num_buffers (§5.1.6.4): how many chains the frame spans; 1 without MRG_RXBUF.
        let count = UInt16(chains.count)
        frame[10] = UInt8(truncatingIfNeeded: count)
        frame[11] = UInt8(truncatingIfNeeded: count >> 8)
        var offset = 0
        for chain in chains {
            var written = 0
            for buffer in chain.buffers where offset < pendingLength {
                let count = min(Int(buffer.length), pendingLength - offset)
                guard count > 0 else { continue }
                // receiveCapacity checked every buffer against guest RAM.
                frame.withUnsafeBytes { bytes in
                    _ = try? memory.write(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]), at: GuestAddress(buffer.address))
                }
                offset += count
                written += count
            }
            try queue.addUsed(head: chain.head, length: UInt32(written), memory: memory)
            used += 1
        }
        statistics.framesReceived += 1
        statistics.bytesReceived += pendingLength
        pendingLength = 0
        return true
    }

    /// Returns `chains[start...]` with nothing written.
    private func returnEmpty(_ queue: inout SplitVirtqueue, memory: GuestMemory, used: inout Int, from start: Int) throws(VirtqueueError) {
        for chain in chains[start...] {
            try queue.addUsed(head: chain.head, length: 0, memory: memory)
            used += 1
        }
        chains.removeAll(keepingCapacity: true)
    }

    /// The bytes the chain in `buffers` can take: nil unless every buffer is device-writable and
    /// inside guest RAM. Capped at `maximumFrameLength` (a frame never needs more).
    private func receiveCapacity(memory: GuestMemory) -> Int? {
        var total = 0
        for buffer in buffers {
            guard buffer.writable else { return nil }
            let length = Int(buffer.length)
            guard length == 0 || (try? memory.hostPointer(for: GuestAddress(buffer.address), length: length)) != nil else {
                return nil
            }
            total = min(total + length, Self.maximumFrameLength)
        }
        return total
    }
}
