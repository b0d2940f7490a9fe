import Foundation
import FuzzSupport
import VMConfig

/// A VM configuration file (`swiftkvm run --config`, the control API's bodies): strict JSON
/// decoding of `VMConfiguration`, then its validation.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    let bytes = input.rest()
    guard let configuration = try? JSONDecoder().decode(VMConfiguration.self, from: Data(bytes)) else { return 0 }
    try? configuration.validate()
    _ = try? JSONEncoder().encode(configuration)
    return 0
}

@_cdecl("vm_config_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
