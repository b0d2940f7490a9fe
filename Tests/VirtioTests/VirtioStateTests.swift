import Testing
import TestSupport
import VMMCore
@testable import Virtio

/// virtio-mmio state for snapshots: a transport rebuilt from an export over the same guest RAM
/// carries on with the driver's next request; exports no drained queue could have are refused.
struct VirtioStateTests {
    static let read: UInt32 = 0

    /// A driver that has done `requests` reads on a fresh fixture.
    static func used(_ requests: Int) -> BlockFixture {
        var fixture = BlockFixture()
        #expect(fixture.driver.initialize())
        for sector in 0..<requests {
            let buffer = fixture.driver.allocate(512)
            #expect(fixture.request(type: read, sector: UInt64(sector), data: [(buffer, 512, true)]).status == 0)
        }
        return fixture
    }

    /// A new transport over the same memory and disk, restored from `state`.
    static func restored(_ fixture: BlockFixture, _ state: [UInt8]) throws -> VirtioMMIOTransport {
        let device = VirtioBlock(storage: fixture.storage, identifier: "swiftkvm-test-disk")
        let transport = VirtioMMIOTransport(device: device, memory: fixture.driver.memory, interrupt: CountingTrigger())
        try transport.importState(state)
        try device.importState(fixture.device.exportState())
        return transport
    }

    @Test func aRestoredTransportServesTheDriversNextRequest() throws {
        let fixture = Self.used(3)
        let state = fixture.transport.exportState()
        let transport = try Self.restored(fixture, state)
        #expect(transport.exportState() == state)
        #expect(transport.isLive)
        // The driver goes on as if nothing happened: its next chain, the next available slot.
        var driver = MockDriver(transport: transport, queueSize: fixture.driver.queueSize)
        driver.availableIndex = fixture.driver.availableIndex
        driver.nextDescriptor = fixture.driver.nextDescriptor
        driver.nextFree = fixture.driver.nextFree
        let header = driver.allocate(16, bytes: blockHeader(type: Self.read, sector: 5))
        let buffer = driver.allocate(512)
        let status = driver.allocate(1, bytes: [0xEE])
        let head = driver.addChain([(header, 16, false), (buffer, 512, true), (status, 1, true)])
        driver.makeAvailable(head)
        driver.notify()
        #expect(driver.usedIndex == 4)
        #expect(driver.bytes(status, 1) == [0])
        #expect(driver.bytes(buffer, 512) == Array(pattern(64 * 512)[(5 * 512)..<(6 * 512)]))
    }

    /// Byte offsets in the export: version 1, type 4, status 4, two selects 8, features 8, queue
    /// select 4, interrupts 4, queue count 4; then per queue size 2, ready 1, three addresses 24,
    /// next available 2, next used 2.
    static let queueStart = 1 + 4 + 4 + 8 + 8 + 4 + 4 + 4
    static let nextAvailableOffset = queueStart + 2 + 1 + 24

    static func expectRefused(_ state: [UInt8], _ words: String, from fixture: BlockFixture, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try Self.restored(fixture, state)
            Issue.record("accepted; expected '\(words)'", sourceLocation: sourceLocation)
        } catch {
            #expect("\(error)".contains(words), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func exportsNoDrainedQueueCouldHaveAreRefused() throws {
        let fixture = Self.used(3)
        let state = fixture.transport.exportState()
        var ahead = state
        ahead[Self.nextAvailableOffset] = 5  // a chain taken but never used: not drained
        Self.expectRefused(ahead, "do not match a drained queue", from: fixture)
        var bothAhead = ahead
        bothAhead[Self.nextAvailableOffset + 2] = 5  // agrees with itself, not with the used ring
        Self.expectRefused(bothAhead, "used idx is 3", from: fixture)
        var outside = state
        for byte in 0..<8 { outside[Self.queueStart + 3 + byte] = 0xFF }  // descriptor table far outside RAM
        Self.expectRefused(outside, "outside guest RAM", from: fixture)
        var badSize = state
        badSize[Self.queueStart] = 3
        Self.expectRefused(badSize, "queue size 3 is not a power of two", from: fixture)
        var type = state
        type[1] = 1  // virtio-net
        Self.expectRefused(type, "virtio device type 1", from: fixture)
        var features = state
        features[1 + 4 + 4 + 8 + 7] = 0x80  // bit 63
        Self.expectRefused(features, "include some the device does not offer", from: fixture)
        var status = state
        status[6] = 0x01  // status bit 8
        Self.expectRefused(status, "undefined bits", from: fixture)
        Self.expectRefused(Array(state.dropLast()), "truncated", from: fixture)
    }

    @Test func aDiskOfAnotherSizeIsRefused() throws {
        let fixture = Self.used(1)
        let other = VirtioBlock(storage: MemoryBlockStorage(bytes: pattern(32 * 512), readOnly: false), identifier: "x")
        #expect(throws: StateFormatError.impossible("the disk had 64 sectors when the snapshot was taken and has 32 now")) {
            try other.importState(fixture.device.exportState())
        }
    }
}
