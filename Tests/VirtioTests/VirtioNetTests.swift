import Synchronization
import Testing
import TestSupport
import VMMCore
@testable import Virtio

/// A backend in memory: frames queued for the guest, frames the guest sent. (A test double; the real
/// backends, a tap and passt's stream, are in the VMM module and tested there.)
final class MemoryBackend: NetworkBackend, @unchecked Sendable {
    let carriesVirtioHeader: Bool
    private let state = Mutex<(incoming: [[UInt8]], sent: [[UInt8]], offloads: NetworkOffloads?, reads: Int)>(([], [], nil, 0))

    init(carriesVirtioHeader: Bool) { self.carriesVirtioHeader = carriesVirtioHeader }

    func queue(_ frame: [UInt8]) { state.withLock { $0.incoming.append(frame) } }
    var sent: [[UInt8]] { state.withLock { $0.sent } }
    var waiting: Int { state.withLock { $0.incoming.count } }
    var reads: Int { state.withLock { $0.reads } }
    var offloads: NetworkOffloads? { state.withLock { $0.offloads } }

    func send(_ segments: [UnsafeRawBufferPointer]) throws(NetworkBackendError) {
        let bytes = segments.flatMap { Array($0) }
        state.withLock { $0.sent.append(bytes) }
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(NetworkBackendError) -> Int? {
        state.withLock { state -> Int? in
            guard !state.incoming.isEmpty else { return nil }
            state.reads += 1
            let frame = state.incoming.removeFirst()
            let count = min(frame.count, buffer.count)
            buffer.copyBytes(from: frame.prefix(count))
            return count
        }
    }

    func setReceiveOffloads(_ offloads: NetworkOffloads) { state.withLock { $0.offloads = offloads } }
}

/// A virtio-net device on a transport, with one mock driver per queue in 4 MiB of RAM.
struct NetFixture {
    let backend: MemoryBackend
    let device: VirtioNet
    let transport: VirtioMMIOTransport
    let interrupts = CountingTrigger()
    var rx: MockDriver
    var tx: MockDriver
    static let mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]

    init(carriesVirtioHeader: Bool = false, features: UInt64? = nil, queueSize: UInt16 = 16) {
        backend = MemoryBackend(carriesVirtioHeader: carriesVirtioHeader)
        device = VirtioNet(backend: backend, macAddress: Self.mac)
        transport = VirtioMMIOTransport(device: device, memory: MockDriver.makeMemory(size: 4 << 20), interrupt: interrupts)
        rx = MockDriver(transport: transport, queueSize: queueSize, queueIndex: 0, areas: 0, arena: 0x10000)
        tx = MockDriver(transport: transport, queueSize: queueSize, queueIndex: 1, areas: 0x8000, arena: 0x200000)
        #expect(rx.initialize(features: features, alsoSetUp: [tx]))
    }

    /// Makes a receive chain of `lengths` writable buffers available, notifying the device.
    mutating func offerReceive(_ lengths: [Int], notify: Bool = true) -> [UInt64] {
        let addresses = lengths.map { rx.allocate($0) }
        rx.makeAvailable(rx.addChain(zip(addresses, lengths).map { ($0, UInt32($1), true) }))
        if notify { rx.notify() }
        return addresses
    }

    /// Sends `parts` as one transmit chain (each part a device-readable buffer).
    mutating func send(_ parts: [[UInt8]]) {
        let chain = parts.map { part in (tx.allocate(part.count, bytes: part), UInt32(part.count), false) }
        tx.makeAvailable(tx.addChain(chain))
        tx.notify()
    }
}

/// An Ethernet frame of `count` bytes: broadcast to the fixture's MAC, then a pattern.
func ethernetFrame(_ count: Int, seed: UInt32 = 7) -> [UInt8] {
    [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + NetFixture.mac + [0x08, 0x06] + pattern(count - 14, seed: seed)
}

let emptyHeader = [UInt8](repeating: 0, count: VirtioNet.headerLength)

@Suite struct VirtioNetTests {
    @Test func announcesANetworkDeviceWithItsMACAndLinkUp() {
        let fixture = NetFixture()
        #expect(fixture.rx.read(0x008) == 1)
        #expect(
            fixture.device.features
                == Virtio.Feature.version1 | VirtioNet.Feature.mac | VirtioNet.Feature.status | VirtioNet.Feature.mergeableReceiveBuffers)
        #expect(fixture.device.configurationSpace == NetFixture.mac + [1, 0])
        // Byte reads of the configuration space, as virtio_mmio's vm_get does.
        var mac: [UInt8] = []
        for offset in 0..<6 {
            var byte: UInt8 = 0
            withUnsafeMutableBytes(of: &byte) { fixture.transport.read(offset: 0x100 + UInt64(offset), data: $0) }
            mac.append(byte)
        }
        #expect(mac == NetFixture.mac)
        #expect(fixture.transport.status & Virtio.Status.driverOK != 0)
        // Two queues, each of at most 256 entries.
        fixture.rx.write(0x30, 1)
        #expect(fixture.rx.read(0x34) == 256)
        fixture.rx.write(0x30, 2)
        #expect(fixture.rx.read(0x34) == 0)
    }

    @Test func offloadsAreOfferedOnlyWithABackendThatCarriesTheHeader() {
        let plain = NetFixture()
        #expect(plain.device.features & VirtioNet.Feature.offloads == 0)
        // A driver accepting an offload that was not offered does not get FEATURES_OK.
        let refused = plain.rx.initialize(features: Virtio.Feature.version1 | VirtioNet.Feature.checksum)
        #expect(!refused)

        let tap = NetFixture(carriesVirtioHeader: true)
        #expect(tap.device.features & VirtioNet.Feature.offloads == VirtioNet.Feature.offloads)
        #expect(tap.device.features & VirtioNet.Feature.mergeableReceiveBuffers != 0)
        #expect(tap.backend.offloads == [.checksum, .tcp4Segmentation, .tcp6Segmentation])
    }

    @Test func receiveOffloadsFollowWhatTheGuestAccepted() {
        let base = Virtio.Feature.version1 | VirtioNet.Feature.mac
        let cases: [(UInt64, NetworkOffloads)] = [
            (base, []),
            (base | VirtioNet.Feature.guestChecksum, [.checksum]),
            (base | VirtioNet.Feature.guestChecksum | VirtioNet.Feature.guestTSO4, [.checksum, .tcp4Segmentation]),
            // TSO without GUEST_CSUM is not passed on (§5.1.3.1: it requires GUEST_CSUM).
            (base | VirtioNet.Feature.guestTSO4 | VirtioNet.Feature.guestTSO6, []),
            // Host-side offloads say what the guest sends; they set nothing on the backend.
            (base | VirtioNet.Feature.checksum | VirtioNet.Feature.hostTSO4, []),
        ]
        for (features, offloads) in cases {
            let fixture = NetFixture(carriesVirtioHeader: true, features: features)
            #expect(fixture.backend.offloads == offloads)
            #expect(fixture.device.negotiatedFeatures == features)
        }
    }

    @Test func transmitStripsTheHeaderForABackendWithoutOne() {
        var fixture = NetFixture()
        let frame = ethernetFrame(100)
        // Header and frame in separate buffers, and the frame itself split, as Linux may make them.
        fixture.send([emptyHeader, Array(frame[0..<30]), Array(frame[30...])])
        #expect(fixture.backend.sent == [frame])
        #expect(fixture.tx.usedIndex == 1)
        #expect(fixture.tx.usedElement(0) == (0, 0))
        // Header and frame in one buffer.
        fixture.send([emptyHeader + frame])
        #expect(fixture.backend.sent == [frame, frame])
        #expect(fixture.device.statistics.framesSent == 2)
        #expect(fixture.device.statistics.bytesSent == 2 * frame.count)
        #expect(fixture.interrupts.edges == 2)
    }

    @Test func transmitPassesTheHeaderToABackendThatTakesIt() {
        var fixture = NetFixture(carriesVirtioHeader: true)
        // NEEDS_CSUM, GSO TCPv4, hdr_len 54, gso_size 1448, csum_start 34, csum_offset 16, num_buffers 0.
        let header: [UInt8] = [1, 1, 54, 0, 0xA8, 0x05, 34, 0, 16, 0, 0, 0]
        let frame = ethernetFrame(3000)
        fixture.send([header, frame])
        #expect(fixture.backend.sent == [header + frame])
    }

    @Test func receiveAddsAHeaderWithOneBuffer() {
        var fixture = NetFixture()
        let frame = ethernetFrame(60)
        fixture.backend.queue(frame)
        let addresses = fixture.offerReceive([1526])
        #expect(fixture.rx.usedIndex == 1)
        #expect(fixture.rx.usedElement(0) == (0, UInt32(12 + frame.count)))
        var expected = emptyHeader
        expected[10] = 1  // num_buffers
        #expect(fixture.rx.bytes(addresses[0], 12 + frame.count) == expected + frame)
        #expect(fixture.device.statistics.framesReceived == 1)
        #expect(fixture.interrupts.edges == 1)
    }

    @Test func receivePassesTheBackendsHeaderAndSetsNumBuffers() {
        var fixture = NetFixture(carriesVirtioHeader: true)
        // A tap writes 10 bytes of header and skips num_buffers: whatever is there, the device sets it.
        let header: [UInt8] = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0xEE, 0xEE]
        let frame = ethernetFrame(200)
        fixture.backend.queue(header + frame)
        let addresses = fixture.offerReceive([4096])
        #expect(fixture.rx.bytes(addresses[0], 12 + frame.count) == Array(header[0..<10]) + [1, 0] + frame)
    }

    @Test func aFrameSpansMergedBuffersWithMRGRXBUF() {
        var fixture = NetFixture(carriesVirtioHeader: true)
        #expect(fixture.device.negotiatedFeatures & VirtioNet.Feature.mergeableReceiveBuffers != 0)
        let frame = emptyHeader + ethernetFrame(3500)
        fixture.backend.queue(frame)
        // Three 1,500-byte chains are not enough for 3,512 bytes: nothing is used, the frame waits.
        var addresses: [UInt64] = []
        for _ in 0..<2 { addresses += fixture.offerReceive([1500]) }
        #expect(fixture.rx.usedIndex == 0)
        #expect(!fixture.device.wantsBackendInput)
        addresses += fixture.offerReceive([1500])
        #expect(fixture.rx.usedIndex == 3)
        #expect((0..<3).map { fixture.rx.usedElement($0).length } == [1500, 1500, 512])
        var expected = frame
        expected[10] = 3
        let delivered = fixture.rx.bytes(addresses[0], 1500) + fixture.rx.bytes(addresses[1], 1500) + fixture.rx.bytes(addresses[2], 512)
        #expect(delivered == expected)
        #expect(fixture.device.wantsBackendInput)
    }

    /// Firecracker's CVE-2020-16843: receive must go on after the guest ran out of buffers.
    @Test func receiveWaitsForBuffersAndReadsOnWhenTheyCome() {
        var fixture = NetFixture()
        let frames = (0..<50).map { ethernetFrame(64 + $0, seed: UInt32($0)) }
        for frame in frames { fixture.backend.queue(frame) }
        // No buffers yet: the driver's notify (or the backend's readiness) serves queue 0.
        fixture.rx.notify()
        // One frame was read and waits; the backend is not read again, so memory stays bounded.
        #expect(fixture.backend.reads == 1)
        #expect(!fixture.device.wantsBackendInput)
        fixture.transport.serve(queue: 0)
        #expect(fixture.backend.reads == 1)

        var received: [[UInt8]] = []
        for round in 0..<10 {
            // Five buffers at a time, made available before one notify.
            var addresses: [UInt64] = []
            for index in 0..<5 { addresses += fixture.offerReceive([1526], notify: index == 4) }
            #expect(fixture.rx.usedIndex == UInt16(5 * (round + 1)))
            for (index, address) in addresses.enumerated() {
                let element = fixture.rx.usedElement(UInt16(5 * round + index))
                received.append(Array(fixture.rx.bytes(address, Int(element.length)).dropFirst(12)))
            }
        }
        #expect(received == frames)
        #expect(fixture.device.wantsBackendInput)
        #expect(fixture.backend.waiting == 0)
    }

    @Test func aFrameTooLongForAChainWithoutMRGRXBUFIsDropped() {
        var fixture = NetFixture(features: Virtio.Feature.version1 | VirtioNet.Feature.mac)
        fixture.backend.queue(ethernetFrame(1514))
        fixture.backend.queue(ethernetFrame(100))
        let small = fixture.offerReceive([200], notify: false)
        _ = small
        let next = fixture.offerReceive([200])
        // The first frame did not fit 200 bytes: its chain came back empty; the second frame went on.
        #expect(fixture.rx.usedIndex == 2)
        #expect(fixture.rx.usedElement(0).length == 0)
        #expect(fixture.rx.usedElement(1).length == 112)
        #expect(Array(fixture.rx.bytes(next[0], 112).dropFirst(12)) == ethernetFrame(100))
        #expect(fixture.device.statistics.receiveDropped == 1)
    }

    // MARK: - Hostile chains

    @Test func hostileTransmitChainsAreRefusedOneByOne() {
        var fixture = NetFixture()
        let good = ethernetFrame(60)
        // Too short for the header.
        fixture.send([[1, 2, 3, 4, 5, 6, 7, 8]])
        // Longer than 64 KiB plus headers (two buffers, so no single one is suspicious).
        fixture.send([emptyHeader + pattern(40_000), pattern(30_000)])
        // A buffer outside guest RAM.
        let head = fixture.tx.addChain([
            (fixture.tx.allocate(12), 12, false), (0xFFFF_F000, 100, false),
        ])
        fixture.tx.makeAvailable(head)
        fixture.tx.notify()
        // A buffer that straddles the end of RAM.
        let edge = fixture.tx.addChain([(UInt64(4 << 20) - 50, 100, false)])
        fixture.tx.makeAvailable(edge)
        fixture.tx.notify()
        // A device-writable buffer in a transmit chain.
        let writable = fixture.tx.addChain([(fixture.tx.allocate(12), 12, false), (fixture.tx.allocate(64), 64, true)])
        fixture.tx.makeAvailable(writable)
        fixture.tx.notify()
        // A buffer of 4 GiB - 1.
        let huge = fixture.tx.addChain([(0x1000, 0xFFFF_FFFF, false)])
        fixture.tx.makeAvailable(huge)
        fixture.tx.notify()
        // Then a good frame still goes out.
        fixture.send([emptyHeader + good])
        #expect(fixture.backend.sent == [good])
        #expect(fixture.device.statistics.transmitErrors == 6)
        #expect(fixture.tx.usedIndex == 7)
        #expect(fixture.transport.status & Virtio.Status.deviceNeedsReset == 0)
    }

    @Test func aLoopingChainBreaksTheQueueUntilReset() {
        var fixture = NetFixture()
        let buffer = fixture.tx.allocate(64)
        fixture.tx.setDescriptor(0, address: buffer, length: 64, flags: 1, next: 1)
        fixture.tx.setDescriptor(1, address: buffer, length: 64, flags: 1, next: 0)
        fixture.tx.makeAvailable(0)
        fixture.tx.notify()
        #expect(fixture.transport.status & Virtio.Status.deviceNeedsReset != 0)
        #expect(fixture.transport.lastError == .chainTooLong(head: 0))
        #expect(!fixture.transport.isLive)
        #expect(fixture.backend.sent.isEmpty)
        // After a reset the device works again.
        fixture.tx = MockDriver(transport: fixture.transport, queueSize: 16, queueIndex: 1, areas: 0x8000, arena: 0x200000)
        fixture.rx = MockDriver(transport: fixture.transport, queueSize: 16, queueIndex: 0)
        try! fixture.rx.memory.fill(0, count: 0xC000, at: GuestAddress(0x1000))
        #expect(fixture.rx.initialize(alsoSetUp: [fixture.tx]))
        #expect(fixture.transport.isLive)
        fixture.send([emptyHeader + ethernetFrame(60)])
        #expect(fixture.backend.sent == [ethernetFrame(60)])
    }

    @Test func hostileReceiveChainsAreRefusedAndTheFrameGoesToTheNextGoodOne() {
        var fixture = NetFixture()
        let frame = ethernetFrame(80)
        fixture.backend.queue(frame)
        // Too short for the header.
        _ = fixture.offerReceive([8], notify: false)
        // Device-readable.
        let readable = fixture.rx.addChain([(fixture.rx.allocate(1526), 1526, false)])
        fixture.rx.makeAvailable(readable)
        // Outside guest RAM.
        let outside = fixture.rx.addChain([(0x7FFF_0000, 1526, true)])
        fixture.rx.makeAvailable(outside)
        // Straddling the end of RAM.
        let edge = fixture.rx.addChain([(UInt64(4 << 20) - 100, 1526, true)])
        fixture.rx.makeAvailable(edge)
        let good = fixture.offerReceive([1526])
        #expect(fixture.rx.usedIndex == 5)
        #expect((0..<4).map { fixture.rx.usedElement($0).length } == [0, 0, 0, 0])
        #expect(fixture.rx.usedElement(4).length == UInt32(12 + frame.count))
        #expect(Array(fixture.rx.bytes(good[0], 12 + frame.count).dropFirst(12)) == frame)
        #expect(fixture.device.statistics.receiveChainErrors == 4)
        // The byte before the edge chain's start is untouched: nothing was written near the end of RAM.
        #expect(fixture.rx.bytes(UInt64(4 << 20) - 100, 100) == [UInt8](repeating: 0, count: 100))
    }

    @Test func aBadChainAmongMergedBuffersDropsOnlyThatFrame() {
        var fixture = NetFixture(carriesVirtioHeader: true)
        fixture.backend.queue(emptyHeader + ethernetFrame(2500))
        fixture.backend.queue(emptyHeader + ethernetFrame(100))
        _ = fixture.offerReceive([1500], notify: false)
        let readable = fixture.rx.addChain([(fixture.rx.allocate(1500), 1500, false)])
        fixture.rx.makeAvailable(readable)
        let good = fixture.offerReceive([1500])
        #expect(fixture.rx.usedIndex == 3)
        #expect(fixture.device.statistics.receiveDropped == 1)
        #expect(fixture.rx.usedElement(2).length == 112)
        #expect(Array(fixture.rx.bytes(good[0], 112).dropFirst(12)) == ethernetFrame(100))
        #expect(fixture.transport.status & Virtio.Status.deviceNeedsReset == 0)
    }
}
