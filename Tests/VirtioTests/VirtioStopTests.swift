import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
import TestSupport
import VMMCore
@testable import Virtio

/// A disk whose reads wait at a gate the test opens, so a request can be caught in the middle of
/// its I/O, as a slow host disk would hold it.
final class GatedStorage: BlockStorage, @unchecked Sendable {
    // @unchecked: `backing` is a MemoryBlockStorage (itself safe); the semaphores are thread-safe.
    let backing: MemoryBlockStorage
    /// Signalled each time a read has started (and is waiting at the gate).
    let started = DispatchSemaphore(value: 0)
    /// Each signal lets one waiting read go on.
    let gate = DispatchSemaphore(value: 0)
    private let reads = Atomic<Int>(0)

    init(bytes: [UInt8]) { backing = MemoryBlockStorage(bytes: bytes) }

    var size: UInt64 { backing.size }
    var isReadOnly: Bool { false }
    var readCount: Int { reads.load(ordering: .relaxed) }

    func read(into buffers: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        reads.add(1, ordering: .relaxed)
        started.signal()
        _ = gate.wait(timeout: .now() + 30)  // never hang the test run
        try backing.read(into: buffers, at: offset)
    }

    func write(from buffers: [UnsafeRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        try backing.write(from: buffers, at: offset)
    }

    func flush() throws(BlockStorageError) {}
}

/// A driver's reset (Status = 0) and a queue disable (QueueReady = 0) are not acknowledged while
/// the device is still working on the queue, and the device takes no more chains once they were
/// asked for (virtio 1.2 §2.4.1: after a reset the device must not touch the driver's buffers).
// The limit guards against a hang only (every wait inside is bounded). Swift Testing starts its
// clock when it schedules a test, and on two cores the parallel suite can hold both threads of the
// pool for a quarter of an hour with Linux boots: 45 minutes, like every limit in the suite.
@Suite("virtio reset and queue disable stop the device", .timeLimit(.minutes(45)))
struct VirtioStopTests {
    struct Setup {
        let storage: GatedStorage
        let transport: VirtioMMIOTransport
        var driver: MockDriver
        var targets: [UInt64] = []
        var statuses: [UInt64] = []
    }

    /// Three reads queued at once, served by a worker thread (as the VMM's disk thread would),
    /// which is caught inside the first read.
    func startThreeReads() -> Setup {
        let storage = GatedStorage(bytes: pattern(64 * 512))
        let transport = VirtioMMIOTransport(
            device: VirtioBlock(storage: storage, identifier: "gated"), memory: MockDriver.makeMemory(),
            interrupt: CountingTrigger())
        transport.onNotify = { [transport] index in
            // A thread of its own, like the VMM's disk thread (a pool thread might not come soon).
            Thread.detachNewThread { transport.serve(queue: index) }
        }
        var setup = Setup(storage: storage, transport: transport, driver: MockDriver(transport: transport))
        setup.driver.initialize()
        for sector in 0..<3 {
            let header = setup.driver.allocate(16, bytes: blockHeader(type: VirtioBlock.RequestType.read, sector: UInt64(sector)))
            let target = setup.driver.allocate(512)
            let status = setup.driver.allocate(1, bytes: [0xEE])
            setup.targets.append(target)
            setup.statuses.append(status)
            setup.driver.makeAvailable(setup.driver.addChain([(header, 16, false), (target, 512, true), (status, 1, true)]))
        }
        setup.driver.notify()
        #expect(storage.started.wait(timeout: .now() + 10) == .success, "the worker started the first read")
        return setup
    }

    /// Writes `value` to register `offset` on another thread (a vCPU), which signals `finished`
    /// when the write returned; returns once that thread has started.
    func write(_ offset: UInt64, _ value: UInt32, on setup: Setup, finished: DispatchSemaphore) {
        let driver = setup.driver
        let started = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            started.signal()
            driver.write(offset, value)
            finished.signal()
        }
        _ = started.wait(timeout: .now() + 10)
    }

    func expectOnlyTheFirstRequestServed(_ setup: Setup) {
        // Give a device that would go on (the defect) time to do so.
        usleep(200_000)
        #expect(setup.storage.readCount == 1, "no request after the first was started")
        #expect(setup.driver.usedIndex == 1, "only the request in progress was returned")
        #expect(setup.driver.bytes(setup.statuses[0], 1) == [VirtioBlock.RequestStatus.ok])
        for index in 1..<3 {
            #expect(setup.driver.bytes(setup.statuses[index], 1) == [0xEE], "request \(index)'s status is untouched")
            #expect(setup.driver.bytes(setup.targets[index], 512) == [UInt8](repeating: 0, count: 512), "request \(index)'s buffer is untouched")
        }
    }

    @Test("a reset waits for the request in progress and serves nothing after it")
    func resetWaitsForTheDevice() {
        let setup = startThreeReads()
        let finished = DispatchSemaphore(value: 0)
        write(0x070, 0, on: setup, finished: finished)
        #expect(finished.wait(timeout: .now() + .milliseconds(300)) == .timedOut, "the reset did not complete while a read was in progress")
        #expect(setup.driver.read(0x070) != 0, "the status does not read as reset yet")
        setup.storage.gate.signal()
        #expect(finished.wait(timeout: .now() + 10) == .success, "the reset completed once the read ended")
        #expect(setup.driver.read(0x070) == 0)
        for _ in 0..<3 { setup.storage.gate.signal() }  // a device that went on would not be held back
        expectOnlyTheFirstRequestServed(setup)
    }

    @Test("a queue disable waits for the request in progress and serves nothing after it")
    func queueDisableWaitsForTheDevice() {
        let setup = startThreeReads()
        let finished = DispatchSemaphore(value: 0)
        setup.driver.write(0x030, 0)
        write(0x044, 0, on: setup, finished: finished)
        #expect(finished.wait(timeout: .now() + .milliseconds(300)) == .timedOut, "the disable did not complete while a read was in progress")
        #expect(setup.driver.read(0x044) == 1, "QueueReady still reads 1")
        setup.storage.gate.signal()
        #expect(finished.wait(timeout: .now() + 10) == .success, "the disable completed once the read ended")
        #expect(setup.driver.read(0x044) == 0)
        for _ in 0..<3 { setup.storage.gate.signal() }
        expectOnlyTheFirstRequestServed(setup)
    }

    @Test("after a reset and a new setup, the device serves again")
    func worksAfterReset() {
        var setup = startThreeReads()
        let finished = DispatchSemaphore(value: 0)
        write(0x070, 0, on: setup, finished: finished)
        #expect(finished.wait(timeout: .now() + .milliseconds(300)) == .timedOut)  // the reset is waiting
        setup.storage.gate.signal()
        #expect(finished.wait(timeout: .now() + 10) == .success)
        try! setup.driver.memory.fill(0, count: 0x2000, at: GuestAddress(0x3000))
        setup.driver.availableIndex = 0
        setup.driver.nextDescriptor = 0
        setup.driver.initialize()
        let header = setup.driver.allocate(16, bytes: blockHeader(type: VirtioBlock.RequestType.read, sector: 5))
        let target = setup.driver.allocate(512)
        let status = setup.driver.allocate(1, bytes: [0xEE])
        setup.driver.makeAvailable(setup.driver.addChain([(header, 16, false), (target, 512, true), (status, 1, true)]))
        setup.storage.gate.signal()
        setup.driver.notify()
        var waited = 0
        while setup.driver.usedIndex != 1, waited < 1000 {
            usleep(10_000)
            waited += 1
        }
        #expect(setup.driver.usedIndex == 1)
        #expect(setup.driver.bytes(status, 1) == [VirtioBlock.RequestStatus.ok])
        #expect(setup.driver.bytes(target, 512) == Array(setup.storage.backing.contents[5 * 512..<6 * 512]))
    }
}
