import Testing
import VMMCore

@Suite struct GuestMemoryTests {
    static let size = 0x4000

    /// Guest memory filled with a known pattern, so a refused access can be shown to change nothing.
    private func patternedMemory(size: Int = GuestMemoryTests.size) throws -> GuestMemory {
        let memory = try GuestMemory(size: size)
        try memory.write((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }, at: 0)
        return memory
    }

    private func snapshot(_ memory: GuestMemory) throws -> [UInt8] { try memory.read(count: memory.size, at: 0) }

    /// Expects `.outOfBounds(address, length)` and no change to guest memory.
    private func expectRefused(
        _ memory: GuestMemory, address: UInt64, length: Int, sourceLocation: SourceLocation = #_sourceLocation,
        _ access: () throws -> Void
    ) throws {
        let before = try snapshot(memory)
        let error = #expect(throws: GuestMemoryError.self, sourceLocation: sourceLocation) { try access() }
        #expect(error == .outOfBounds(address: GuestAddress(address), length: length), sourceLocation: sourceLocation)
        #expect(try snapshot(memory) == before, "a refused access changed guest memory", sourceLocation: sourceLocation)
    }

    // MARK: - Round trips

    @Test(arguments: [UInt64(0), 1, 3, 0x7FF, 0xFFF, 0x1FFD])
    func integersRoundTripLittleEndianAtAnyAlignment(address: UInt64) throws {
        let memory = try GuestMemory(size: Self.size)
        let at = GuestAddress(address)
        try memory.store(UInt64(0x0102_0304_0506_0708), at: at)
        #expect(try memory.load(UInt64.self, at: at) == 0x0102_0304_0506_0708)
        #expect(try memory.read(count: 8, at: at) == [0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01])
        #expect(try memory.load(UInt32.self, at: at) == 0x0506_0708)
        #expect(try memory.load(UInt16.self, at: GuestAddress(address + 1)) == 0x0607)

        try memory.store(UInt32(0xDEAD_BEEF), at: at)
        #expect(try memory.read(count: 4, at: at) == [0xEF, 0xBE, 0xAD, 0xDE])
        try memory.store(UInt16(0xCAFE), at: at)
        #expect(try memory.read(count: 2, at: at) == [0xFE, 0xCA])
        try memory.store(UInt8(0x5A), at: at)
        #expect(try memory.load(UInt8.self, at: at) == 0x5A)
        try memory.store(Int32(-2), at: at)
        #expect(try memory.load(Int32.self, at: at) == -2)
        #expect(try memory.read(count: 4, at: at) == [0xFE, 0xFF, 0xFF, 0xFF])
    }

    @Test func integersAtTheVeryEndFit() throws {
        let memory = try GuestMemory(size: Self.size)
        let last = UInt64(Self.size)
        try memory.store(UInt64.max - 1, at: GuestAddress(last - 8))
        #expect(try memory.load(UInt64.self, at: GuestAddress(last - 8)) == UInt64.max - 1)
        try memory.store(UInt8(9), at: GuestAddress(last - 1))
        #expect(try memory.load(UInt8.self, at: GuestAddress(last - 1)) == 9)
    }

    @Test func freshMemoryIsZero() throws {
        let memory = try GuestMemory(size: Self.size)
        #expect(memory.size == Self.size)
        #expect(try memory.read(count: Self.size, at: 0).allSatisfy { $0 == 0 })
    }

    @Test func readWriteAndFill() throws {
        let memory = try GuestMemory(size: Self.size)
        try memory.write([1, 2, 3, 4, 5], at: 0x101)
        #expect(try memory.read(count: 7, at: 0x100) == [0, 1, 2, 3, 4, 5, 0])

        try memory.fill(0xAA, count: 3, at: 0x102)
        #expect(try memory.read(count: 7, at: 0x100) == [0, 1, 0xAA, 0xAA, 0xAA, 5, 0])

        let source: [UInt8] = [9, 8, 7]
        try source.withUnsafeBytes { raw in try memory.write(raw, at: 0x3FFD) }
        var copy = [UInt8](repeating: 0, count: 3)
        try copy.withUnsafeMutableBytes { raw in try memory.read(into: raw, at: 0x3FFD) }
        #expect(copy == source)

        #expect(try memory.read(count: 0, at: 0x200) == [])
        try memory.fill(0xFF, count: 0, at: 0x200)
        #expect(try memory.load(UInt8.self, at: 0x200) == 0)
    }

    @Test func hostPointerSeesTheSameBytes() throws {
        let memory = try GuestMemory(size: Self.size)
        try memory.store(UInt32(0x1122_3344), at: 0x800)
        let pointer = try memory.hostPointer(for: 0x800, length: 4)
        #expect(pointer.loadUnaligned(as: UInt32.self) == UInt32(littleEndian: 0x1122_3344))
    }

    // MARK: - Out of bounds

    @Test(arguments: [UInt64(0x4000), 0x4001, 0x1_0000_0000, UInt64.max - 3, UInt64.max])
    func accessesStartingPastTheEndAreRefused(address: UInt64) throws {
        let memory = try patternedMemory()
        let at = GuestAddress(address)
        try expectRefused(memory, address: address, length: 4) { _ = try memory.load(UInt32.self, at: at) }
        try expectRefused(memory, address: address, length: 8) { try memory.store(UInt64.max, at: at) }
        try expectRefused(memory, address: address, length: 1) { try memory.store(UInt8(1), at: at) }
        try expectRefused(memory, address: address, length: 2) { try memory.write([1, 2], at: at) }
        try expectRefused(memory, address: address, length: 16) { _ = try memory.read(count: 16, at: at) }
        try expectRefused(memory, address: address, length: 5) { try memory.fill(0xEE, count: 5, at: at) }
        try expectRefused(memory, address: address, length: 1) { _ = try memory.hostPointer(for: at, length: 1) }
    }

    @Test(arguments: [1, 2, 3, 7])
    func accessesCrossingTheEndAreRefusedWithoutPartialWrites(bytesInside: Int) throws {
        let memory = try patternedMemory()
        let address = UInt64(Self.size - bytesInside)
        let at = GuestAddress(address)
        try expectRefused(memory, address: address, length: 8) { try memory.store(UInt64.max, at: at) }
        try expectRefused(memory, address: address, length: 8) { _ = try memory.load(UInt64.self, at: at) }
        try expectRefused(memory, address: address, length: 9) { try memory.write([UInt8](repeating: 0xEE, count: 9), at: at) }
        try expectRefused(memory, address: address, length: 8) {
            try [UInt8](repeating: 0xEE, count: 8).withUnsafeBytes { raw in try memory.write(raw, at: at) }
        }
        try expectRefused(memory, address: address, length: 100) { try memory.fill(0xEE, count: 100, at: at) }
        try expectRefused(memory, address: address, length: 8) { _ = try memory.read(count: 8, at: at) }

        var buffer = [UInt8](repeating: 0x77, count: 8)
        try expectRefused(memory, address: address, length: 8) {
            try buffer.withUnsafeMutableBytes { raw in try memory.read(into: raw, at: at) }
        }
        #expect(buffer == [UInt8](repeating: 0x77, count: 8), "a refused read leaves the destination alone")
    }

    static let overflowingAccesses: [(address: UInt64, length: Int)] = [
        (UInt64.max - 3, 8), (UInt64.max, 2), (1, Int.max), (0x10, Int.max - 8), (UInt64(Int.max), Int.max),
    ]

    @Test(arguments: overflowingAccesses)
    func lengthsThatOverflowTheAddressAreRefused(address: UInt64, length: Int) throws {
        let memory = try patternedMemory()
        let at = GuestAddress(address)
        try expectRefused(memory, address: address, length: length) { _ = try memory.read(count: length, at: at) }
        try expectRefused(memory, address: address, length: length) { try memory.fill(0xEE, count: length, at: at) }
        try expectRefused(memory, address: address, length: length) { _ = try memory.hostPointer(for: at, length: length) }
    }

    @Test(arguments: [-1, -8, Int.min])
    func negativeCountsAreRefused(count: Int) throws {
        let memory = try patternedMemory()
        try expectRefused(memory, address: 0x100, length: count) { _ = try memory.read(count: count, at: 0x100) }
        try expectRefused(memory, address: 0x100, length: count) { try memory.fill(0, count: count, at: 0x100) }
        try expectRefused(memory, address: 0x100, length: count) { _ = try memory.hostPointer(for: 0x100, length: count) }
    }

    // MARK: - Several regions

    @Test func eachRegionWorksAndGapsAndSpansAreRefused() throws {
        // RAM below 64 KiB and at 128 KiB..<192 KiB, a hole between (like the PCI hole, in small).
        let memory = try GuestMemory(layout: [(start: 0x2_0000, size: 0x1_0000), (start: 0, size: 0x1_0000)])
        #expect(memory.regions.map(\.start) == [0, 0x2_0000], "regions are kept sorted")
        #expect(memory.size == 0x2_0000)

        for address: UInt64 in [0, 0xFFF8, 0x2_0000, 0x2_FFF8] {
            try memory.store(address | 0xA5, at: GuestAddress(address))
            #expect(try memory.load(UInt64.self, at: GuestAddress(address)) == address | 0xA5)
        }
        #expect(try memory.load(UInt64.self, at: 0x2_0000) != memory.load(UInt64.self, at: 0), "the regions are distinct")

        let refused: [(UInt64, Int)] = [
            (0xFFFC, 8),  // first region into the gap
            (0x1_0000, 1),  // in the gap
            (0x1_FFFF, 1),
            (0x1_FFFC, 8),  // the gap into the second region
            (0xFFF0, 0x1_0020),  // across the whole gap
            (0x2_FFFC, 8),  // past the second region
            (0x3_0000, 1),
        ]
        for (address, length) in refused {
            let before = (try memory.read(count: 0x1_0000, at: 0), try memory.read(count: 0x1_0000, at: 0x2_0000))
            let error = #expect(throws: GuestMemoryError.self) { try memory.fill(0xEE, count: length, at: GuestAddress(address)) }
            #expect(error == .outOfBounds(address: GuestAddress(address), length: length))
            #expect(throws: GuestMemoryError.self) { try memory.read(count: length, at: GuestAddress(address)) }
            let after = (try memory.read(count: 0x1_0000, at: 0), try memory.read(count: 0x1_0000, at: 0x2_0000))
            #expect(before == after)
        }
    }

    @Test func anAccessAcrossTwoAdjacentRegionsIsRefused() throws {
        // Adjacent in the guest but separate host mappings: one host pointer cannot cover both.
        let memory = try GuestMemory(layout: [(start: 0, size: 0x1000), (start: 0x1000, size: 0x1000)])
        try memory.store(UInt32(1), at: 0xFFC)
        try memory.store(UInt32(2), at: 0x1000)
        let error = #expect(throws: GuestMemoryError.self) { try memory.load(UInt64.self, at: 0xFFC) }
        #expect(error == .outOfBounds(address: 0xFFC, length: 8))
    }

    // MARK: - Layouts

    @Test(arguments: [
        [(start: GuestAddress(0x800), size: 0x1000)],  // start not page-aligned
        [(start: GuestAddress(0), size: 0x1800)],  // size not a page multiple
        [(start: GuestAddress(0), size: 0)],  // empty
        [(start: GuestAddress(0), size: -4096)],
        [(start: GuestAddress(0), size: 0x2000), (start: GuestAddress(0x1000), size: 0x1000)],  // overlap
        [(start: GuestAddress(0x1000), size: 0x1000), (start: GuestAddress(0x1000), size: 0x1000)],  // the same twice
        [(start: GuestAddress(0x1000), size: 0x1000), (start: GuestAddress(0), size: 0x2000)],  // overlap, given unsorted
        [(start: GuestAddress(0xFFFF_FFFF_FFFF_F000), size: 0x1000)],  // ends at 2^64
        [(start: GuestAddress(0xFFFF_FFFF_FFFF_0000), size: 0x2_0000)],  // wraps past 2^64
    ])
    func invalidLayoutsAreRefused(layout: [(start: GuestAddress, size: Int)]) {
        let error = #expect(throws: GuestMemoryError.self) { _ = try GuestMemory(layout: layout) }
        guard case .invalidLayout? = error else {
            Issue.record("expected .invalidLayout, got \(String(describing: error))")
            return
        }
    }

    @Test func errorDescriptionsSayWhatFailed() {
        #expect(
            GuestMemoryError.outOfBounds(address: 0x1000, length: 4).description
                == "guest access of 4 bytes at 0x1000 is outside guest RAM")
        #expect(GuestMemoryError.invalidLayout("why").description == "invalid guest memory layout: why")
    }

    // MARK: - GuestAddress

    @Test func guestAddressAddingDetectsOverflow() {
        #expect(GuestAddress(0x1000).adding(0x234) == GuestAddress(0x1234))
        #expect(GuestAddress(UInt64.max - 1).adding(1) == GuestAddress(UInt64.max))
        #expect(GuestAddress(UInt64.max).adding(1) == nil)
        #expect(GuestAddress(1).adding(UInt64.max) == nil)
        #expect(GuestAddress(UInt64.max).adding(0) == GuestAddress(UInt64.max))
        #expect(GuestAddress(0xFEE0_0000).description == "0xfee00000")
        #expect(GuestAddress(1) < GuestAddress(2))
    }
}
