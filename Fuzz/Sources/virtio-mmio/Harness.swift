import FuzzSupport
import Virtio
import VMMCore

/// The virtio-mmio transport (virtio 1.2 §4.2.2) on register sequences: reads and writes of any
/// width at any offset of its window, notifies, resets; guest RAM holds fuzzer bytes too.
final class Edges: InterruptTrigger, @unchecked Sendable { func trigger() {} }

let ramSize = 64 << 10

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    let memory = try! GuestMemory(size: ramSize)
    let storage = MemoryBlockStorage(bytes: [UInt8](repeating: 0x5A, count: 16 * 512))
    let transport = VirtioMMIOTransport(device: VirtioBlock(storage: storage, identifier: "fuzz"), memory: memory, interrupt: Edges())
    let image = input.take(Int(input.integer(UInt16.self)))
    try! memory.write(Array(image.prefix(ramSize)), at: GuestAddress(0))
    var operations = 0
    while !input.isAtEnd, operations < 4096 {
        operations += 1
        let kind = input.byte()
        let offset = UInt64(input.integer(UInt16.self) & 0x1FF)
        let width = [1, 2, 4, 8, 4, 4, 4, 4][Int(kind >> 5)]
        if kind & 1 == 0 {
            var bytes = input.take(width)
            while bytes.count < width { bytes.append(0) }
            bytes.withUnsafeBytes { transport.write(offset: offset, data: $0) }
        } else {
            var bytes = [UInt8](repeating: 0, count: width)
            bytes.withUnsafeMutableBytes { transport.read(offset: offset, data: $0) }
        }
        if kind & 0x1E == 0x1E { transport.serve(queue: Int(offset & 3)) }
    }
    return 0
}

@_cdecl("virtio_mmio_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
