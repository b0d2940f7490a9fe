import CFuzzDriver

/// The fuzzer's bytes, read front to back as the values a harness needs; past the end every read
/// is zero, so any input is a complete, valid sequence of operations.
public struct FuzzInput {
    public let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ data: UnsafePointer<UInt8>?, _ count: Int) {
        bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    }

    public var isAtEnd: Bool { position >= bytes.count }

    public mutating func byte() -> UInt8 {
        defer { position += 1 }
        return position < bytes.count ? bytes[position] : 0
    }

    public mutating func integer<T: FixedWidthInteger>(_ type: T.Type = T.self) -> T {
        var value: T = 0
        for index in 0..<MemoryLayout<T>.size { value |= T(truncatingIfNeeded: byte()) << (8 * index) }
        return value
    }

    /// Up to `count` bytes (fewer at the end).
    public mutating func take(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, position + max(0, count))
        defer { position = max(position, end) }
        return position < end ? Array(bytes[position..<end]) : []
    }

    /// The rest of the input.
    public mutating func rest() -> [UInt8] { take(bytes.count - position) }
}

/// Stops the fuzzer with a finding: libFuzzer reports the trap and saves the input.
public func fuzzFailure(_ message: String) -> Never {
    fatalError("fuzz finding: \(message)")
}

/// The harness's main. A SwiftPM debug build links an executable with `main` aliased to
/// `<module>_main`, which a harness defines (with `@_cdecl`) as a call to this: libFuzzer then
/// runs through LLVMFuzzerRunDriver. A release build links libFuzzer's own main instead.
public func runFuzzer(
    _ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32 {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments, callback)
}
