import ControlAPI
import FuzzSupport

/// The control API's HTTP/1.1 request parser on a byte stream that arrives in fuzzer-chosen
/// pieces, as a Unix-socket client would send it; every request is taken until the stream is used up.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    var input = FuzzInput(data, count)
    let limits = HTTPLimits(maximumHeaderBytes: 2048, maximumHeaderFields: 16, maximumBodyBytes: 4096)
    var parser = HTTPRequestParser(limits: limits)
    let split = Int(input.byte())
    let stream = input.rest()
    var position = 0
    var requests = 0
    while position < stream.count, requests < 1000 {
        let end = min(stream.count, position + max(1, split == 0 ? stream.count : split))
        parser.append(stream[position..<end])
        position = end
        while let result = parser.next(), requests < 1000 {
            requests += 1
            if case .failure = result { return 0 }  // the server answers with an error and closes
        }
    }
    stream.withUnsafeBytes { _ = parseHTTPRequest($0, limits: limits) }
    return 0
}

@_cdecl("http_request_main")
public func harnessMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
