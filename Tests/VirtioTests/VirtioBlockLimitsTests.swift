import Synchronization
import Testing
import TestSupport
import VMMCore
@testable import Virtio

/// A large disk that stores nothing and counts what it was asked to move.
final class CountingStorage: BlockStorage, @unchecked Sendable {
    let size: UInt64
    private let moved = Atomic<Int>(0)
    init(size: UInt64) { self.size = size }
    var isReadOnly: Bool { false }
    var bytesMoved: Int { moved.load(ordering: .relaxed) }
    func read(into buffers: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        moved.add(buffers.reduce(0) { $0 + $1.count }, ordering: .relaxed)
    }
    func write(from buffers: [UnsafeRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        moved.add(buffers.reduce(0) { $0 + $1.count }, ordering: .relaxed)
    }
    func flush() throws(BlockStorageError) {}
}

/// What one request may move is bounded by the announced size_max and seg_max (virtio 1.2 §5.2.4):
/// a guest cannot make the disk thread copy gigabytes for one request by aliasing its buffers.
@Suite("virtio-blk request limits")
struct VirtioBlockLimitsTests {
    struct Fixture {
        let storage = CountingStorage(size: 3 << 30)
        let device: VirtioBlock
        let transport: VirtioMMIOTransport
        var driver: MockDriver

        init() {
            device = VirtioBlock(storage: storage, identifier: "limits")
            // 16 MiB of guest RAM; untouched pages cost nothing.
            transport = VirtioMMIOTransport(device: device, memory: try! GuestMemory(size: 16 << 20), interrupt: CountingTrigger())
            driver = MockDriver(transport: transport, queueSize: 256)
            driver.initialize()
        }

        /// Submits a read of `data` (all device-writable) and returns its status byte. With
        /// `statusInLast` the status byte is the last buffer's extra byte (so header and data fill
        /// the whole queue), else a buffer of its own.
        mutating func read(_ data: [(address: UInt64, length: UInt32, writable: Bool)], statusInLast: Bool = false) -> UInt8 {
            let header = driver.allocate(16, bytes: blockHeader(type: VirtioBlock.RequestType.read, sector: 0))
            var chain = [(address: header, length: UInt32(16), writable: false)] + data
            let status: UInt64
            if statusInLast, let last = data.last {
                status = last.address + UInt64(last.length)
                try! driver.memory.store(UInt8(0xEE), at: GuestAddress(status))
                chain[chain.count - 1].length += 1
            } else {
                status = driver.allocate(1, bytes: [0xEE])
                chain.append((status, 1, true))
            }
            let before = driver.usedIndex
            driver.makeAvailable(driver.addChain(chain))
            driver.notify()
            #expect(driver.usedIndex == before &+ 1, "the request was returned")
            return driver.bytes(status, 1)[0]
        }
    }

    @Test("size_max and seg_max are offered and announced")
    func announced() {
        let fixture = Fixture()
        #expect(fixture.driver.deviceFeatures & VirtioBlock.Feature.sizeMaximum != 0)
        #expect(fixture.driver.deviceFeatures & VirtioBlock.Feature.segmentMaximum != 0)
        #expect(fixture.driver.read(0x108) == VirtioBlock.sizeMaximum)
        #expect(fixture.driver.read(0x10C) == UInt32(VirtioBlock.segmentMaximum))
    }

    @Test("a chain of huge buffers aliasing the same memory is refused before any I/O")
    func aliasedHugeBuffersAreRefused() {
        var fixture = Fixture()
        let arena: UInt64 = 0x80_0000  // 8 MiB at 8 MiB: inside guest RAM
        let chain = Array(repeating: (address: arena, length: UInt32(8 << 20), writable: true), count: 254)
        let clock = ContinuousClock()
        let start = clock.now
        #expect(fixture.read(chain) == VirtioBlock.RequestStatus.ioError)
        #expect(clock.now - start < .seconds(1))
        #expect(fixture.storage.bytesMoved == 0)
        #expect(fixture.device.statistics.oversized == 1)
        #expect(fixture.transport.status & Virtio.Status.deviceNeedsReset == 0, "the queue goes on")
    }

    @Test("one segment more than seg_max, or one byte more than size_max, is refused; the limits themselves are served")
    func limitsAreExact() {
        var fixture = Fixture()
        let arena: UInt64 = 0x80_0000
        let small = (address: arena, length: UInt32(512), writable: true)
        #expect(fixture.read(Array(repeating: small, count: VirtioBlock.segmentMaximum + 1), statusInLast: true) == VirtioBlock.RequestStatus.ioError)
        #expect(fixture.read([(arena, VirtioBlock.sizeMaximum + 512, true)]) == VirtioBlock.RequestStatus.ioError)
        #expect(fixture.storage.bytesMoved == 0)
        #expect(fixture.read(Array(repeating: small, count: VirtioBlock.segmentMaximum)) == VirtioBlock.RequestStatus.ok)
        #expect(fixture.read([(arena, VirtioBlock.sizeMaximum, true)]) == VirtioBlock.RequestStatus.ok)
        #expect(fixture.storage.bytesMoved == VirtioBlock.segmentMaximum * 512 + Int(VirtioBlock.sizeMaximum))
        #expect(fixture.device.statistics.oversized == 2)
    }
}
