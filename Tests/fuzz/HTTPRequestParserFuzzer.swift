// A libFuzzer harness for the control API's request parser. Built on its own with the parser's
// one file (it needs nothing else), by Tests/fuzz/fuzz-http-parser.sh:
//
//   swiftc -sanitize=fuzzer,address -parse-as-library -O \
//       Sources/ControlAPI/HTTPRequestParser.swift Tests/fuzz/HTTPRequestParserFuzzer.swift
//
// Each input is one connection's bytes, fed once whole and once split at a point the input's first
// byte chooses; both must give the same requests (the parser is incremental), and nothing may trap.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequestParser(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let limits = HTTPLimits(maximumHeaderBytes: 512, maximumHeaderFields: 8, maximumBodyBytes: 256)
    _ = parseHTTPRequest(bytes, limits: limits)

    func requests(splitAt split: Int) -> [Result<HTTPRequest, HTTPParseError>] {
        var parser = HTTPRequestParser(limits: limits)
        var out: [Result<HTTPRequest, HTTPParseError>] = []
        func drain() {
            while out.count < 64, let next = parser.next() {
                out.append(next)
                if case .failure = next { return }
            }
        }
        parser.append(bytes[0..<split])
        drain()
        if case .failure = out.last {} else {
            parser.append(bytes[split...])
            drain()
        }
        return out
    }
    let whole = requests(splitAt: size)
    let split = requests(splitAt: Int(bytes[0]) % (size + 1))
    // A request taken early from a prefix is the same request; an error may only come earlier or the same.
    for (a, b) in zip(whole, split) {
        if case .success(let x) = a, case .success(let y) = b, x != y { fatalError("split input parsed differently") }
    }
    return 0
}
