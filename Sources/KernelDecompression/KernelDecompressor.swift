// KernelDecompression: a bzImage's compressed kernel decompressed in the host with Debian's
// libraries (liblzma, liblz4, libzstd, zlib, libbz2, liblzo2), into a buffer that never grows past the
// bound the caller gives (the setup header's init_size), and a cache of the results. A target of
// its own so the VMM core does not carry these libraries' headers.
import CBZip2
import CLZ4
import CLZMA
import CLZO
import CZlib
import CZstd
import LinuxBoot

/// Why a compressed kernel could not be decompressed. Each description is one line.
public enum KernelDecompressionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// This build has no decoder for the format (none left: every format KernelCompression names
    /// decodes; kept for a format added to it later).
    case unsupported(name: String, format: KernelCompression)
    /// The data decompresses to more than `limit` bytes: a decompression bomb, or a header whose
    /// `init_size` is wrong.
    case exceedsLimit(name: String, format: KernelCompression, limit: Int)
    /// The data ends before the compressed stream does.
    case truncated(name: String, format: KernelCompression)
    /// The decoder found the data invalid.
    case corrupt(name: String, format: KernelCompression, detail: String)
    /// The decoder could not start (out of memory, say).
    case decoderFailed(name: String, format: KernelCompression, call: String, code: Int)

    public var description: String {
        switch self {
        case .unsupported(let name, let format):
            "\(name) is compressed with \(format), which this build cannot decompress: boot it with the in-guest decompressor, or rebuild the kernel with another compression"
        case .exceedsLimit(let name, let format, let limit):
            "\(name)'s \(format) payload decompresses to more than its \(limit)-byte limit (init_size): the image is corrupt or hostile; copy or rebuild it"
        case .truncated(let name, let format):
            "\(name)'s \(format) payload ends before its compressed stream does: the image is truncated; copy or rebuild it"
        case .corrupt(let name, let format, let detail):
            "\(name)'s \(format) payload is corrupt (\(detail)): copy or rebuild the kernel image"
        case .decoderFailed(let name, let format, let call, let code):
            "decompressing \(name)'s \(format) payload failed: \(call) returned \(code)"
        }
    }
}

/// Decompresses kernel payloads in the host.
///
/// The kernel's build appends the uncompressed size (4 bytes, little-endian) after every
/// compressed stream but gzip's, whose trailer already holds it (arch/x86/boot/compressed/Makefile,
/// `*_with_size`; `mkpiggy` reads it back). Every decoder here stops at the end of its stream and
/// ignores what follows, so a stream from the command-line tools, without that trailer, works too.
public enum KernelDecompressor {
    /// The formats this build decodes.
    public static let supportedFormats: Set<KernelCompression> = [.gzip, .xz, .lz4, .zstd, .bzip2, .lzma, .lzo]

    /// Memory the xz and lzma decoders may use for their dictionaries: the kernel's xz uses a
    /// dictionary of at most 32 MiB (scripts/xz_wrap.sh), lzma -9 64 MiB.
    public static let decoderMemoryLimit: UInt64 = 256 << 20

    /// `payload` decompressed: at most `payload.decompressedLimit` bytes.
    public static func decompress(_ payload: KernelPayload, name: String) throws(KernelDecompressionError) -> [UInt8] {
        guard let format = payload.compression else {
            throw .corrupt(name: name, format: .gzip, detail: "no known compression magic at its start")
        }
        return try decompress(payload.bytes, format: format, limit: payload.decompressedLimit, name: name)
    }

    /// `input` decompressed as `format`, refusing to produce more than `limit` bytes. The result's
    /// storage is allocated once, at `limit` bytes of capacity; pages never written are never touched.
    public static func decompress(
        _ input: ArraySlice<UInt8>, format: KernelCompression, limit: Int, name: String
    ) throws(KernelDecompressionError) -> [UInt8] {
        guard limit > 0, limit <= Int(UInt32.max) else {
            throw .exceedsLimit(name: name, format: format, limit: max(limit, 0))
        }
        var failure: KernelDecompressionError?
        let output = [UInt8](unsafeUninitializedCapacity: limit) { buffer, count in
            let result: Result<Int, KernelDecompressionError> = input.withUnsafeBytes { source in
                let decoder = Decoder(input: source, output: buffer, format: format, name: name)
                do throws(KernelDecompressionError) { return .success(try decoder.run()) } catch { return .failure(error) }
            }
            switch result {
            case .success(let produced): count = produced
            case .failure(let error):
                failure = error
                count = 0
            }
        }
        if let failure { throw failure }
        return output
    }
}

/// One decompression: input and output buffers and the format.
private struct Decoder {
    let input: UnsafeRawBufferPointer
    let output: UnsafeMutableBufferPointer<UInt8>
    let format: KernelCompression
    let name: String

    var inputBase: UnsafePointer<UInt8>? { input.baseAddress?.assumingMemoryBound(to: UInt8.self) }

    func run() throws(KernelDecompressionError) -> Int {
        guard !input.isEmpty else { throw .truncated(name: name, format: format) }
        switch format {
        case .gzip: return try gzip()
        case .xz: return try xz(alone: false)
        case .lzma: return try xz(alone: true)
        case .lz4: return try lz4Legacy()
        case .zstd: return try zstd()
        case .bzip2: return try bzip2()
        case .lzo: return try lzop()
        }
    }

    var exceeds: KernelDecompressionError { .exceedsLimit(name: name, format: format, limit: output.count) }
    var truncated: KernelDecompressionError { .truncated(name: name, format: format) }
    func corrupt(_ detail: String) -> KernelDecompressionError { .corrupt(name: name, format: format, detail: detail) }

    // MARK: gzip (zlib inflate, RFC 1952 framing)

    func gzip() throws(KernelDecompressionError) -> Int {
        var stream = z_stream()
        // windowBits 16 + MAX_WBITS: a gzip wrapper, not zlib's (zlib.h, inflateInit2).
        let status = inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else { throw .decoderFailed(name: name, format: format, call: "inflateInit2", code: Int(status)) }
        defer { inflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: inputBase)
        stream.avail_in = uInt(input.count)
        stream.next_out = output.baseAddress
        stream.avail_out = uInt(output.count)
        while true {
            let result = inflate(&stream, Z_FINISH)
            switch result {
            case Z_STREAM_END: return output.count - Int(stream.avail_out)
            case Z_OK:
                continue  // progress was made; the next call goes on (or reports Z_BUF_ERROR)
            case Z_BUF_ERROR:
                // No progress possible: out of room, or out of input.
                if stream.avail_out == 0 { throw exceeds }
                throw truncated
            case Z_DATA_ERROR:
                throw corrupt(stream.msg.map { String(cString: $0) } ?? "invalid deflate data")
            case Z_MEM_ERROR:
                throw .decoderFailed(name: name, format: format, call: "inflate", code: Int(result))
            default:
                throw corrupt("inflate returned \(result)")
            }
        }
    }

    // MARK: xz and lzma (liblzma)

    func xz(alone: Bool) throws(KernelDecompressionError) -> Int {
        var stream = lzma_stream()
        // No LZMA_CONCATENATED: the decoder stops at the end of the first stream, before the
        // kernel's 4-byte size trailer.
        let status =
            alone
            ? lzma_alone_decoder(&stream, KernelDecompressor.decoderMemoryLimit)
            : lzma_stream_decoder(&stream, KernelDecompressor.decoderMemoryLimit, 0)
        guard status == LZMA_OK else {
            throw .decoderFailed(name: name, format: format, call: alone ? "lzma_alone_decoder" : "lzma_stream_decoder", code: Int(status.rawValue))
        }
        defer { lzma_end(&stream) }
        stream.next_in = inputBase
        stream.avail_in = input.count
        stream.next_out = output.baseAddress
        stream.avail_out = output.count
        while true {
            let result = lzma_code(&stream, LZMA_FINISH)
            switch result {
            case LZMA_STREAM_END: return output.count - stream.avail_out
            case LZMA_OK:
                continue  // progress was made; a call that cannot progress reports LZMA_BUF_ERROR
            case LZMA_BUF_ERROR:
                if stream.avail_out == 0 { throw exceeds }
                throw truncated
            case LZMA_DATA_ERROR: throw corrupt("invalid compressed data")
            case LZMA_FORMAT_ERROR: throw corrupt("not in the \(alone ? ".lzma" : ".xz") format")
            case LZMA_OPTIONS_ERROR: throw corrupt("unsupported options")
            case LZMA_MEMLIMIT_ERROR:
                throw corrupt("it needs more than \(KernelDecompressor.decoderMemoryLimit >> 20) MiB of decoder memory")
            default:
                throw .decoderFailed(name: name, format: format, call: "lzma_code", code: Int(result.rawValue))
            }
        }
    }

    // MARK: LZ4 legacy frame (lz4 -l; lib/decompress_unlz4.c)

    /// The legacy frame's magic, 0x184C2102, which may also start a concatenated frame.
    static let lz4LegacyMagic: UInt32 = 0x184C_2102
    /// Each legacy block decompresses to at most 8 MiB.
    static let lz4LegacyBlockSize = 8 << 20

    func lz4Legacy() throws(KernelDecompressionError) -> Int {
        guard let base = inputBase, let target = output.baseAddress else { throw truncated }
        func word(at offset: Int) -> UInt32 {
            UInt32(base[offset]) | UInt32(base[offset + 1]) << 8 | UInt32(base[offset + 2]) << 16 | UInt32(base[offset + 3]) << 24
        }
        var position = 0
        var produced = 0
        var blocks = 0
        while position < input.count {
            guard input.count - position >= 4 else { throw truncated }
            let value = word(at: position)
            position += 4
            if value == Self.lz4LegacyMagic { continue }  // a (concatenated) frame starts
            // The kernel's size trailer: the last 4 bytes, equal to the bytes produced so far.
            if position == input.count, blocks > 0, Int(value) == produced { break }
            let blockSize = Int(value)
            guard blockSize > 0, blockSize <= Int(LZ4_compressBound(Int32(Self.lz4LegacyBlockSize))) else {
                throw corrupt("a block of \(blockSize) bytes, more than an 8 MiB block can compress to")
            }
            guard input.count - position >= blockSize else { throw truncated }
            let room = output.count - produced
            let capacity = min(room, Self.lz4LegacyBlockSize)
            let source = UnsafeRawPointer(base + position).assumingMemoryBound(to: CChar.self)
            let result =
                capacity == 0
                ? -1
                : LZ4_decompress_safe(
                    source, UnsafeMutableRawPointer(target + produced).assumingMemoryBound(to: CChar.self),
                    Int32(blockSize), Int32(capacity))
            if result < 0 {
                // A block that fails with less room than a whole block may only be too big for it.
                if capacity < Self.lz4LegacyBlockSize, Self.lz4BlockDecodes(source, size: blockSize) { throw exceeds }
                throw corrupt("block \(blocks) does not decode")
            }
            produced += Int(result)
            position += blockSize
            blocks += 1
        }
        guard blocks > 0 else { throw truncated }
        return produced
    }

    /// Whether an LZ4 block decodes given a whole block's room (into a scratch buffer).
    static func lz4BlockDecodes(_ source: UnsafePointer<CChar>, size: Int) -> Bool {
        let scratch = UnsafeMutablePointer<CChar>.allocate(capacity: lz4LegacyBlockSize)
        defer { scratch.deallocate() }
        return LZ4_decompress_safe(source, scratch, Int32(size), Int32(lz4LegacyBlockSize)) >= 0
    }

    // MARK: zstd

    func zstd() throws(KernelDecompressionError) -> Int {
        guard let base = input.baseAddress else { throw truncated }
        // The first frame only: the kernel's size trailer follows it.
        let frameSize = ZSTD_findFrameCompressedSize(base, input.count)
        if ZSTD_isError(frameSize) != 0 {
            let code = ZSTD_getErrorCode(frameSize)
            if code == ZSTD_error_srcSize_wrong { throw truncated }
            throw corrupt(String(cString: ZSTD_getErrorName(frameSize)))
        }
        // Known content sizes are checked before any work: a bomb says so in its header.
        let contentSize = ZSTD_getFrameContentSize(base, frameSize)
        if contentSize != ZSTD_CONTENTSIZE_UNKNOWN, contentSize != ZSTD_CONTENTSIZE_ERROR, contentSize > UInt64(output.count) {
            throw exceeds
        }
        let result = ZSTD_decompress(output.baseAddress, output.count, base, frameSize)
        if ZSTD_isError(result) != 0 {
            switch ZSTD_getErrorCode(result) {
            case ZSTD_error_dstSize_tooSmall: throw exceeds
            case ZSTD_error_srcSize_wrong: throw truncated
            default: throw corrupt(String(cString: ZSTD_getErrorName(result)))
            }
        }
        return result
    }

    // MARK: bzip2

    func bzip2() throws(KernelDecompressionError) -> Int {
        var stream = bz_stream()
        let status = BZ2_bzDecompressInit(&stream, 0, 0)
        guard status == BZ_OK else { throw .decoderFailed(name: name, format: format, call: "BZ2_bzDecompressInit", code: Int(status)) }
        defer { BZ2_bzDecompressEnd(&stream) }
        stream.next_in = UnsafeMutableRawPointer(mutating: input.baseAddress)?.assumingMemoryBound(to: CChar.self)
        stream.avail_in = UInt32(input.count)
        stream.next_out = UnsafeMutableRawPointer(output.baseAddress)?.assumingMemoryBound(to: CChar.self)
        stream.avail_out = UInt32(output.count)
        while true {
            let result = BZ2_bzDecompress(&stream)
            switch result {
            case BZ_STREAM_END: return output.count - Int(stream.avail_out)
            case BZ_OK:
                if stream.avail_out == 0 { throw exceeds }
                if stream.avail_in == 0 { throw truncated }
            case BZ_DATA_ERROR, BZ_DATA_ERROR_MAGIC: throw corrupt("invalid bzip2 data")
            default:
                throw .decoderFailed(name: name, format: format, call: "BZ2_bzDecompress", code: Int(result))
            }
        }
    }

    // MARK: lzo (lzop's file format; lib/decompress_unlzo.c, lzop's p_header and x_decompress)

    /// lzop's magic: 89 "LZO" 00 0D 0A 1A 0A (KernelCompression recognises the first four).
    static let lzopMagic: [UInt8] = [0x89, 0x4C, 0x5A, 0x4F, 0x00, 0x0D, 0x0A, 0x1A, 0x0A]
    /// lzop writes blocks of 256 KiB by default and reads none larger than 64 MiB (MAX_BLOCK_SIZE).
    static let lzopMaximumBlockSize = 64 << 20

    /// The header flags this decoder acts on (lzop's conf.h).
    enum LzopFlag {
        static let adler32Decompressed: UInt32 = 0x0000_0001
        static let adler32Compressed: UInt32 = 0x0000_0002
        static let extraField: UInt32 = 0x0000_0040
        static let crc32Decompressed: UInt32 = 0x0000_0100
        static let crc32Compressed: UInt32 = 0x0000_0200
        static let filter: UInt32 = 0x0000_0800
        static let headerCRC32: UInt32 = 0x0000_1000
        /// Bits lzop defines: F_MASK, the operating-system byte and the character-set nibble; the
        /// rest are reserved, and lzop refuses a file that sets them.
        static let known: UInt32 = 0x0000_3FFF | 0xFF00_0000 | 0x00F0_0000
    }

    /// liblzo2's lzo_init(), once per process: it checks the library against this build's types.
    static let lzoInitResult: Int32 = swiftkvm_lzo_init()

    /// Reads `input` front to back; every read is checked against what is left, so a short input
    /// is `.truncated` and never a read past the end.
    struct Cursor {
        let bytes: UnsafeRawBufferPointer
        var position = 0

        var remaining: Int { bytes.count - position }

        mutating func take(_ count: Int, or error: KernelDecompressionError) throws(KernelDecompressionError) -> UnsafeRawBufferPointer {
            guard count >= 0, count <= remaining else { throw error }
            let slice = UnsafeRawBufferPointer(rebasing: bytes[position..<position + count])
            position += count
            return slice
        }

        mutating func bigEndian(_ width: Int, or error: KernelDecompressionError) throws(KernelDecompressionError) -> UInt32 {
            try take(width, or: error).reduce(0) { $0 << 8 | UInt32($1) }
        }
    }

    /// The checksum lzop keeps: Adler-32 (starting at 1) or CRC-32 (starting at 0), both zlib's.
    static func lzopChecksum(_ bytes: UnsafeRawBufferPointer, crc32 useCRC32: Bool) -> UInt32 {
        // lzop's blocks and headers are far below 4 GiB (a block is at most 64 MiB); uInt is 32-bit.
        let base = bytes.baseAddress?.assumingMemoryBound(to: Bytef.self)
        let length = uInt(bytes.count)
        return UInt32(useCRC32 ? crc32(0, base, length) : adler32(1, base, length))
    }

    func lzop() throws(KernelDecompressionError) -> Int {
        guard Self.lzoInitResult == LZO_E_OK else {
            throw .decoderFailed(name: name, format: format, call: "lzo_init", code: Int(Self.lzoInitResult))
        }
        guard let target = output.baseAddress else { throw exceeds }
        var cursor = Cursor(bytes: input)

        // The header: magic, then the fields the header checksum covers, then the checksum.
        let magic = try cursor.take(min(Self.lzopMagic.count, cursor.remaining), or: truncated)
        guard magic.elementsEqual(Self.lzopMagic.prefix(magic.count)) else { throw corrupt("its lzop magic is wrong") }
        guard magic.count == Self.lzopMagic.count else { throw truncated }
        let headerStart = cursor.position
        let version = try cursor.bigEndian(2, or: truncated)
        guard version >= 0x0900 else { throw corrupt("lzop file version \(hex(version)), older than 0.90") }
        _ = try cursor.take(2, or: truncated)  // the LZO library version that wrote it
        if version >= 0x0940 { _ = try cursor.take(2, or: truncated) }  // the version needed to extract
        let method = try cursor.bigEndian(1, or: truncated)
        // M_LZO1X_1, M_LZO1X_1_15 and M_LZO1X_999: all three are LZO1X, which lzo1x_decompress_safe reads.
        guard (1...3).contains(method) else { throw corrupt("lzop method \(method), not one of LZO1X's (1 to 3)") }
        if version >= 0x0940 { _ = try cursor.take(1, or: truncated) }  // the compression level
        let flags = try cursor.bigEndian(4, or: truncated)
        guard flags & ~LzopFlag.known == 0 else { throw corrupt("lzop header flags \(hex(flags)) set reserved bits") }
        if flags & LzopFlag.filter != 0 {
            // The kernel's build never uses lzop's filters, and its decompressor does not undo one.
            let filter = try cursor.bigEndian(4, or: truncated)
            throw corrupt("it was compressed through lzop filter \(filter), which the kernel's decompressor does not undo")
        }
        _ = try cursor.take(4 + 4, or: truncated)  // mode, mtime (low half)
        if version >= 0x0940 { _ = try cursor.take(4, or: truncated) }  // mtime (high half)
        let nameLength = Int(try cursor.bigEndian(1, or: truncated))
        _ = try cursor.take(nameLength, or: truncated)
        let headerCRC32 = flags & LzopFlag.headerCRC32 != 0
        let covered = UnsafeRawBufferPointer(rebasing: input[headerStart..<cursor.position])
        guard try cursor.bigEndian(4, or: truncated) == Self.lzopChecksum(covered, crc32: headerCRC32) else {
            throw corrupt("its lzop header checksum is wrong")
        }
        if flags & LzopFlag.extraField != 0 {
            // Never written by lzop 1.04, but defined: a length, the bytes, a checksum of both.
            let extraStart = cursor.position
            let extraLength = Int(try cursor.bigEndian(4, or: truncated))
            _ = try cursor.take(extraLength, or: truncated)
            let extra = UnsafeRawBufferPointer(rebasing: input[extraStart..<cursor.position])
            guard try cursor.bigEndian(4, or: truncated) == Self.lzopChecksum(extra, crc32: headerCRC32) else {
                throw corrupt("its lzop extra field's checksum is wrong")
            }
        }

        // The blocks: uncompressed length, compressed length, checksums, data; a 0 length ends them.
        var produced = 0
        var block = 0
        while true {
            let length = Int(try cursor.bigEndian(4, or: truncated))
            if length == 0 { return produced }  // what follows (the kernel's size trailer) is not read
            // UInt32s in an Int: none of this arithmetic can overflow, and produced <= output.count.
            guard length <= output.count - produced else { throw exceeds }
            guard length <= Self.lzopMaximumBlockSize else {
                throw corrupt("block \(block) claims \(length) bytes, more than lzop's 64 MiB block maximum")
            }
            let compressedLength = Int(try cursor.bigEndian(4, or: truncated))
            guard compressedLength > 0, compressedLength <= length else {
                throw corrupt("block \(block)'s compressed length \(compressedLength) is not between 1 and its length \(length)")
            }
            let stored = compressedLength == length
            var expected: [(value: UInt32, crc32: Bool, ofCompressed: Bool)] = []
            if flags & LzopFlag.adler32Decompressed != 0 { expected.append((try cursor.bigEndian(4, or: truncated), false, false)) }
            if flags & LzopFlag.crc32Decompressed != 0 { expected.append((try cursor.bigEndian(4, or: truncated), true, false)) }
            if !stored {
                if flags & LzopFlag.adler32Compressed != 0 { expected.append((try cursor.bigEndian(4, or: truncated), false, true)) }
                if flags & LzopFlag.crc32Compressed != 0 { expected.append((try cursor.bigEndian(4, or: truncated), true, true)) }
            }
            let data = try cursor.take(compressedLength, or: truncated)
            let destination = UnsafeMutableRawBufferPointer(start: target + produced, count: length)
            if stored {
                destination.copyMemory(from: data)
            } else {
                var written = lzo_uint(length)
                let result = lzo1x_decompress_safe(
                    data.baseAddress?.assumingMemoryBound(to: UInt8.self), lzo_uint(compressedLength),
                    destination.baseAddress?.assumingMemoryBound(to: UInt8.self), &written, nil)
                switch result {
                case LZO_E_OK: break
                case LZO_E_OUTPUT_OVERRUN: throw corrupt("block \(block) decodes to more than its length \(length)")
                case LZO_E_INPUT_OVERRUN: throw corrupt("block \(block)'s data ends before its LZO1X stream does")
                case LZO_E_INPUT_NOT_CONSUMED: throw corrupt("block \(block)'s LZO1X stream ends before its data does")
                case LZO_E_LOOKBEHIND_OVERRUN: throw corrupt("block \(block) refers back before its start")
                default: throw corrupt("block \(block) does not decode (lzo1x_decompress_safe returned \(result))")
                }
                guard Int(written) == length else {
                    throw corrupt("block \(block) decodes to \(written) bytes, not its length \(length)")
                }
            }
            for check in expected {
                let covered = check.ofCompressed ? data : UnsafeRawBufferPointer(destination)
                guard Self.lzopChecksum(covered, crc32: check.crc32) == check.value else {
                    throw corrupt("block \(block)'s \(check.crc32 ? "CRC-32" : "Adler-32") checksum of its \(check.ofCompressed ? "compressed" : "decompressed") bytes is wrong")
                }
            }
            produced += length
            block += 1
        }
    }

    private func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
}
