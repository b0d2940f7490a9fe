import Foundation
import KernelDecompression
import LinuxBoot
import Testing

/// Runs a command-line tool with `input` on its standard input and returns its standard output.
/// Standard input is fed from a file, so a large input cannot deadlock the pipes.
func runTool(_ arguments: [String], input: [UInt8] = []) throws -> [UInt8] {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-decompress-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let inputFile = directory.appendingPathComponent("in")
    let outputFile = directory.appendingPathComponent("out")
    try Data(input).write(to: inputFile)
    FileManager.default.createFile(atPath: outputFile.path, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.standardInput = try FileHandle(forReadingFrom: inputFile)
    process.standardOutput = try FileHandle(forWritingTo: outputFile)
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw ToolError(message: "\(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
    }
    return [UInt8](try Data(contentsOf: outputFile))
}

struct ToolError: Error, CustomStringConvertible { let message: String; var description: String { message } }

/// The compressor command the kernel's build (or the nearest tool) uses for each format.
func compressor(_ format: KernelCompression) -> [String] {
    switch format {
    case .gzip: ["gzip", "-9", "-c"]
    case .xz: ["xz", "--check=crc32", "-c"]  // scripts/xz_wrap.sh: CRC32, as the kernel's decoder wants
    case .lz4: ["lz4", "-l", "-9", "-c"]  // the legacy frame, as scripts/Makefile.lib's cmd_lz4
    case .zstd: ["zstd", "-19", "-c"]
    case .bzip2: ["bzip2", "-9", "-c"]
    case .lzma: ["xz", "--format=lzma", "-9", "-c"]
    case .lzo: ["lzop", "-c"]
    }
}

/// Data that compresses, but not to nothing: text-like runs with position-dependent bytes.
func sample(count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var state: UInt32 = 0x1234_5678
    for index in 0..<count {
        state = state &* 1_103_515_245 &+ 12345
        bytes[index] = index % 7 == 0 ? UInt8(truncatingIfNeeded: state >> 16) : UInt8(65 + index % 23)
    }
    return bytes
}

/// The kernel build's `*_with_size` trailer: the uncompressed size, 32-bit little-endian.
func sizeTrailer(_ count: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: count >> (8 * $0)) } }

@Suite struct KernelDecompressorTests {
    static let formats: [KernelCompression] = [.gzip, .xz, .lz4, .zstd, .bzip2, .lzma, .lzo]

    @Test(arguments: formats)
    func roundTripsWhatTheCommandLineToolMakes(format: KernelCompression) throws {
        let original = sample(count: 300_000)
        let compressed = try runTool(compressor(format), input: original)
        #expect(KernelCompression(recognizing: compressed) == format)
        // As the tool wrote it, and with the kernel build's size trailer after it.
        let plain = try KernelDecompressor.decompress(compressed[...], format: format, limit: original.count, name: "test")
        #expect(plain == original)
        let trailed = try KernelDecompressor.decompress(
            (compressed + sizeTrailer(original.count))[...], format: format, limit: original.count + 100, name: "test")
        #expect(trailed == original)
    }

    @Test func lz4DecodesSeveralLegacyBlocks() throws {
        // More than one 8 MiB block: lz4 -l splits the input, each block with its own size word.
        let original = sample(count: 9 << 20)
        let compressed = try runTool(compressor(.lz4), input: original)
        let output = try KernelDecompressor.decompress(
            (compressed + sizeTrailer(original.count))[...], format: .lz4, limit: 10 << 20, name: "test")
        #expect(output == original)
    }

    @Test(arguments: formats)
    func aBombIsRefusedAtTheLimit(format: KernelCompression) throws {
        let compressed = try runTool(compressor(format), input: [UInt8](repeating: 0, count: 4 << 20))
        let error = #expect(throws: KernelDecompressionError.self) {
            try KernelDecompressor.decompress(compressed[...], format: format, limit: 64 << 10, name: "bomb")
        }
        #expect(error == .exceedsLimit(name: "bomb", format: format, limit: 64 << 10))
        #expect(error?.description == "bomb's \(format) payload decompresses to more than its 65536-byte limit (init_size): the image is corrupt or hostile; copy or rebuild it")
    }

    @Test(arguments: formats)
    func aTruncatedStreamIsRefused(format: KernelCompression) throws {
        let original = sample(count: 200_000)
        let compressed = try runTool(compressor(format), input: original)
        let half = compressed[..<(compressed.count / 2)]
        let error = #expect(throws: KernelDecompressionError.self) {
            try KernelDecompressor.decompress(half, format: format, limit: original.count, name: "cut")
        }
        #expect(error == .truncated(name: "cut", format: format))
        #expect(error?.description.contains("\n") == false)
    }

    @Test(arguments: formats)
    func garbageIsCorruptNotACrash(format: KernelCompression) throws {
        var bytes = format.magic + sample(count: 4096)
        bytes[format.magic.count] ^= 0xFF
        #expect(throws: KernelDecompressionError.self) {
            try KernelDecompressor.decompress(bytes[...], format: format, limit: 1 << 20, name: "junk")
        }
        // Empty input and a bad limit, too.
        #expect(throws: KernelDecompressionError.self) { try KernelDecompressor.decompress([], format: format, limit: 10, name: "e") }
        #expect(throws: KernelDecompressionError.self) { try KernelDecompressor.decompress(bytes[...], format: format, limit: 0, name: "e") }
    }

    /// Random bytes after each magic, many times: every input ends in a typed error or a result
    /// within the limit, never a trap.
    @Test(arguments: formats)
    func fuzzedInputsNeverTrap(format: KernelCompression) throws {
        var generator = SystemRandomNumberGenerator()
        let valid = try runTool(compressor(format), input: sample(count: 20_000))
        for round in 0..<200 {
            var bytes = round % 2 == 0 ? valid : format.magic + (0..<Int.random(in: 0..<512, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if round % 2 == 0 {
                for _ in 0..<Int.random(in: 1...8, using: &generator) {
                    bytes[Int.random(in: format.magic.count..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                }
            }
            if let output = try? KernelDecompressor.decompress(bytes[...], format: format, limit: 30_000, name: "fuzz") {
                #expect(output.count <= 30_000)
            }
        }
    }
}

/// A minimal bzImage (protocol 2.15, 64-bit entry) whose protected-mode code is `payload`
/// followed by padding to a paragraph: the fields BzImage and KernelPayload read.
func bzImage(payload: [UInt8], initSize: UInt32) throws -> BzImage {
    let setupSectors = 4
    let setup = (setupSectors + 1) * 512
    let code = (payload.count + 15) / 16 * 16
    var bytes = [UInt8](repeating: 0, count: setup + code)
    func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
        for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
    put(UInt8(setupSectors), 0x1F1)
    put(UInt32(code / 16), 0x1F4)
    put(UInt16(0xAA55), 0x1FE)
    put(UInt8(0x6A), 0x201)
    put(UInt32(0x5372_6448), 0x202)
    put(UInt16(0x020F), 0x206)
    put(UInt8(0x01), 0x211)
    put(UInt32(0x7FFF_FFFF), 0x22C)
    put(UInt32(0x20_0000), 0x230)
    put(UInt16(0x0003), 0x236)
    put(UInt32(2047), 0x238)
    put(UInt32(0), 0x248)
    put(UInt32(payload.count), 0x24C)
    put(UInt64(0x100_0000), 0x258)
    put(initSize, 0x260)
    bytes.replaceSubrange(setup..<setup + payload.count, with: payload)
    return try BzImage(bytes: bytes, name: "bzImage")
}

@Suite struct DecompressedKernelCacheTests {
    @Test func theSecondLoadComesFromTheCache() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-cache-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let original = sample(count: 100_000)
        let kernel = try bzImage(payload: try runTool(compressor(.gzip), input: original), initSize: 200_000)
        let payload = try KernelPayload(of: kernel)
        let cache = DecompressedKernelCache(directory: folder)

        let first = try cache.decompressedKernel(of: kernel, payload: payload)
        #expect(first.vmlinux == original && !first.fromCache)
        let file = cache.path(forHash: DecompressedKernelCache.sha256(kernel.bytes))
        #expect(file.hasPrefix(folder + "/vmlinux/") && file.count == folder.count + 9 + 64)
        #expect(try Data(contentsOf: URL(fileURLWithPath: file)) == Data(original))
        // No temporary file is left beside it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder + "/vmlinux").count == 1)

        let second = try cache.decompressedKernel(of: kernel, payload: payload)
        #expect(second.vmlinux == original && second.fromCache)

        // A cache file larger than init_size is not trusted: decompressed again and replaced.
        try Data(repeating: 1, count: 300_000).write(to: URL(fileURLWithPath: file))
        let third = try cache.decompressedKernel(of: kernel, payload: payload)
        #expect(third.vmlinux == original && !third.fromCache)
    }

    @Test func sha256MatchesTheKnownDigest() {
        #expect(DecompressedKernelCache.sha256(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func anUnwritableFolderOnlyMeansNoCache() throws {
        let original = sample(count: 10_000)
        let kernel = try bzImage(payload: try runTool(compressor(.xz), input: original), initSize: 20_000)
        let cache = DecompressedKernelCache(directory: "/proc/swiftkvm-no-such-folder")
        let result = try cache.decompressedKernel(of: kernel, payload: try KernelPayload(of: kernel))
        #expect(result.vmlinux == original && !result.fromCache)
    }
}
