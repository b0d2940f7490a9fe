import LinuxBoot
import Testing
import VMMCore

@Suite struct E820MapTests {
    private static let legacyHole = E820Entry(address: 0x9_FC00, size: 0x10_0000 - 0x9_FC00, type: .reserved)
    private static let conventional = E820Entry(address: 0, size: 0x9_FC00, type: .ram)

    /// The layout as [start, size] pairs, which are Equatable.
    private func layout(_ size: Int) -> [[UInt64]] {
        LinuxBootLayout.guestMemoryLayout(size: size).map { [$0.start.rawValue, UInt64($0.size)] }
    }

    @Test func small256MiB() throws {
        #expect(layout(256 * MiB) == [[0, 0x1000_0000]])
        let map = try E820Map(memoryLayout: LinuxBootLayout.guestMemoryLayout(size: 256 * MiB))
        #expect(map.entries == [
            Self.conventional, Self.legacyHole, E820Entry(address: 0x10_0000, size: UInt64(256 * MiB - MiB), type: .ram),
        ])
    }

    @Test func exactly3GiBStaysBelowTheHole() throws {
        #expect(layout(3 * GiB) == [[0, 0xC000_0000]])
        let map = try E820Map(memoryLayout: LinuxBootLayout.guestMemoryLayout(size: 3 * GiB))
        #expect(map.entries == [
            Self.conventional, Self.legacyHole, E820Entry(address: 0x10_0000, size: 0xC000_0000 - 0x10_0000, type: .ram),
        ])
    }

    @Test func fourGiBMovesOneGiBAbove4GiB() throws {
        #expect(layout(4 * GiB) == [[0, 0xC000_0000], [0x1_0000_0000, 0x4000_0000]])
        let map = try E820Map(memoryLayout: LinuxBootLayout.guestMemoryLayout(size: 4 * GiB))
        #expect(map.entries == [
            Self.conventional, Self.legacyHole, E820Entry(address: 0x10_0000, size: 0xC000_0000 - 0x10_0000, type: .ram),
            E820Entry(address: 0x1_0000_0000, size: UInt64(GiB), type: .ram),
        ])
    }

    @Test func sixGiBMovesThreeGiBAbove4GiB() throws {
        #expect(layout(6 * GiB) == [[0, 0xC000_0000], [0x1_0000_0000, 0xC000_0000]])
        let map = try E820Map(memoryLayout: LinuxBootLayout.guestMemoryLayout(size: 6 * GiB))
        #expect(map.entries.last == E820Entry(address: 0x1_0000_0000, size: 0xC000_0000, type: .ram))
        #expect(map.entries.count == 4)
    }

    @Test(arguments: [2 * MiB, 256 * MiB, 3 * GiB - 4 * KiB, 3 * GiB, 3 * GiB + 4 * KiB, 4 * GiB, 6 * GiB, 64 * GiB])
    func layoutAndE820Agree(size: Int) throws {
        let regions = LinuxBootLayout.guestMemoryLayout(size: size)
        #expect(regions.reduce(0) { $0 + $1.size } == size)
        let map = try E820Map(memoryLayout: regions)
        // All RAM is reported except the 1 KiB EBDA and the 384 KiB legacy area.
        #expect(map.ramSize == UInt64(size) - (0x10_0000 - 0x9_FC00))
        for entry in map.ramEntries {
            // Every RAM entry is backed by one region...
            #expect(regions.contains { $0.start <= entry.address && entry.end.rawValue <= $0.start.rawValue + UInt64($0.size) })
            // ... and none touches the 32-bit MMIO hole.
            #expect(!entry.range.overlaps(GuestAddress(0xC000_0000)..<GuestAddress(0x1_0000_0000)))
        }
        for region in regions {
            #expect(!(region.start..<GuestAddress(region.start.rawValue + UInt64(region.size))).overlaps(GuestAddress(0xC000_0000)..<GuestAddress(0x1_0000_0000)))
        }
        #expect(map.entries.contains(Self.legacyHole))
    }

    @Test func theMapOfAGuestMemoryMatchesItsLayout() throws {
        let regions = LinuxBootLayout.guestMemoryLayout(size: 4 * GiB)
        let memory = try GuestMemory(layout: regions)
        #expect(try E820Map(memory: memory) == E820Map(memoryLayout: regions))
    }

    @Test func nothingForNoMemory() {
        #expect(LinuxBootLayout.guestMemoryLayout(size: 0).isEmpty)
        #expect(LinuxBootLayout.guestMemoryLayout(size: -4096).isEmpty)
    }

    @Test func touchingRegionsMergeAndGapsStayGaps() throws {
        let map = try E820Map(memoryLayout: [(0, 2 * MiB), (GuestAddress(2 * UInt64(MiB)), 2 * MiB), (GuestAddress(8 * UInt64(MiB)), MiB)])
        #expect(map.ramEntries == [
            Self.conventional, E820Entry(address: 0x10_0000, size: 3 * UInt64(MiB), type: .ram),
            E820Entry(address: GuestAddress(8 * UInt64(MiB)), size: UInt64(MiB), type: .ram),
        ])
    }

    @Test func entriesAreSortedAndChecked() throws {
        let a = E820Entry(address: 0x1000, size: 0x1000, type: .ram)
        let b = E820Entry(address: 0x3000, size: 0x1000, type: .acpi)
        #expect(try E820Map(entries: [b, a]).entries == [a, b])
        let overlapping = E820Entry(address: 0x1800, size: 0x1000, type: .nvs)
        guard case .invalidE820Entry = linuxBootError({ _ = try E820Map(entries: [a, overlapping]) }) else {
            Issue.record("expected overlap")
            return
        }
        guard case .invalidE820Entry = linuxBootError({ _ = try E820Map(entries: [E820Entry(address: 0x5000, size: 0, type: .ram)]) }) else {
            Issue.record("expected empty entry")
            return
        }
        guard case .invalidE820Entry = linuxBootError({ _ = try E820Map(entries: [E820Entry(address: GuestAddress(UInt64.max - 0xFFF), size: 0x1000, type: .ram)]) }) else {
            Issue.record("expected wrap-around")
            return
        }
    }

    @Test func atMost128Entries() throws {
        let entries = (0..<129).map { E820Entry(address: GuestAddress(UInt64($0) * 0x2000), size: 0x1000, type: .ram) }
        #expect(try E820Map(entries: Array(entries.prefix(128))).entries.count == 128)
        let error = linuxBootError { _ = try E820Map(entries: entries) }
        #expect(error == .tooManyE820Entries(count: 129))
        #expect(E820Map.maximumEntries == 128)
    }

    @Test func encodedAs20BytePackedEntries() throws {
        let map = try E820Map(entries: [E820Entry(address: 0x1_2345_6789, size: 0xAB_CDEF, type: .nvs)])
        #expect(map.encoded == [
            0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0,
            0xEF, 0xCD, 0xAB, 0, 0, 0, 0, 0,
            4, 0, 0, 0,
        ])
    }

    @Test func typesHaveLinuxNumbers() {
        #expect(E820Type.ram.rawValue == 1)
        #expect(E820Type.reserved.rawValue == 2)
        #expect(E820Type.acpi.rawValue == 3)
        #expect(E820Type.nvs.rawValue == 4)
    }
}
