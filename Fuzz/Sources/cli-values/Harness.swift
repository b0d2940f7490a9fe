import FuzzSupport
import VMM

/// The values a user types: sizes, addresses, --disk arguments, --cpu-features lists, and the
/// size descriptions printed back.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    let number = input.integer(Int.self)
    let text = String(decoding: input.rest(), as: UTF8.self)
    _ = CommandLineValues.describe(size: number)
    if let size = CommandLineValues.size(text) { _ = CommandLineValues.describe(size: size) }
    _ = CommandLineValues.address(text)
    _ = try? DiskConfiguration(argument: text)
    if let policy = try? CPUIDPolicy(parsing: text) {
        _ = policy.entries(from: [CPUIDEntry(function: 4, eax: 0xFFFF_FFFF, ebx: 0, ecx: 0, edx: 0)], vcpu: UInt32(truncatingIfNeeded: number), of: UInt32(truncatingIfNeeded: number >> 32))
    }
    return 0
}

@_cdecl("cli_values_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
