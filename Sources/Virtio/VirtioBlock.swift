import VMMCore

/// What a virtio device does behind its transport: it announces a type, features, queues and a
/// configuration space, and serves its queues. `VirtioMMIOTransport` does the rest (registers,
/// negotiation, status, interrupts), so a device never sees an MMIO access.
public protocol VirtioDevice: AnyObject, Sendable {
    var deviceType: UInt32 { get }
    /// Offered features, `Virtio.Feature.version1` included.
    var features: UInt64 { get }
    /// The maximum size of each queue; the count is the number of queues.
    var maximumQueueSizes: [UInt16] { get }
    /// The device-specific configuration space (read from offset 0x100 of the transport).
    var configurationSpace: [UInt8] { get }
    /// Serves queue `index`: takes every available chain, handles it and returns it used.
    /// Returns how many chains were used. A thrown error means the queue is broken.
    func serve(queue index: Int, _ queue: inout SplitVirtqueue, memory: GuestMemory) throws(VirtqueueError) -> Int
    /// The driver set FEATURES_OK with `features` accepted (§3.1.1 step 5); called on a vCPU thread.
    func driverAccepted(features: UInt64)
}

extension VirtioDevice {
    public func driverAccepted(features: UInt64) {}
}

/// virtio-blk (virtio 1.2 §5.2): one request queue over a `BlockStorage`.
///
/// A request is a chain: a 16-byte device-readable header (type, reserved, sector), the data
/// buffers (device-readable for a write, device-writable for a read), and a final device-writable
/// status byte. Every address and length in it is the guest's and is checked: a buffer outside
/// guest RAM, a sector range past the end of the disk, a header the device may not read, or a
/// write to a read-only disk fails that one request with VIRTIO_BLK_S_IOERR; the queue goes on.
public final class VirtioBlock: VirtioDevice, @unchecked Sendable {
    // @unchecked: every member is immutable except `statistics`, written only by the thread that
    // serves the queue (the transport serialises `serve`).

    public enum Feature {
        /// VIRTIO_BLK_F_SIZE_MAX: `size_max` in the configuration is valid.
        public static let sizeMaximum: UInt64 = 1 << 1
        /// VIRTIO_BLK_F_SEG_MAX: `seg_max` in the configuration is valid.
        public static let segmentMaximum: UInt64 = 1 << 2
        /// VIRTIO_BLK_F_RO: the disk is read-only.
        public static let readOnly: UInt64 = 1 << 5
        /// VIRTIO_BLK_F_BLK_SIZE: `blk_size` in the configuration is valid.
        public static let blockSize: UInt64 = 1 << 6
        /// VIRTIO_BLK_F_FLUSH: the FLUSH request exists.
        public static let flush: UInt64 = 1 << 9
    }

    /// Request types (§5.2.6).
    public enum RequestType {
        public static let read: UInt32 = 0
        public static let write: UInt32 = 1
        public static let flush: UInt32 = 4
        public static let getID: UInt32 = 8
    }

    /// The status byte's values.
    public enum RequestStatus {
        public static let ok: UInt8 = 0
        public static let ioError: UInt8 = 1
        public static let unsupported: UInt8 = 2
    }

    public static let sectorSize = 512
    public static let queueSize: UInt16 = 256
    /// `size_max` (§5.2.4): the largest data segment of a request. A guest cannot make one request
    /// move more than `segmentMaximum` × this (127 MiB), so a stop or reset waits at most for that
    /// much I/O. 512 KiB is what Firmware/src/virtio-blk.c's benchmark asks in one buffer.
    public static let sizeMaximum: UInt32 = 512 * 1024
    /// `seg_max` (§5.2.4): the most data segments in a request; a header and a status take the
    /// other two descriptors of the queue (no indirect descriptors are offered).
    public static let segmentMaximum = Int(queueSize) - 2
    /// GET_ID answers with at most this many bytes.
    public static let identifierLength = 20

    /// Counters for `--stats` and tests.
    public struct Statistics: Sendable, Equatable {
        public var reads = 0
        public var writes = 0
        public var flushes = 0
        public var bytesRead = 0
        public var bytesWritten = 0
        public var failed = 0
        /// Requests refused for a segment above size_max or more segments than seg_max.
        public var oversized = 0
    }

    public let storage: any BlockStorage
    public let identifier: [UInt8]
    public let deviceType = Virtio.DeviceID.block
    public let features: UInt64
    public let maximumQueueSizes = [VirtioBlock.queueSize]
    public let configurationSpace: [UInt8]
    public private(set) var statistics = Statistics()
    private var buffers: [VirtqueueBuffer] = []

    /// `identifier` is the serial number GET_ID returns (cut to 20 bytes).
    public init(storage: any BlockStorage, identifier: String) {
        self.storage = storage
        self.identifier = Array(identifier.utf8.prefix(Self.identifierLength))
        features =
            Virtio.Feature.version1 | Feature.sizeMaximum | Feature.segmentMaximum | Feature.blockSize | Feature.flush
            | (storage.isReadOnly ? Feature.readOnly : 0)
        // struct virtio_blk_config: capacity (u64, in 512-byte sectors) at 0, size_max at 8,
        // seg_max at 12, geometry at 16, blk_size at 20; the rest stays zero.
        var space = [UInt8](repeating: 0, count: 60)
        Self.put(storage.size / UInt64(Self.sectorSize), at: 0, in: &space)
        Self.put(Self.sizeMaximum, at: 8, in: &space)
        Self.put(UInt32(Self.segmentMaximum), at: 12, in: &space)
        Self.put(UInt32(Self.sectorSize), at: 20, in: &space)
        configurationSpace = space
    }

    public var capacitySectors: UInt64 { storage.size / UInt64(Self.sectorSize) }

    /// Serves the request queue one chain at a time; `nextChain` ends the loop between two
    /// requests when the transport asks the device to stop (a reset, a queue disable, the VMM).
    public func serve(queue index: Int, _ queue: inout SplitVirtqueue, memory: GuestMemory) throws(VirtqueueError) -> Int {
        guard index == 0 else { return 0 }
        var used = 0
        while let head = try queue.nextChain(memory: memory, buffers: &buffers) {
            let written = handle(buffers, memory: memory)
            try queue.addUsed(head: head, length: written, memory: memory)
            used += 1
        }
        return used
    }

    /// Handles one request; returns the number of bytes written into its writable buffers.
    func handle(_ chain: [VirtqueueBuffer], memory: GuestMemory) -> UInt32 {
        // The status byte is the last byte of the last buffer, which must be device-writable.
        guard let last = chain.last, last.writable, last.length >= 1,
            let statusAddress = last.address.addingIfNoOverflow(UInt64(last.length) - 1),
            (try? memory.hostPointer(for: GuestAddress(statusAddress), length: 1)) != nil
        else {
            statistics.failed += 1
            return 0  // nowhere to report: the request is returned with nothing written
        }
        var body = chain
        body[body.count - 1].length -= 1
        if body[body.count - 1].length == 0 { body.removeLast() }

        let (status, dataWritten) = execute(body, memory: memory)
        if status != RequestStatus.ok { statistics.failed += 1 }
        try? memory.store(status, at: GuestAddress(statusAddress))
        return dataWritten + 1
    }

    /// Runs the request in `body` (the chain without its status byte).
    private func execute(_ body: [VirtqueueBuffer], memory: GuestMemory) -> (status: UInt8, written: UInt32) {
        guard let header = readHeader(body, memory: memory) else { return (RequestStatus.ioError, 0) }
        let data = Self.skip(16, in: body)
        // Beyond the announced size_max and seg_max (§5.2.4): refused before any I/O, so a hostile
        // chain of huge buffers that all alias the same memory cannot keep the disk thread busy.
        guard data.count <= Self.segmentMaximum, data.allSatisfy({ $0.length <= Self.sizeMaximum }) else {
            statistics.oversized += 1
            return (RequestStatus.ioError, 0)
        }
        switch header.type {
        case RequestType.read:
            guard data.allSatisfy(\.writable), let range = sectorRange(header.sector, data),
                let targets = try? data.map({ buffer throws(GuestMemoryError) in
                    UnsafeMutableRawBufferPointer(
                        start: try memory.hostPointer(for: GuestAddress(buffer.address), length: Int(buffer.length)),
                        count: Int(buffer.length))
                })
            else { return (RequestStatus.ioError, 0) }
            do { try storage.read(into: targets, at: range.lowerBound) } catch { return (RequestStatus.ioError, 0) }
            statistics.reads += 1
            statistics.bytesRead += range.count
            return (RequestStatus.ok, UInt32(range.count))
        case RequestType.write:
            guard !storage.isReadOnly, data.allSatisfy({ !$0.writable }), let range = sectorRange(header.sector, data),
                let sources = try? data.map({ buffer throws(GuestMemoryError) in
                    UnsafeRawBufferPointer(
                        start: try memory.hostPointer(for: GuestAddress(buffer.address), length: Int(buffer.length)),
                        count: Int(buffer.length))
                })
            else { return (RequestStatus.ioError, 0) }
            do { try storage.write(from: sources, at: range.lowerBound) } catch { return (RequestStatus.ioError, 0) }
            statistics.writes += 1
            statistics.bytesWritten += range.count
            return (RequestStatus.ok, 0)
        case RequestType.flush:
            do { try storage.flush() } catch { return (RequestStatus.ioError, 0) }
            statistics.flushes += 1
            return (RequestStatus.ok, 0)
        case RequestType.getID:
            // Up to 20 bytes, NUL-padded when shorter; written across the writable buffers.
            var answer = identifier + [UInt8](repeating: 0, count: Self.identifierLength - identifier.count)
            var written: UInt32 = 0
            for buffer in data where buffer.writable && !answer.isEmpty {
                let count = min(Int(buffer.length), answer.count)
                guard (try? memory.write(Array(answer.prefix(count)), at: GuestAddress(buffer.address))) != nil else {
                    return (RequestStatus.ioError, written)
                }
                answer.removeFirst(count)
                written += UInt32(count)
            }
            return (RequestStatus.ok, written)
        default:
            return (RequestStatus.unsupported, 0)
        }
    }

    /// The header's type and sector, if its 16 bytes are device-readable and inside guest RAM.
    private func readHeader(_ body: [VirtqueueBuffer], memory: GuestMemory) -> (type: UInt32, sector: UInt64)? {
        var bytes: [UInt8] = []
        for buffer in body where bytes.count < 16 {
            guard !buffer.writable else { return nil }
            let count = min(Int(buffer.length), 16 - bytes.count)
            guard let part = try? memory.read(count: count, at: GuestAddress(buffer.address)) else { return nil }
            bytes += part
        }
        guard bytes.count == 16 else { return nil }
        func little(_ range: Range<Int>) -> UInt64 { range.reversed().reduce(0) { $0 << 8 | UInt64(bytes[$1]) } }
        return (UInt32(little(0..<4)), little(8..<16))
    }

    /// The byte range on the disk that `data` covers from `sector`, if it is whole sectors inside it.
    private func sectorRange(_ sector: UInt64, _ data: [VirtqueueBuffer]) -> Range<UInt64>? {
        let length = data.reduce(UInt64(0)) { $0 + UInt64($1.length) }  // at most 2^16 × 2^32: no overflow
        guard length % UInt64(Self.sectorSize) == 0, sector <= storage.size / UInt64(Self.sectorSize) else { return nil }
        let start = sector * UInt64(Self.sectorSize)
        guard length <= storage.size - start, length <= UInt64(Int32.max) else { return nil }
        return start..<start + length
    }

    /// `buffers` without their first `count` bytes.
    static func skip(_ count: Int, in buffers: [VirtqueueBuffer]) -> [VirtqueueBuffer] {
        var left = UInt64(count)
        var result: [VirtqueueBuffer] = []
        for var buffer in buffers {
            if left >= UInt64(buffer.length) {
                left -= UInt64(buffer.length)
                continue
            }
            buffer.address = buffer.address &+ left
            buffer.length -= UInt32(left)
            left = 0
            result.append(buffer)
        }
        return result
    }

    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
}

extension UInt64 {
    /// `self + amount`, or nil if that passes 2^64.
    func addingIfNoOverflow(_ amount: UInt64) -> UInt64? {
        let (sum, overflow) = addingReportingOverflow(amount)
        return overflow ? nil : sum
    }
}
