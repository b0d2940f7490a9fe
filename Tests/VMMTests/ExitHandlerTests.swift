import KVM
import Testing
import VMMCore

@testable import VMM

/// A device that records every access; reads answer `answer(offset, callIndex)` byte by byte.
fileprivate final class RecordingDevice: BusDevice {
    enum Access: Equatable {
        case read(offset: UInt64, width: Int, arrivedZeroed: Bool)
        case write(offset: UInt64, bytes: [UInt8])
    }

    private(set) var accesses: [Access] = []
    /// The byte at `index` of the `call`-th read.
    var answer: (_ call: Int, _ index: Int) -> UInt8 = { call, index in UInt8(0x10 * (call + 1) + index) }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let call = accesses.filter { if case .read = $0 { true } else { false } }.count
        accesses.append(.read(offset: offset, width: data.count, arrivedZeroed: data.allSatisfy { $0 == 0 }))
        for index in data.indices { data[index] = answer(call, index) }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        accesses.append(.write(offset: offset, bytes: Array(data)))
    }
}

/// A byte buffer standing in for the run area's data: the exit's data is a window in the middle of
/// it, so the tests can see that nothing outside the window is touched.
fileprivate final class DataBuffer {
    static let guardBytes = 16
    private let storage: UnsafeMutableRawBufferPointer

    init(_ bytes: [UInt8], guard fill: UInt8 = 0x5A) {
        storage = .allocate(byteCount: bytes.count + 2 * Self.guardBytes, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: fill)
        for (index, byte) in bytes.enumerated() { storage[Self.guardBytes + index] = byte }
        window = UnsafeMutableRawBufferPointer(rebasing: storage[Self.guardBytes..<Self.guardBytes + bytes.count])
    }

    deinit { storage.deallocate() }

    let window: UnsafeMutableRawBufferPointer
    var bytes: [UInt8] { Array(window) }
    var guards: [UInt8] { Array(storage.prefix(Self.guardBytes)) + Array(storage.suffix(Self.guardBytes)) }
}

@Suite struct ExitHandlerTests {
    fileprivate let serial = RecordingDevice()
    fileprivate let keyboard = RecordingDevice()
    fileprivate let virtio = RecordingDevice()
    let handler: ExitHandler

    init() throws {
        var ports = Bus()
        try ports.insert(serial, at: 0x3F8, length: 8)
        try ports.insert(keyboard, at: 0x60, length: 1)
        var mmio = Bus()
        try mmio.insert(virtio, at: 0xD000_0000, length: 0x1000)
        handler = ExitHandler(ports: ports, mmio: mmio)
    }

    fileprivate func portExit(_ direction: AccessDirection, port: UInt16, size: Int, count: Int, _ data: DataBuffer) -> VCPUExit {
        .portIO(PortIOExit(direction: direction, port: port, size: size, count: count, data: data.window))
    }

    fileprivate func mmioExit(_ direction: AccessDirection, address: UInt64, _ data: DataBuffer) -> VCPUExit {
        .mmio(MMIOExit(direction: direction, address: address, data: data.window))
    }

    // MARK: - Port I/O

    @Test func portWriteGoesToTheClaimingDeviceAtItsOffset() {
        var handler = handler
        let data = DataBuffer([0x41])
        #expect(handler.handle(portExit(.write, port: 0x3FD, size: 1, count: 1, data)) == .resume)
        #expect(serial.accesses == [.write(offset: 5, bytes: [0x41])])
        #expect(keyboard.accesses.isEmpty && virtio.accesses.isEmpty)

        let word = DataBuffer([0x34, 0x12])
        #expect(handler.handle(portExit(.write, port: 0x60, size: 2, count: 1, word)) == .resume)
        #expect(keyboard.accesses == [.write(offset: 0, bytes: [0x34, 0x12])])
        #expect(handler.statistics.portWrites == 2)
        #expect(handler.statistics.unclaimedPortAccesses == 0)
    }

    @Test func portReadFillsTheDataFromTheDevice() {
        var handler = handler
        let data = DataBuffer([0xEE, 0xEE, 0xEE, 0xEE])
        #expect(handler.handle(portExit(.read, port: 0x3F8, size: 4, count: 1, data)) == .resume)
        #expect(serial.accesses == [.read(offset: 0, width: 4, arrivedZeroed: true)])
        #expect(data.bytes == [0x10, 0x11, 0x12, 0x13])
        #expect(data.guards.allSatisfy { $0 == 0x5A })
        #expect(handler.statistics.portReads == 1)
    }

    @Test func stringOutputIsOneWritePerElementAtTheSamePort() {
        var handler = handler
        let data = DataBuffer([1, 2, 3, 4, 5, 6, 7, 8])
        #expect(handler.handle(portExit(.write, port: 0x3F9, size: 2, count: 4, data)) == .resume)
        #expect(
            serial.accesses == [
                .write(offset: 1, bytes: [1, 2]), .write(offset: 1, bytes: [3, 4]),
                .write(offset: 1, bytes: [5, 6]), .write(offset: 1, bytes: [7, 8]),
            ])
        #expect(handler.statistics.portWrites == 1, "one exit, however many elements")
    }

    @Test(arguments: [1, 2, 4], [2, 3, 8])
    func stringInputFillsEachSliceFromTheDevice(size: Int, count: Int) {
        var handler = handler
        let data = DataBuffer([UInt8](repeating: 0xEE, count: size * count))
        #expect(handler.handle(portExit(.read, port: 0x3FA, size: size, count: count, data)) == .resume)
        #expect(serial.accesses == Array(repeating: .read(offset: 2, width: size, arrivedZeroed: true), count: count))
        let expected = (0..<count).flatMap { call in (0..<size).map { UInt8(0x10 * (call + 1) + $0) } }
        #expect(data.bytes == expected)
        #expect(data.guards.allSatisfy { $0 == 0x5A })
    }

    static let unclaimedShapes: [(size: Int, count: Int)] = [(1, 1), (2, 1), (4, 1), (2, 3), (4, 5)]

    @Test(arguments: unclaimedShapes)
    func unclaimedPortReadsGiveAllOnes(size: Int, count: Int) {
        var handler = handler
        let data = DataBuffer([UInt8](repeating: 0, count: size * count))
        #expect(handler.handle(portExit(.read, port: 0x80, size: size, count: count, data)) == .resume)
        #expect(data.bytes == [UInt8](repeating: 0xFF, count: size * count))
        #expect(data.guards.allSatisfy { $0 == 0x5A }, "only count * size bytes are written")
        #expect(handler.statistics.unclaimedPortAccesses == 1)
        #expect(handler.statistics.portReads == 1)
        #expect(serial.accesses.isEmpty && keyboard.accesses.isEmpty)
    }

    @Test func unclaimedPortWritesAreDroppedAndCounted() {
        var handler = handler
        let data = DataBuffer([1, 2, 3, 4])
        #expect(handler.handle(portExit(.write, port: 0x400, size: 2, count: 2, data)) == .resume)
        #expect(handler.handle(portExit(.write, port: 0x3F7, size: 1, count: 1, DataBuffer([9]))) == .resume)
        #expect(data.bytes == [1, 2, 3, 4])
        #expect(serial.accesses.isEmpty && keyboard.accesses.isEmpty && virtio.accesses.isEmpty)
        #expect(handler.statistics.unclaimedPortAccesses == 2)
        #expect(handler.statistics.portWrites == 2)
    }

    // MARK: - MMIO

    @Test(arguments: 1...8)
    func mmioGoesToTheClaimingDeviceAtItsOffset(length: Int) {
        var handler = handler
        let store = DataBuffer((0..<length).map { UInt8(0xA0 + $0) })
        #expect(handler.handle(mmioExit(.write, address: 0xD000_0070, store)) == .resume)
        let load = DataBuffer([UInt8](repeating: 0xEE, count: length))
        #expect(handler.handle(mmioExit(.read, address: 0xD000_0FFF, load)) == .resume)
        #expect(
            virtio.accesses == [
                .write(offset: 0x70, bytes: (0..<length).map { UInt8(0xA0 + $0) }),
                .read(offset: 0xFFF, width: length, arrivedZeroed: true),
            ])
        #expect(load.bytes == (0..<length).map { UInt8(0x10 + $0) })
        #expect(load.guards.allSatisfy { $0 == 0x5A })
        #expect(handler.statistics.mmioWrites == 1 && handler.statistics.mmioReads == 1)
        #expect(handler.statistics.unclaimedMMIOAccesses == 0)
        #expect(serial.accesses.isEmpty)
    }

    @Test func unclaimedMMIOReadsGiveAllOnesAndWritesAreDropped() {
        var handler = handler
        let load = DataBuffer([0, 0, 0, 0])
        #expect(handler.handle(mmioExit(.read, address: 0xD000_1000, load)) == .resume)  // one past the device
        #expect(load.bytes == [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(load.guards.allSatisfy { $0 == 0x5A })
        let store = DataBuffer([1, 2])
        #expect(handler.handle(mmioExit(.write, address: 0xCFFF_FFFF, store)) == .resume)  // one before it
        #expect(store.bytes == [1, 2])
        #expect(virtio.accesses.isEmpty)
        #expect(handler.statistics.unclaimedMMIOAccesses == 2)
        #expect(handler.statistics.mmioReads == 1 && handler.statistics.mmioWrites == 1)
    }

    @Test func portAndMMIOAddressesAreSeparateSpaces() {
        var handler = handler
        // 0x3F8 is a port; as an MMIO address nothing claims it.
        let load = DataBuffer([0])
        #expect(handler.handle(mmioExit(.read, address: 0x3F8, load)) == .resume)
        #expect(load.bytes == [0xFF])
        #expect(serial.accesses.isEmpty)
        #expect(handler.statistics.unclaimedMMIOAccesses == 1)
    }

    // MARK: - Exits that end the run

    @Test func haltAndShutdownStop() {
        var handler = handler
        #expect(handler.handle(.halt) == .stop(.halted))
        #expect(handler.handle(.shutdown) == .stop(.shutdown))
        #expect(handler.statistics.halts == 1)
        #expect(handler.statistics.other == 1)
    }

    @Test func failuresMapToTheirOutcomes() {
        var handler = handler
        #expect(handler.handle(.failedEntry(hardwareReason: 0x8000_0021, cpu: 2)) == .stop(.failedEntry(hardwareReason: 0x8000_0021)))
        #expect(handler.handle(.internalError(suberror: 1, data: [0xF, 0x10])) == .stop(.internalError(suberror: 1)))
        #expect(handler.handle(.unhandled(reason: 99)) == .stop(.unhandledExit(reason: 99)))
        #expect(handler.handle(.systemEvent(type: 2)) == .stop(.shutdown))
        #expect(handler.statistics.other == 4)
        #expect(handler.statistics.halts == 0)
    }

    @Test func interruptionsResumeAndAreCounted() {
        var handler = handler
        for _ in 0..<3 { #expect(handler.handle(.interrupted) == .resume) }
        #expect(handler.statistics.interruptions == 3)
        #expect(handler.statistics.total == 3)
    }

    // MARK: - Statistics

    @Test func statisticsCountEveryExit() {
        var handler = handler
        let byte = DataBuffer([0x41])
        let word = DataBuffer([0, 0])
        _ = handler.handle(portExit(.write, port: 0x3F8, size: 1, count: 1, byte))
        _ = handler.handle(portExit(.write, port: 0x3F8, size: 1, count: 1, byte))
        _ = handler.handle(portExit(.read, port: 0x3FD, size: 1, count: 1, byte))
        _ = handler.handle(portExit(.read, port: 0x70, size: 2, count: 1, word))
        _ = handler.handle(portExit(.write, port: 0x71, size: 1, count: 1, byte))
        _ = handler.handle(mmioExit(.read, address: 0xD000_0000, word))
        _ = handler.handle(mmioExit(.write, address: 0xD000_0004, word))
        _ = handler.handle(mmioExit(.write, address: 0xFEE0_0000, word))
        _ = handler.handle(.interrupted)
        _ = handler.handle(.halt)
        _ = handler.handle(.unhandled(reason: 7))

        var expected = ExitStatistics()
        expected.portWrites = 3
        expected.portReads = 2
        expected.unclaimedPortAccesses = 2
        expected.mmioReads = 1
        expected.mmioWrites = 2
        expected.unclaimedMMIOAccesses = 1
        expected.interruptions = 1
        expected.halts = 1
        expected.other = 1
        // Claimed accesses by device, named by type and range (the serial got 2 writes and a read).
        expected.deviceExits = ["RecordingDevice 0x3f8-0x3ff (ports)": 3, "RecordingDevice 0xd0000000-0xd0000fff (MMIO)": 2]
        #expect(handler.statistics == expected)
        #expect(handler.statistics.total == 11, "unclaimed accesses are a subset, not extra exits")
        #expect((handler.statistics + handler.statistics).total == 22)
        #expect((handler.statistics + ExitStatistics()) == handler.statistics)
        #expect((handler.statistics + handler.statistics).unclaimedMMIOAccesses == 2)
        #expect((handler.statistics + handler.statistics).deviceExits["RecordingDevice 0x3f8-0x3ff (ports)"] == 6)
    }
}
