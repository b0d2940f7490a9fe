import FuzzSupport
import Glibc
import Virtio
import VMMCore

/// A split virtqueue (virtio 1.2 §2.7) and virtio-blk (§5.2) over a disk in memory: the fuzzer
/// writes the descriptor table, the available ring and the data the driver would, the device
/// serves it, and every byte of guest RAM it changed must lie in the used ring or in a buffer a
/// descriptor marked device-writable.
final class Edges: InterruptTrigger, @unchecked Sendable { func trigger() {} }

let ramSize = 64 << 10
// One guest RAM for every input (zeroed each time): mapping it anew per input would dominate.
let memory = try! GuestMemory(size: ramSize)
let ram = try! memory.hostPointer(for: GuestAddress(0), length: ramSize)
let before = UnsafeMutableRawPointer.allocate(byteCount: ramSize, alignment: 64)
let queueSize: UInt16 = 16
let descriptors: UInt64 = 0x1000, available: UInt64 = 0x2000, used: UInt64 = 0x3000

func register(_ transport: VirtioMMIOTransport, _ offset: UInt64, _ value: UInt32) {
    withUnsafeBytes(of: value.littleEndian) { transport.write(offset: offset, data: $0) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    memset(ram, 0, ramSize)
    let storage = MemoryBlockStorage(bytes: [UInt8](repeating: 0xA5, count: 64 * 512), readOnly: input.byte() & 1 == 1)
    let transport = VirtioMMIOTransport(device: VirtioBlock(storage: storage, identifier: "fuzz"), memory: memory, interrupt: Edges())
    // The driver's side (§3.1.1), well-behaved: the fuzzer controls what it puts in the rings.
    register(transport, 0x70, 3)
    register(transport, 0x24, 1)
    register(transport, 0x20, 1)
    register(transport, 0x70, 11)
    register(transport, 0x30, 0)
    register(transport, 0x38, UInt32(queueSize))
    for (offset, address) in [(UInt64(0x80), descriptors), (0x90, available), (0xA0, used)] {
        register(transport, offset, UInt32(address))
    }
    register(transport, 0x44, 1)
    register(transport, 0x70, 15)

    // Descriptors: addresses folded into RAM most of the time, so chains reach real buffers.
    for index in 0..<UInt64(queueSize) {
        var address = input.integer(UInt64.self)
        if address & 1 << 63 == 0 { address %= UInt64(ramSize) }
        let entry = GuestAddress(descriptors + 16 * index)
        try! memory.store(address, at: entry)
        try! memory.store(input.integer(UInt32.self) % UInt32(ramSize * 2), at: entry.adding(8)!)
        try! memory.store(input.integer(UInt16.self), at: entry.adding(12)!)
        try! memory.store(input.integer(UInt16.self), at: entry.adding(14)!)
    }
    let availableIndex = UInt16(input.byte() % 20)
    for slot in 0..<UInt64(queueSize) { try! memory.store(UInt16(input.byte()), at: GuestAddress(available + 4 + 2 * slot)) }
    try! memory.store(availableIndex, at: GuestAddress(available + 2))
    let resetAfterwards = input.byte() & 1 == 1
    // Request headers and data anywhere after the rings.
    let payload = input.rest()
    try! memory.write(Array(payload.prefix(ramSize - 0x4000)), at: GuestAddress(0x4000))

    memcpy(before, ram, ramSize)
    var writable: [Range<UInt64>] = [used..<used + 6 + 8 * UInt64(queueSize)]
    for index in 0..<UInt64(queueSize) {
        let entry = GuestAddress(descriptors + 16 * index)
        let flags = try! memory.load(UInt16.self, at: entry.adding(12)!)
        guard flags & 2 != 0 else { continue }
        let address = try! memory.load(UInt64.self, at: entry)
        let length = UInt64(try! memory.load(UInt32.self, at: entry.adding(8)!))
        if address < UInt64(ramSize) { writable.append(address..<min(address + length, UInt64(ramSize))) }
    }
    transport.notify(queue: 0)  // no onNotify: served here
    // A reset in the middle of the driver's life must also leave memory alone.
    if resetAfterwards { register(transport, 0x70, 0) }
    for block in stride(from: 0, to: ramSize, by: 256) where memcmp(before + block, ram + block, 256) != 0 {
        for offset in block..<block + 256 where before.load(fromByteOffset: offset, as: UInt8.self) != ram.load(fromByteOffset: offset, as: UInt8.self) {
            guard writable.contains(where: { $0.contains(UInt64(offset)) }) else {
                fuzzFailure("the device wrote guest byte 0x\(String(offset, radix: 16)), outside the used ring and every writable buffer")
            }
        }
    }
    return 0
}

@_cdecl("virtio_blk_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
