import Glibc
import Synchronization
import Testing
import VMMCore
import Virtio
@testable import VMM

/// A disk whose every read takes `delay`, like a slow or contended host disk.
final class SlowStorage: BlockStorage, @unchecked Sendable {
    let size: UInt64 = 64 << 20
    let delay: Duration
    private let count = Atomic<Int>(0)
    init(delay: Duration) { self.delay = delay }
    var isReadOnly: Bool { false }
    var reads: Int { count.load(ordering: .relaxed) }
    func read(into buffers: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        count.add(1, ordering: .relaxed)
        let (seconds, attoseconds) = delay.components
        usleep(UInt32(seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
    }
    func write(from buffers: [UnsafeRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {}
    func flush() throws(BlockStorageError) {}
}

/// The VMM's disk thread: stopping it never waits on a long batch of guest requests.
// The limit guards against a hang only (the test times its own stop); see VirtioStopTests for
// why every limit in the suite is 45 minutes.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason), .timeLimit(.minutes(45)))
struct VirtioDeviceRunnerTests {
    /// Writes a virtio-mmio register the way a driver would.
    static func write(_ transport: VirtioMMIOTransport, _ offset: UInt64, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { transport.write(offset: offset, data: $0) }
    }

    @Test("a stop during a batch of 10 slow requests (10 s of I/O) returns within the deadline")
    func stopDuringALongBatchIsPrompt() throws {
        let memory = try GuestMemory(size: 2 << 20)
        let machine = try Machine(system: try KVMSystem(), memory: memory)
        try machine.vm.createInterruptController()
        let storage = SlowStorage(delay: .seconds(1))
        let runner = try VirtioDeviceRunner(
            device: VirtioBlock(storage: storage, identifier: "slow"), name: "virtio-test", at: VirtioMMIOLayout.device(0)!,
            in: machine)
        let transport = runner.transport
        // A driver: features, one queue of 32 at 0x1000/0x2000/0x3000, DRIVER_OK (virtio 1.2 §3.1.1).
        Self.write(transport, 0x70, 1 | 2)
        Self.write(transport, 0x24, 1)
        Self.write(transport, 0x20, 1)  // VERSION_1 (bit 32)
        Self.write(transport, 0x70, 1 | 2 | 8)
        Self.write(transport, 0x30, 0)
        Self.write(transport, 0x38, 32)
        for (offset, address) in [(UInt64(0x80), UInt32(0x1000)), (0x90, 0x2000), (0xA0, 0x3000)] { Self.write(transport, offset, address) }
        Self.write(transport, 0x44, 1)
        Self.write(transport, 0x70, 1 | 2 | 4 | 8)
        #expect(transport.status & 4 != 0)
        // 10 one-sector reads of sector 0: header, data, status (three descriptors each).
        for request in 0..<10 {
            let base = UInt64(0x10000 + request * 0x1000)
            try memory.write([UInt8](repeating: 0, count: 16), at: GuestAddress(base))  // a read of sector 0
            for (slot, (address, length, flags)) in [(base, UInt32(16), UInt16(1)), (base + 0x100, 512, 1 | 2), (base + 0x400, 1, 2)].enumerated() {
                let index = UInt64(request * 3 + slot)
                let entry = GuestAddress(0x1000 + 16 * index)
                try memory.store(address, at: entry)
                try memory.store(length, at: entry.adding(8)!)
                try memory.store(flags, at: entry.adding(12)!)
                try memory.store(UInt16(index + 1), at: entry.adding(14)!)
            }
            try memory.store(UInt16(request * 3), at: GuestAddress(0x2000 + 4 + 2 * UInt64(request)))
        }
        try memory.store(UInt16(10), at: GuestAddress(0x2002))
        try runner.start()
        transport.notify(queue: 0)
        var waited = 0
        while storage.reads == 0, waited < 500 {
            usleep(10_000)
            waited += 1
        }
        #expect(storage.reads == 1, "the disk thread is in the first request")
        let clock = ContinuousClock()
        let start = clock.now
        let ended = VirtioDeviceRunner.stop([runner])
        let took = clock.now - start
        #expect(ended == [true], "the thread ended")
        #expect(took < .seconds(2) + .milliseconds(700), "stop took \(took)")
        #expect(storage.reads < 10, "the batch was cut between two requests")
    }
}
