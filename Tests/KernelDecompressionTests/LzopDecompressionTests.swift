import Foundation
import KernelDecompression
import LinuxBoot
import Testing

/// lzop's file format, as the kernel's build writes it for CONFIG_KERNEL_LZO (`lzop -9`, then the
/// size trailer) and as lib/decompress_unlzo.c reads it.
@Suite struct LzopDecompressionTests {
    /// lzop's default block: 256 KiB of input per block.
    static let block = 256 << 10
    static let sizes = [0, 1, 100, block - 1, block, block + 1, 3 * block + 12_345]
    /// The header `lzop -c` writes for standard input: magic 9, version, library version, version
    /// needed 2 each, method, level, flags 4, mode 4, mtime 8, name length 1 (no name), checksum 4.
    static let headerSize = 38

    func decompress(_ bytes: [UInt8], limit: Int) throws(KernelDecompressionError) -> [UInt8] {
        try KernelDecompressor.decompress(bytes[...], format: .lzo, limit: limit, name: "k")
    }

    /// `bytes` (an lzop file from standard input) with its header checksum made right again.
    func fixingHeaderChecksum(_ bytes: [UInt8]) -> [UInt8] {
        var bytes = bytes
        let sum = adler32(bytes[9..<(Self.headerSize - 4)])
        for index in 0..<4 { bytes[Self.headerSize - 4 + index] = UInt8(truncatingIfNeeded: sum >> (24 - 8 * index)) }
        return bytes
    }

    func adler32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var (a, b): (UInt32, UInt32) = (1, 0)
        for byte in bytes {
            a = (a + UInt32(byte)) % 65521
            b = (b + a) % 65521
        }
        return b << 16 | a
    }

    func putBigEndian(_ value: UInt32, at offset: Int, in bytes: inout [UInt8]) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (24 - 8 * index)) }
    }

    @Test(arguments: sizes)
    func lzopOutputDecodesToItsInputExactly(count: Int) throws {
        let original = sample(count: count)
        // The default, the fastest and the best method, CRC-32 instead of Adler-32, no checksums.
        for options in [["-c"], ["-1", "-c"], ["-9", "-c"], ["--crc32", "-c"], ["-F", "-c"]] {
            let compressed = try runTool(["lzop"] + options, input: original)
            #expect(KernelCompression(recognizing: compressed) == .lzo)
            let output = try decompress(compressed + sizeTrailer(count), limit: max(count, 1))
            #expect(output == original, "lzop \(options.joined(separator: " ")) of \(count) bytes")
        }
    }

    @Test func incompressibleBlocksAreStoredAndCopied() throws {
        // Random bytes do not compress: lzop stores each block as it is (compressed length =
        // length), so the file is larger than its input.
        var generator = SystemRandomNumberGenerator()
        let original = (0..<(2 * Self.block + 999)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let compressed = try runTool(["lzop", "-c"], input: original)
        #expect(compressed.count > original.count)
        #expect(try decompress(compressed, limit: original.count) == original)
    }

    @Test func aNamedFileDecodesToo() throws {
        // Compressed from a file rather than standard input: the header carries its name and mode.
        let original = sample(count: 70_000)
        let compressed = try runTool(
            ["sh", "-c", "d=$(mktemp -d) && cat > \"$d/vmlinux.bin\" && lzop -9 -c \"$d/vmlinux.bin\"; s=$?; rm -rf \"$d\"; exit $s"],
            input: original)
        #expect(compressed.count > Self.headerSize + 12)
        #expect(try decompress(compressed, limit: 100_000) == original)
    }

    @Test(arguments: [1000, block + 5000])
    func everyTruncationIsRefused(count: Int) throws {
        let compressed = try runTool(["lzop", "-c"], input: sample(count: count))
        // Every cut in the header and the first block's header, then every 61st byte, and the last few.
        let offsets = Set(Array(0..<64) + Array(stride(from: 64, to: compressed.count, by: 61)) + Array((compressed.count - 8)..<compressed.count))
        for offset in offsets.sorted() {
            let error = #expect(throws: KernelDecompressionError.self, "cut at \(offset) of \(compressed.count)") {
                try decompress(Array(compressed[..<offset]), limit: count)
            }
            #expect(error == .truncated(name: "k", format: .lzo), "cut at \(offset)")
        }
    }

    /// The first block's lengths, each made wrong: refused with a one-line error, never a trap.
    @Test func corruptBlockLengthsAreRefused() throws {
        let original = sample(count: 100_000)
        let compressed = try runTool(["lzop", "-c"], input: original)
        let lengthAt = Self.headerSize
        let compressedLengthAt = Self.headerSize + 4
        func word(_ offset: Int) -> UInt32 { compressed[offset..<offset + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        let length = word(lengthAt)
        let compressedLength = word(compressedLengthAt)
        #expect(length == UInt32(original.count) && compressedLength < length)

        func refusal(_ offset: Int, _ value: UInt32, limit: Int = 1 << 20) -> KernelDecompressionError? {
            var bytes = compressed
            putBigEndian(value, at: offset, in: &bytes)
            do {
                _ = try decompress(bytes, limit: limit)
                return nil
            } catch {
                #expect(!error.description.contains("\n"))
                return error
            }
        }
        func isCorrupt(_ error: KernelDecompressionError?) -> Bool {
            if case .corrupt = error { return true }
            return false
        }
        // More than the limit: a bomb's header.
        #expect(refusal(lengthAt, 0xFFFF_FFFF) == .exceedsLimit(name: "k", format: .lzo, limit: 1 << 20))
        #expect(refusal(lengthAt, (1 << 20) + 1) == .exceedsLimit(name: "k", format: .lzo, limit: 1 << 20))
        // Within the limit but more than any lzop block.
        #expect(refusal(lengthAt, 65 << 20, limit: 128 << 20)?.description
            == "k's lzo payload is corrupt (block 0 claims 68157440 bytes, more than lzop's 64 MiB block maximum): copy or rebuild the kernel image")
        // A length that does not match what the block decodes to.
        #expect(isCorrupt(refusal(lengthAt, length - 1)))
        #expect(isCorrupt(refusal(lengthAt, length + 1)))
        #expect(isCorrupt(refusal(lengthAt, compressedLength - 1)))
        // Compressed lengths: none, more than the block's length, more than the file, a byte short or over.
        #expect(refusal(compressedLengthAt, 0)?.description
            == "k's lzo payload is corrupt (block 0's compressed length 0 is not between 1 and its length 100000): copy or rebuild the kernel image")
        #expect(isCorrupt(refusal(compressedLengthAt, length + 1)))
        #expect(isCorrupt(refusal(compressedLengthAt, 0xFFFF_FFFF)))
        #expect(isCorrupt(refusal(compressedLengthAt, compressedLength - 1)))
        #expect(refusal(compressedLengthAt, compressedLength + 1) != nil)
        #expect(refusal(compressedLengthAt, min(length, UInt32(compressed.count))) == .truncated(name: "k", format: .lzo))
        // A length equal to the compressed length: the block is taken as stored, and its checksum fails.
        #expect(isCorrupt(refusal(lengthAt, compressedLength)))
    }

    @Test func corruptHeadersAndDataAreRefused() throws {
        let original = sample(count: 50_000)
        let compressed = try runTool(["lzop", "-c"], input: original)
        func error(_ bytes: [UInt8]) -> String? {
            do {
                _ = try decompress(bytes, limit: 1 << 20)
                return nil
            } catch { return error.description }
        }
        func detail(_ text: String) -> String { "k's lzo payload is corrupt (\(text)): copy or rebuild the kernel image" }
        var bytes = compressed
        bytes[6] ^= 1  // the magic's fifth to ninth bytes
        #expect(error(bytes) == detail("its lzop magic is wrong"))
        bytes = compressed
        bytes[22] ^= 1  // the mode: covered by the header checksum
        #expect(error(bytes) == detail("its lzop header checksum is wrong"))
        bytes = compressed
        bytes[15] = 9  // the method, with the checksum made right
        #expect(error(fixingHeaderChecksum(bytes)) == detail("lzop method 9, not one of LZO1X's (1 to 3)"))
        bytes = compressed
        bytes[9] = 0x08; bytes[10] = 0x00  // the file version
        #expect(error(fixingHeaderChecksum(bytes)) == detail("lzop file version 0x800, older than 0.90"))
        bytes = compressed
        bytes[19] |= 0x40  // reserved flag bits (0x00004000)
        #expect(error(fixingHeaderChecksum(bytes))?.hasPrefix("k's lzo payload is corrupt (lzop header flags 0x") == true)
        // A byte of the decompressed data's Adler-32, and each byte of the compressed data in turn
        // (every 37th): a decode error or a checksum mismatch, never a trap or wrong bytes.
        bytes = compressed
        bytes[Self.headerSize + 8] ^= 0x80
        #expect(error(bytes) == detail("block 0's Adler-32 checksum of its decompressed bytes is wrong"))
        for offset in stride(from: Self.headerSize + 12, to: compressed.count - 4, by: 37) {
            bytes = compressed
            bytes[offset] ^= 0x5A
            let message = error(bytes)
            #expect(message?.hasPrefix("k's lzo payload is corrupt (block 0") == true, "byte \(offset): \(message ?? "decoded")")
        }
        // lzop's filters are not something the kernel's decompressor undoes.
        let filtered = try runTool(["lzop", "--filter=1", "-c"], input: original)
        #expect(error(filtered) == detail("it was compressed through lzop filter 1, which the kernel's decompressor does not undo"))
    }

    @Test func theOutputLimitHolds() throws {
        let original = sample(count: 2 * Self.block + 777)
        let compressed = try runTool(["lzop", "-9", "-c"], input: original) + sizeTrailer(original.count)
        #expect(try decompress(compressed, limit: original.count) == original)
        // One byte short, and a limit that ends inside the second block and the first.
        for limit in [original.count - 1, Self.block + 1000, Self.block, 1000] {
            let error = #expect(throws: KernelDecompressionError.self, "limit \(limit)") { try decompress(compressed, limit: limit) }
            #expect(error == .exceedsLimit(name: "k", format: .lzo, limit: limit))
        }
        // A bomb: 64 MiB of zeros is 256 blocks of a few hundred bytes each.
        let bomb = try runTool(["lzop", "-9", "-c"], input: [UInt8](repeating: 0, count: 64 << 20))
        #expect(bomb.count < 1 << 20)
        let error = #expect(throws: KernelDecompressionError.self) { try decompress(bomb, limit: 4 << 20) }
        #expect(error == .exceedsLimit(name: "k", format: .lzo, limit: 4 << 20))
    }
}
