import FuzzSupport
import LinuxBoot
import VMMCore

/// The bzImage parser, then the loader with the parsed image into 32 MiB of guest RAM (the
/// fuzzer's bytes are a kernel file: Documentation/arch/x86/boot.rst's setup header and all).
let memory = try! GuestMemory(size: 32 << 20)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    let bytes = input.rest()
    guard let kernel = try? BzImage(bytes: bytes) else { return 0 }
    _ = kernel.kernelMemory(loadedAt: GuestAddress(0x10_0000))
    // A small initrd (from the image's own tail) and a short command line.
    let initrd = Array(bytes.suffix(4096))
    guard let commandLine = try? KernelCommandLine("console=ttyS0 panic=-1", maximumLength: 255) else { return 0 }
    _ = try? LinuxLoader.load(kernel: kernel, initrd: initrd, commandLine: commandLine, memory: memory)
    return 0
}

@_cdecl("bzimage_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
