// KernelDecompression: a bzImage's compressed kernel decompressed in the host with Debian's
// libraries (liblzma, liblz4, libzstd, zlib, libbz2), into a buffer that never grows past the
// bound the caller gives (the setup header's init_size), and a cache of the results. A target of
// its own so the VMM core does not carry these libraries' headers.
import CBZip2
import CLZ4
import CLZMA
import CZlib
import CZstd
import LinuxBoot

/// Why a compressed kernel could not be decompressed. Each description is one line.
public enum KernelDecompressionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// This build has no decoder for the format (lzo).
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
    public static let supportedFormats: Set<KernelCompression> = [.gzip, .xz, .lz4, .zstd, .bzip2, .lzma]

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
        case .lzo: throw .unsupported(name: name, format: format)
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
}
