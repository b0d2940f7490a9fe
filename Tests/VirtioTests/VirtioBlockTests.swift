import Glibc
import Testing
import TestSupport
import VMMCore
@testable import Virtio

/// A virtio-blk device behind the MMIO transport, over a disk in memory, driven by `MockDriver`.
struct BlockFixture {
    let storage: MemoryBlockStorage
    let device: VirtioBlock
    let transport: VirtioMMIOTransport
    let interrupts = CountingTrigger()
    var driver: MockDriver

    init(disk: [UInt8] = pattern(64 * 512), readOnly: Bool = false, queueSize: UInt16 = 16) {
        storage = MemoryBlockStorage(bytes: disk, readOnly: readOnly)
        device = VirtioBlock(storage: storage, identifier: "swiftkvm-test-disk")
        transport = VirtioMMIOTransport(device: device, memory: MockDriver.makeMemory(), interrupt: interrupts)
        driver = MockDriver(transport: transport, queueSize: queueSize)
    }

    /// Submits one request (header, data buffers, status byte) and serves it. Returns the status
    /// byte and the used length.
    mutating func request(
        type: UInt32, sector: UInt64, data: [(address: UInt64, length: UInt32, writable: Bool)]
    ) -> (status: UInt8, used: UInt32) {
        let header = driver.allocate(16, bytes: blockHeader(type: type, sector: sector))
        let status = driver.allocate(1, bytes: [0xEE])
        let head = driver.addChain([(header, 16, false)] + data + [(status, 1, true)])
        let before = driver.usedIndex
        driver.makeAvailable(head)
        driver.notify()
        guard driver.usedIndex == before &+ 1 else { return (0xEE, 0) }
        let element = driver.usedElement(before)
        #expect(element.id == UInt32(head))
        return (driver.bytes(status, 1)[0], element.length)
    }

    var needsReset: Bool { transport.status & Virtio.Status.deviceNeedsReset != 0 }
}

@Suite("virtio-mmio transport")
struct VirtioMMIOTransportTests {
    @Test("identifies itself as a modern virtio-blk device")
    func identity() {
        let fixture = BlockFixture()
        let driver = fixture.driver
        #expect(driver.read(0x000) == 0x7472_6976)
        #expect(driver.read(0x004) == 2)
        #expect(driver.read(0x008) == 2)
        #expect(driver.read(0x00C) == VirtioMMIOTransport.vendor)
        let features = driver.deviceFeatures
        #expect(features & Virtio.Feature.version1 != 0)
        #expect(features & VirtioBlock.Feature.flush != 0)
        #expect(features & VirtioBlock.Feature.blockSize != 0)
        #expect(features & VirtioBlock.Feature.segmentMaximum != 0)
        #expect(features & VirtioBlock.Feature.readOnly == 0)
        #expect(BlockFixture(readOnly: true).driver.deviceFeatures & VirtioBlock.Feature.readOnly != 0)
        driver.write(0x30, 0)
        #expect(driver.read(0x034) == UInt32(VirtioBlock.queueSize))
        driver.write(0x30, 1)
        #expect(driver.read(0x034) == 0, "a queue that does not exist has size 0")
    }

    @Test("configuration space: capacity in sectors, seg_max, blk_size, any width")
    func configurationSpace() {
        let fixture = BlockFixture(disk: pattern(100 * 512 + 300))  // a partial sector is not addressable
        let transport = fixture.transport
        var capacity: UInt64 = 0
        withUnsafeMutableBytes(of: &capacity) { transport.read(offset: 0x100, data: $0) }
        #expect(capacity == 100)
        var bytes = [UInt8](repeating: 0, count: 4)
        bytes.withUnsafeMutableBytes { transport.read(offset: 0x10C, data: $0) }
        #expect(bytes == [254, 0, 0, 0])
        var one: UInt8 = 0
        withUnsafeMutableBytes(of: &one) { transport.read(offset: 0x115, data: $0) }  // blk_size = 512: byte 1 is 2
        #expect(one == 2)
        withUnsafeMutableBytes(of: &one) { transport.read(offset: 0x1F0, data: $0) }
        #expect(one == 0, "past the structure reads as zero")
    }

    @Test("feature negotiation keeps FEATURES_OK only for a subset with VERSION_1")
    func negotiation() {
        let fixture = BlockFixture()
        let offered = fixture.driver.deviceFeatures
        #expect(!fixture.driver.initialize(features: offered & ~Virtio.Feature.version1), "a legacy driver is refused")
        #expect(!fixture.driver.initialize(features: offered | 1 << 28), "a feature that was not offered is refused")
        #expect(fixture.driver.initialize(features: Virtio.Feature.version1 | VirtioBlock.Feature.flush))
        #expect(fixture.transport.negotiatedFeatures == Virtio.Feature.version1 | VirtioBlock.Feature.flush)
    }

    @Test("register accesses of the wrong width read as all ones and are ignored")
    func wrongWidths() {
        let fixture = BlockFixture()
        var half: UInt16 = 0
        withUnsafeMutableBytes(of: &half) { fixture.transport.read(offset: 0x000, data: $0) }
        #expect(half == 0xFFFF)
        var word: UInt32 = 0
        withUnsafeMutableBytes(of: &word) { fixture.transport.read(offset: 0x002, data: $0) }
        #expect(word == 0xFFFF_FFFF)
        withUnsafeBytes(of: UInt16(7)) { fixture.transport.write(offset: 0x070, data: $0) }
        #expect(fixture.transport.status == 0)
        withUnsafeBytes(of: UInt32(7)) { fixture.transport.write(offset: 0x104, data: $0) }  // configuration is read-only
        #expect(fixture.device.configurationSpace[4] == 0)
    }

    @Test("a reset clears status, queues and interrupts, and the device works again")
    func reset() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let target = fixture.driver.allocate(512)
        #expect(fixture.request(type: 0, sector: 0, data: [(target, 512, true)]).status == 0)
        #expect(fixture.driver.read(0x060) == 1)
        fixture.driver.write(0x70, 0)
        #expect(fixture.driver.read(0x070) == 0)
        #expect(fixture.driver.read(0x044) == 0)
        #expect(fixture.driver.read(0x060) == 0)
        // A reset driver starts its rings again from zero.
        try! fixture.driver.memory.fill(0, count: 0x2000, at: GuestAddress(0x3000))
        fixture.driver.availableIndex = 0
        fixture.driver.initialize()
        #expect(fixture.request(type: 0, sector: 1, data: [(target, 512, true)]).status == 0)
        #expect(fixture.driver.bytes(target, 512) == Array(fixture.storage.contents[512..<1024]))
    }

    @Test("no request is served before DRIVER_OK")
    func notBeforeDriverOK() {
        var fixture = BlockFixture()
        fixture.driver.write(0x70, Virtio.Status.acknowledge | Virtio.Status.driver)
        fixture.driver.setUpQueue(size: 16)
        let target = fixture.driver.allocate(512)
        #expect(fixture.request(type: 0, sector: 0, data: [(target, 512, true)]).status == 0xEE)
        #expect(fixture.interrupts.edges == 0)
    }
}

@Suite("virtio-blk requests")
struct VirtioBlockRequestTests {
    @Test("a read fills the buffers, returns OK, the length written, and raises an interrupt")
    func read() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let first = fixture.driver.allocate(1024)
        let second = fixture.driver.allocate(512)
        let result = fixture.request(type: 0, sector: 3, data: [(first, 1024, true), (second, 512, true)])
        #expect(result.status == VirtioBlock.RequestStatus.ok)
        #expect(result.used == 1536 + 1)
        let disk = fixture.storage.contents
        #expect(fixture.driver.bytes(first, 1024) == Array(disk[1536..<2560]))
        #expect(fixture.driver.bytes(second, 512) == Array(disk[2560..<3072]))
        #expect(fixture.interrupts.edges == 1)
        #expect(fixture.driver.read(0x060) == Virtio.Interrupt.usedBuffer)
        fixture.driver.write(0x064, Virtio.Interrupt.usedBuffer)
        #expect(fixture.driver.read(0x060) == 0)
        #expect(fixture.device.statistics.reads == 1)
        #expect(fixture.device.statistics.bytesRead == 1536)
    }

    @Test("a write reaches the disk; FLUSH reaches the storage")
    func writeAndFlush() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let data = pattern(1024, seed: 99)
        let source = fixture.driver.allocate(1024, bytes: data)
        #expect(fixture.request(type: 1, sector: 10, data: [(source, 1024, false)]) == (0, 1))
        #expect(Array(fixture.storage.contents[5120..<6144]) == data)
        #expect(fixture.request(type: 4, sector: 0, data: []) == (0, 1))
        #expect(fixture.storage.flushCount == 1)
    }

    @Test("the header may be split across descriptors")
    func splitHeader() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let header = blockHeader(type: 0, sector: 2)
        let front = fixture.driver.allocate(5, bytes: Array(header[0..<5]))
        let back = fixture.driver.allocate(11, bytes: Array(header[5...]))
        let target = fixture.driver.allocate(512)
        let status = fixture.driver.allocate(1)
        let head = fixture.driver.addChain([(front, 5, false), (back, 11, false), (target, 512, true), (status, 1, true)])
        fixture.driver.makeAvailable(head)
        fixture.driver.notify()
        #expect(fixture.driver.bytes(status, 1) == [0])
        #expect(fixture.driver.bytes(target, 512) == Array(fixture.storage.contents[1024..<1536]))
    }

    @Test("GET_ID returns the serial, NUL-padded to 20 bytes")
    func getID() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let target = fixture.driver.allocate(20, bytes: [UInt8](repeating: 0xAA, count: 20))
        #expect(fixture.request(type: 8, sector: 0, data: [(target, 20, true)]) == (0, 21))
        #expect(fixture.driver.bytes(target, 20) == Array("swiftkvm-test-disk".utf8) + [0, 0])
    }

    @Test("an unknown request type is UNSUPP")
    func unsupported() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        #expect(fixture.request(type: 11, sector: 0, data: []).status == VirtioBlock.RequestStatus.unsupported)
    }

    @Test("sectors past the end, partial sectors and a sector number that overflows are IOERR")
    func outOfRange() {
        var fixture = BlockFixture(disk: pattern(8 * 512))
        fixture.driver.initialize()
        let target = fixture.driver.allocate(1024)
        #expect(fixture.request(type: 0, sector: 7, data: [(target, 1024, true)]).status == 1)
        #expect(fixture.request(type: 0, sector: 8, data: [(target, 512, true)]).status == 1)
        #expect(fixture.request(type: 0, sector: .max, data: [(target, 512, true)]).status == 1)
        #expect(fixture.request(type: 0, sector: UInt64.max / 512 + 1, data: [(target, 512, true)]).status == 1)
        #expect(fixture.request(type: 0, sector: 0, data: [(target, 100, true)]).status == 1)
        #expect(fixture.request(type: 1, sector: 7, data: [(target, 1024, false)]).status == 1)
        #expect(fixture.request(type: 0, sector: 6, data: [(target, 1024, true)]).status == 0, "the last two sectors")
        #expect(fixture.device.statistics.failed == 6)
        #expect(!fixture.needsReset, "a bad request does not break the queue")
    }

    @Test("a read-only disk fails writes and stays byte-identical; reads and FLUSH work")
    func readOnly() {
        let disk = pattern(16 * 512)
        var fixture = BlockFixture(disk: disk, readOnly: true)
        fixture.driver.initialize()
        let source = fixture.driver.allocate(512, bytes: [UInt8](repeating: 0x55, count: 512))
        #expect(fixture.request(type: 1, sector: 0, data: [(source, 512, false)]).status == 1)
        #expect(fixture.request(type: 4, sector: 0, data: []).status == 0)
        #expect(fixture.request(type: 0, sector: 0, data: [(source, 512, true)]).status == 0)
        #expect(fixture.storage.contents == disk)
    }
}

@Suite("virtio-blk against a hostile driver")
struct VirtioHostileDriverTests {
    @Test("buffers outside guest RAM, or whose length wraps the address space, are IOERR")
    func buffersOutsideMemory() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        #expect(fixture.request(type: 0, sector: 0, data: [(1 << 20, 512, true)]).status == 1)
        #expect(fixture.request(type: 0, sector: 0, data: [((1 << 20) - 256, 512, true)]).status == 1)
        #expect(fixture.request(type: 0, sector: 0, data: [(UInt64.max - 255, 512, true)]).status == 1)
        #expect(fixture.request(type: 1, sector: 0, data: [(0xFFFF_FFFF_0000, 0xFFFF_FE00, false)]).status == 1)
        #expect(fixture.request(type: 8, sector: 0, data: [(1 << 40, 20, true)]).status == 1)
        let target = fixture.driver.allocate(512)
        #expect(fixture.request(type: 0, sector: 0, data: [(target, 512, true)]).status == 0, "and the next request works")
    }

    @Test("a header outside RAM, or device-writable, fails the request")
    func badHeader() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let status = fixture.driver.allocate(1)
        let target = fixture.driver.allocate(512)
        var head = fixture.driver.addChain([(1 << 30, 16, false), (target, 512, true), (status, 1, true)])
        fixture.driver.makeAvailable(head)
        fixture.driver.notify()
        #expect(fixture.driver.bytes(status, 1) == [1])
        let header = fixture.driver.allocate(16, bytes: blockHeader(type: 0, sector: 0))
        head = fixture.driver.addChain([(header, 16, true), (target, 512, true), (status, 1, true)])
        fixture.driver.makeAvailable(head)
        fixture.driver.notify()
        #expect(fixture.driver.bytes(status, 1) == [1])
        #expect(fixture.driver.bytes(target, 512) == [UInt8](repeating: 0, count: 512))
    }

    @Test("a read into a device-readable buffer, or a write from a writable one, is IOERR")
    func wrongDirection() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let buffer = fixture.driver.allocate(512)
        #expect(fixture.request(type: 0, sector: 0, data: [(buffer, 512, false)]).status == 1)
        #expect(fixture.driver.bytes(buffer, 512) == [UInt8](repeating: 0, count: 512))
        let before = fixture.storage.contents
        #expect(fixture.request(type: 1, sector: 0, data: [(buffer, 512, true)]).status == 1)
        #expect(fixture.storage.contents == before)
    }

    @Test("a chain without a writable status byte is returned with nothing written")
    func noStatusByte() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        let header = fixture.driver.allocate(16, bytes: blockHeader(type: 4, sector: 0))
        let head = fixture.driver.addChain([(header, 16, false)])
        fixture.driver.makeAvailable(head)
        fixture.driver.notify()
        #expect(fixture.driver.usedIndex == 1)
        #expect(fixture.driver.usedElement(0).length == 0)
        #expect(fixture.storage.flushCount == 0)
        let status = fixture.driver.allocate(1)
        let outside = fixture.driver.addChain([(header, 16, false), (UInt64.max, 1, true)])
        fixture.driver.makeAvailable(outside)
        fixture.driver.notify()
        #expect(fixture.driver.usedIndex == 2)
        _ = status
    }

    /// Builds a broken queue with `breakIt`, notifies, and checks the device marks itself
    /// DEVICE_NEEDS_RESET, raises a configuration interrupt, then ignores the queue until reset.
    func expectNeedsReset(
        _ expected: (VirtqueueError) -> Bool, queueSize: UInt16 = 16, sourceLocation: SourceLocation = #_sourceLocation,
        _ breakIt: (inout MockDriver) -> Void
    ) {
        var fixture = BlockFixture(queueSize: queueSize)
        fixture.driver.initialize()
        breakIt(&fixture.driver)
        fixture.driver.notify()
        #expect(fixture.needsReset, sourceLocation: sourceLocation)
        #expect(fixture.transport.lastError.map(expected) == true, "\(String(describing: fixture.transport.lastError))", sourceLocation: sourceLocation)
        #expect(fixture.driver.read(0x060) & Virtio.Interrupt.configurationChange != 0, sourceLocation: sourceLocation)
        #expect(fixture.interrupts.edges >= 1, sourceLocation: sourceLocation)
        let used = fixture.driver.usedIndex
        let target = fixture.driver.allocate(512)
        _ = fixture.request(type: 0, sector: 0, data: [(target, 512, true)])
        #expect(fixture.driver.usedIndex == used, "a broken device serves nothing", sourceLocation: sourceLocation)
        fixture.driver.write(0x70, 0)
        #expect(!fixture.needsReset && fixture.transport.lastError == nil, "a reset clears it", sourceLocation: sourceLocation)
    }

    @Test("a chain that loops")
    func loop() {
        expectNeedsReset({ if case .chainTooLong = $0 { true } else { false } }) { driver in
            driver.setDescriptor(0, address: 0x10000, length: 16, flags: 1, next: 1)
            driver.setDescriptor(1, address: 0x10000, length: 16, flags: 1, next: 0)
            driver.makeAvailable(0)
        }
    }

    @Test("a chain longer than the queue, and a link past the table")
    func tooLong() {
        expectNeedsReset({ if case .descriptorOutOfRange(16, 16) = $0 { true } else { false } }) { driver in
            for index in UInt16(0)..<3 { driver.setDescriptor(index, address: 0x10000, length: 16, flags: 1, next: index == 2 ? 16 : index + 1) }
            driver.makeAvailable(0)
        }
        expectNeedsReset({ if case .chainTooLong = $0 { true } else { false } }) { driver in
            // Every link is in range, but the chain visits all 16 descriptors and comes round again.
            for index in UInt16(0)..<16 { driver.setDescriptor(index, address: 0x10000, length: 16, flags: 1, next: (index + 1) % 16) }
            driver.makeAvailable(3)
        }
    }

    @Test("a head past the table")
    func headOutOfRange() {
        expectNeedsReset({ if case .descriptorOutOfRange(200, 16) = $0 { true } else { false } }) { driver in
            driver.makeAvailable(200)
        }
    }

    @Test("an available idx more than a queue ahead")
    func indexJump() {
        expectNeedsReset({ if case .availableIndexJump(17, 0) = $0 { true } else { false } }) { driver in
            try! driver.memory.store(UInt16(17), at: GuestAddress(driver.availableRing + 2))
        }
    }

    @Test("indirect descriptors, which were not offered")
    func indirect() {
        expectNeedsReset({ if case .indirectDescriptor = $0 { true } else { false } }) { driver in
            driver.setDescriptor(0, address: 0x10000, length: 32, flags: 4, next: 0)
            driver.makeAvailable(0)
        }
    }

    @Test("a device-readable buffer after a writable one")
    func readableAfterWritable() {
        expectNeedsReset({ if case .readableAfterWritable = $0 { true } else { false } }) { driver in
            let header = driver.allocate(16, bytes: blockHeader(type: 0, sector: 0))
            let target = driver.allocate(512)
            let head = driver.addChain([(header, 16, false), (target, 512, true), (target, 1, false)])
            driver.makeAvailable(head)
        }
    }

    @Test("queue sizes that are zero, not a power of two, or above the maximum")
    func badQueueSizes() {
        for size: UInt16 in [0, 3, 12, 512] {
            let fixture = BlockFixture()
            fixture.driver.write(0x70, Virtio.Status.acknowledge | Virtio.Status.driver)
            fixture.driver.setUpQueue(size: size)
            #expect(fixture.needsReset, "size \(size)")
            #expect(fixture.driver.read(0x044) == 0, "size \(size): the queue did not become ready")
            #expect(fixture.transport.lastError == .invalidSize(size, maximum: 256))
        }
    }

    @Test("queue areas outside guest RAM or misaligned")
    func badAreas() {
        let cases: [(UInt64?, UInt64?, UInt64?)] = [
            (1 << 20, nil, nil), ((1 << 20) - 16, nil, nil), (nil, UInt64.max - 1, nil), (nil, nil, 0xFFFF_F000),
            (0x1008, nil, nil), (nil, 0x3001, nil), (nil, nil, 0x4002),
        ]
        for (descriptors, available, used) in cases {
            let fixture = BlockFixture()
            fixture.driver.write(0x70, Virtio.Status.acknowledge | Virtio.Status.driver)
            fixture.driver.setUpQueue(size: 16, descriptors: descriptors, available: available, used: used)
            #expect(fixture.needsReset, "\(String(describing: descriptors)) \(String(describing: available)) \(String(describing: used))")
        }
    }

    @Test("queue registers cannot move a live queue")
    func liveQueueIsFixed() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        fixture.driver.write(0x80, 0xFFFF_0000)
        fixture.driver.write(0x38, 3)
        #expect(fixture.driver.read(0x038) == 16)
        let target = fixture.driver.allocate(512)
        #expect(fixture.request(type: 0, sector: 0, data: [(target, 512, true)]).status == 0)
    }

    @Test("VIRTQ_AVAIL_F_NO_INTERRUPT suppresses the edge but not the status bit")
    func noInterrupt() {
        var fixture = BlockFixture()
        fixture.driver.initialize()
        try! fixture.driver.memory.store(UInt16(1), at: GuestAddress(fixture.driver.availableRing))
        let target = fixture.driver.allocate(512)
        #expect(fixture.request(type: 0, sector: 0, data: [(target, 512, true)]).status == 0)
        #expect(fixture.interrupts.edges == 0)
        #expect(fixture.driver.read(0x060) == 1)
    }

    @Test("random descriptor tables and rings never crash the device or change the disk's size", arguments: 0..<4)
    func randomQueues(seed: Int) {
        var random = SplitMix64(state: UInt64(seed) &* 0x9E37_79B9 &+ 1)
        for _ in 0..<50 {
            let fixture = BlockFixture(queueSize: 8)
            fixture.driver.initialize(size: 8)
            let size = fixture.storage.size
            // Random descriptors whose addresses mostly land in RAM, with random flags and links.
            for index in UInt16(0)..<8 {
                let address = random.next() % 4 == 0 ? random.next() : 0x10000 + random.next() % 0x20000
                let length = random.next() % 3 == 0 ? UInt32(truncatingIfNeeded: random.next()) : UInt32(random.next() % 2048)
                fixture.driver.setDescriptor(
                    index, address: address, length: length, flags: UInt16(random.next() % 8),
                    next: UInt16(random.next() % 10))
            }
            for position in 0..<8 {
                try! fixture.driver.memory.store(
                    UInt16(random.next() % 10), at: GuestAddress(fixture.driver.availableRing + 4 + 2 * UInt64(position)))
            }
            for offset in stride(from: 0x10000, to: 0x30000, by: 4096) where random.next() % 2 == 0 {
                try! fixture.driver.memory.store(UInt32(random.next() % 12), at: GuestAddress(UInt64(offset)))
            }
            try! fixture.driver.memory.store(UInt16(random.next() % 12), at: GuestAddress(fixture.driver.availableRing + 2))
            fixture.driver.notify()
            #expect(fixture.storage.size == size)
            #expect(fixture.driver.usedIndex <= 8)
        }
    }
}

@Suite("FileBlockStorage")
struct FileBlockStorageTests {
    func temporaryFile(_ bytes: [UInt8]) -> String {
        var template = Array("/tmp/swiftkvm-disk-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        precondition(fd >= 0)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        Glibc.close(fd)
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    @Test("reads and writes in place, whole sectors only, and flushes")
    func roundTrip() throws {
        let path = temporaryFile(pattern(4 * 512 + 100))
        defer { unlink(path) }
        let storage = try FileBlockStorage(path: path, readOnly: false)
        #expect(storage.size == 2048)
        var first = [UInt8](repeating: 0, count: 700)
        var second = [UInt8](repeating: 0, count: 324)
        try first.withUnsafeMutableBytes { a in
            try second.withUnsafeMutableBytes { b in try storage.read(into: [a, b], at: 512) }
        }
        #expect(first + second == Array(pattern(4 * 512 + 100)[512..<1536]))
        let data = pattern(1024, seed: 7)
        try data.withUnsafeBytes { raw in
            try storage.write(from: [UnsafeRawBufferPointer(rebasing: raw[0..<1]), UnsafeRawBufferPointer(rebasing: raw[1...])], at: 1024)
        }
        try storage.flush()
        storage.close()
        let contents = try readFile(path)
        #expect(Array(contents[1024..<2048]) == data)
        #expect(contents.count == 4 * 512 + 100, "the partial tail sector is kept")
    }

    @Test("a read-only disk refuses writes")
    func readOnly() throws {
        let path = temporaryFile(pattern(1024))
        defer { unlink(path) }
        let storage = try FileBlockStorage(path: path, readOnly: true)
        let data = [UInt8](repeating: 1, count: 512)
        #expect(throws: BlockStorageError.io(operation: "write", errno: EROFS)) {
            try data.withUnsafeBytes { try storage.write(from: [$0], at: 0) }
        }
        #expect(try readFile(path) == pattern(1024))
    }

    @Test("missing files, directories and device nodes are errors that name the file")
    func badPaths() {
        #expect(throws: BlockStorageError.self) { try FileBlockStorage(path: "/nonexistent/disk.img", readOnly: false) }
        do {
            _ = try FileBlockStorage(path: "/tmp", readOnly: false)
            Issue.record("a directory was accepted")
        } catch {
            #expect(error.description == "disk /tmp: is a directory, not a disk image file")
        }
        do {
            _ = try FileBlockStorage(path: "/dev/null", readOnly: true)
            Issue.record("a device node was accepted")
        } catch {
            #expect(error.description.hasPrefix("disk /dev/null: is not a regular file"))
        }
    }

    func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 1 << 16)
        let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        return Array(bytes.prefix(max(count, 0)))
    }
}
