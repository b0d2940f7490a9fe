import LinuxBoot
import Testing

/// A fake bzImage whose protected-mode code holds `payload` at `payload_offset`.
private func image(payload: [UInt8], offset: UInt32 = 0x2CC, declaredLength: UInt32? = nil) throws -> BzImage {
    var fake = FakeKernel()
    fake.payloadOffset = offset
    fake.payloadLength = declaredLength ?? UInt32(payload.count)
    var bytes = fake.bytes
    let start = fake.setupSize + Int(offset)
    bytes.replaceSubrange(start..<start + payload.count, with: payload)
    return try BzImage(bytes: bytes, name: "bzImage")
}

@Suite struct KernelPayloadTests {
    @Test(arguments: [
        ([0x1F, 0x8B, 0x08, 0x00], KernelCompression.gzip),
        ([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 0x00], .xz),
        ([0x02, 0x21, 0x4C, 0x18, 0x10], .lz4),
        ([0x28, 0xB5, 0x2F, 0xFD, 0x04], .zstd),
        ([0x42, 0x5A, 0x68, 0x39], .bzip2),
        ([0x5D, 0x00, 0x00, 0x80, 0x00], .lzma),
        ([0x89, 0x4C, 0x5A, 0x4F, 0x00], .lzo),
    ] as [([UInt8], KernelCompression)])
    func findsThePayloadAndRecognisesItsFormat(magic: [UInt8], format: KernelCompression) throws {
        let payloadBytes = magic + [UInt8](repeating: 0xEE, count: 100)
        let kernel = try image(payload: payloadBytes)
        let payload = try KernelPayload(of: kernel)
        #expect(payload.compression == format)
        #expect(Array(payload.bytes) == payloadBytes)
        #expect(payload.fileOffset == 5 * 512 + 0x2CC)
        #expect(payload.decompressedLimit == 0x80_0000)
    }

    @Test func anUnknownMagicIsNoFormat() throws {
        let payload = try KernelPayload(of: image(payload: [0x7F, 0x45, 0x4C, 0x46, 2, 1]))
        #expect(payload.compression == nil)
        #expect(KernelCompression(recognizing: [UInt8]()) == nil)
        #expect(KernelCompression(recognizing: [0x1F]) == nil)  // half a gzip magic
        #expect(KernelCompression(recognizing: [0x5D, 0x00, 0x01]) == nil)
    }

    @Test func aPayloadPastTheProtectedModeCodeIsRefused() throws {
        // The fake's protected-mode code is 64 KiB; the payload claims to run 1 byte past it.
        let kernel = try image(payload: [0x1F, 0x8B], offset: 0x100, declaredLength: 0x1_0000 - 0x100 + 1)
        let error = #expect(throws: KernelPayloadError.self) { try KernelPayload(of: kernel) }
        #expect(error == .outsideImage(name: "bzImage", offset: 0x100, length: 0xFF01, protectedModeSize: 0x1_0000))
        #expect(error?.description.contains("payload_offset 0x100 + payload_length 0xFF01 past the end") == true)
        #expect(error?.description.contains("\n") == false)
        // Offsets near 2^32 must not wrap around.
        let huge = try image(payload: [0x1F, 0x8B], offset: 0x10, declaredLength: 0xFFFF_FFFF)
        #expect(throws: KernelPayloadError.self) { try KernelPayload(of: huge) }
    }

    @Test func aZeroLengthMeansNoPayload() throws {
        let kernel = try image(payload: [0x1F, 0x8B], declaredLength: 0)
        let error = #expect(throws: KernelPayloadError.self) { try KernelPayload(of: kernel) }
        #expect(error?.description == "bzImage declares no compressed payload (payload_length is 0): boot it with the in-guest decompressor instead")
    }
}
