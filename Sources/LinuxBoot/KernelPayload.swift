/// How a bzImage's compressed kernel is compressed: recognised by the magic its first bytes carry,
/// the same checks `scripts/extract-vmlinux` and the kernel's `arch/x86/boot/compressed/Makefile`
/// (`suffix-$(CONFIG_KERNEL_*)`) rely on.
public enum KernelCompression: String, CaseIterable, Sendable, CustomStringConvertible {
    /// gzip (RFC 1952): 1F 8B.
    case gzip
    /// A .xz stream: FD 37 7A 58 5A 00.
    case xz
    /// LZ4's legacy frame (magic 0x184C2102 little-endian: 02 21 4C 18), as `lz4 -l` writes it.
    case lz4
    /// A zstd frame (magic 0xFD2FB528 little-endian: 28 B5 2F FD).
    case zstd
    /// bzip2: "BZh".
    case bzip2
    /// The legacy .lzma ("LZMA alone") format: properties byte 0x5D, then a dictionary size whose
    /// low bytes are 00 00 — the bytes `extract-vmlinux` looks for.
    case lzma
    /// lzop's file format: 89 "LZO".
    case lzo

    /// The leading bytes that identify each format.
    public var magic: [UInt8] {
        switch self {
        case .gzip: [0x1F, 0x8B]
        case .xz: [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]
        case .lz4: [0x02, 0x21, 0x4C, 0x18]
        case .zstd: [0x28, 0xB5, 0x2F, 0xFD]
        case .bzip2: [0x42, 0x5A, 0x68]
        case .lzma: [0x5D, 0x00, 0x00]
        case .lzo: [0x89, 0x4C, 0x5A, 0x4F]
        }
    }

    /// The format whose magic `bytes` starts with, or nil.
    public init?<Bytes: Collection>(recognizing bytes: Bytes) where Bytes.Element == UInt8 {
        // The magics share no prefix, so the order does not matter; longer ones are tried first anyway.
        for format in Self.allCases.sorted(by: { $0.magic.count > $1.magic.count }) where bytes.starts(with: format.magic) {
            self = format
            return
        }
        return nil
    }

    public var description: String { rawValue }
}

/// The compressed kernel inside a bzImage: where the setup header says it is
/// (Documentation/arch/x86/boot.rst, protocol 2.08+: `payload_offset` counts from the start of
/// the protected-mode code, `payload_length` is its size) and how it is compressed.
public struct KernelPayload: Sendable {
    /// The compressed bytes, a slice of the bzImage (no copy).
    public let bytes: ArraySlice<UInt8>
    /// The format its magic names; nil for one this code does not recognise.
    public let compression: KernelCompression?
    /// The bzImage's `init_size`: the decompressed kernel (its ELF image) is smaller, so it bounds
    /// how much a decompressor may produce.
    public let decompressedLimit: Int
    /// Where the payload starts in the bzImage file.
    public let fileOffset: Int

    /// The payload `kernel` declares. Throws if the header has none (protocol before 2.08, or a
    /// zero `payload_length`) or if it lies outside the protected-mode code.
    public init(of kernel: BzImage) throws(KernelPayloadError) {
        typealias Offset = BootParams.Offset
        // BzImage accepts only 2.12+ (it needs XLF_KERNEL_64), but the check says what it needs.
        guard kernel.version >= BootProtocolVersion(major: 2, minor: 8) else {
            throw .noPayload(name: kernel.name, reason: "boot protocol \(kernel.version) predates payload_offset (2.08)")
        }
        let offset = kernel.bytes.littleEndian(UInt32.self, at: Offset.payloadOffset) ?? 0
        let length = kernel.bytes.littleEndian(UInt32.self, at: Offset.payloadLength) ?? 0
        guard length > 0 else { throw .noPayload(name: kernel.name, reason: "payload_length is 0") }
        // The payload must lie inside the protected-mode code the header declares, which BzImage
        // already found to be inside the file. UInt64 sums cannot overflow two UInt32s.
        let start = UInt64(kernel.protectedModeOffset) + UInt64(offset)
        let end = start + UInt64(length)
        let codeEnd = UInt64(kernel.protectedModeOffset) + UInt64(kernel.protectedModeSize)
        guard end <= codeEnd else {
            throw .outsideImage(
                name: kernel.name, offset: offset, length: length, protectedModeSize: kernel.protectedModeSize)
        }
        bytes = kernel.bytes[Int(start)..<Int(end)]
        fileOffset = Int(start)
        compression = KernelCompression(recognizing: bytes)
        decompressedLimit = Int(kernel.initSize)
    }
}

/// Why a bzImage's compressed payload could not be found.
public enum KernelPayloadError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The header declares no payload.
    case noPayload(name: String, reason: String)
    /// `payload_offset + payload_length` passes the end of the protected-mode code.
    case outsideImage(name: String, offset: UInt32, length: UInt32, protectedModeSize: Int)

    public var description: String {
        switch self {
        case .noPayload(let name, let reason):
            "\(name) declares no compressed payload (\(reason)): boot it with the in-guest decompressor instead"
        case .outsideImage(let name, let offset, let length, let size):
            "\(name) has payload_offset \(hex(offset)) + payload_length \(hex(length)) past the end of its \(size)-byte protected-mode code: the image is corrupt; copy or rebuild it"
        }
    }
}
