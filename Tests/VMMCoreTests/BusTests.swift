import Testing
import TestSupport
import VMMCore

/// A device that only has a name: the bus tests check which device a lookup finds.
private final class NamedDevice: BusDevice {
    let name: String
    init(_ name: String) { self.name = name }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {}
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {}
}

@Suite struct BusTests {
    /// The bus every overlap case starts from: one device on 0x100..<0x200.
    private func busWithOneDevice() throws -> Bus {
        var bus = Bus()
        try bus.insert(NamedDevice("existing"), at: 0x100, length: 0x100)
        return bus
    }

    /// New ranges that overlap 0x100..<0x200, in every shape.
    static let overlappingRanges: [(start: UInt64, length: UInt64)] = [
        (0x100, 1),  // same start, shorter
        (0x100, 0x100),  // the same range
        (0x100, 0x300),  // same start, longer
        (0x180, 0x10),  // inside
        (0x1FF, 1),  // the last address
        (0xF0, 0x20),  // straddles the start
        (0xFF, 2),  // ends on the first address
        (0x1F0, 0x20),  // straddles the end
        (0x80, 0x200),  // covers it
        (0, UInt64.max),  // covers everything
    ]

    @Test(arguments: overlappingRanges)
    func overlappingRangesAreRefused(start: UInt64, length: UInt64) throws {
        var bus = try busWithOneDevice()
        let error = #expect(throws: BusError.self) { try bus.insert(NamedDevice("new"), at: start, length: length) }
        #expect(error == .overlap(newStart: start, newEnd: start + length, existingStart: 0x100, existingEnd: 0x200))
        #expect(bus.entries.count == 1)
        #expect((bus.device(at: 0x100)?.device as? NamedDevice)?.name == "existing")
    }

    @Test func overlapWithTheSecondOfSeveralDevicesIsFound() throws {
        var bus = Bus()
        try bus.insert(NamedDevice("a"), at: 0x00, length: 0x10)
        try bus.insert(NamedDevice("b"), at: 0x20, length: 0x10)
        try bus.insert(NamedDevice("c"), at: 0x40, length: 0x10)
        let error = #expect(throws: BusError.self) { try bus.insert(NamedDevice("x"), at: 0x10, length: 0x11) }
        #expect(error == .overlap(newStart: 0x10, newEnd: 0x21, existingStart: 0x20, existingEnd: 0x30))
        #expect(bus.entries.map(\.start) == [0x00, 0x20, 0x40])
    }

    @Test func adjacentRangesAreAccepted() throws {
        var bus = try busWithOneDevice()
        try bus.insert(NamedDevice("below"), at: 0xF0, length: 0x10)
        try bus.insert(NamedDevice("above"), at: 0x200, length: 0x10)
        try bus.insert(NamedDevice("bottom"), at: 0, length: 0xF0)
        #expect(bus.entries.map(\.start) == [0, 0xF0, 0x100, 0x200])
        #expect((bus.device(at: 0xEF)?.device as? NamedDevice)?.name == "bottom")
        #expect((bus.device(at: 0xFF)?.device as? NamedDevice)?.name == "below")
        #expect((bus.device(at: 0x100)?.device as? NamedDevice)?.name == "existing")
        #expect((bus.device(at: 0x1FF)?.device as? NamedDevice)?.name == "existing")
        #expect((bus.device(at: 0x200)?.device as? NamedDevice)?.name == "above")
        #expect(bus.device(at: 0x210) == nil)
    }

    @Test(arguments: [UInt64(0), 0x3F8, UInt64.max])
    func anEmptyRangeIsRefused(start: UInt64) {
        var bus = Bus()
        let error = #expect(throws: BusError.self) { try bus.insert(NamedDevice("empty"), at: start, length: 0) }
        #expect(error == .emptyRange(start: start))
        #expect(bus.entries.isEmpty)
    }

    static let wrappingRanges: [(start: UInt64, length: UInt64)] = [
        (UInt64.max, 1),
        (UInt64.max, UInt64.max),
        (0xFFFF_FFFF_FFFF_FF00, 0x100),  // would end at exactly 2^64
        (1, UInt64.max),
    ]

    @Test(arguments: wrappingRanges)
    func aRangePastTheTopOfTheAddressSpaceIsRefused(start: UInt64, length: UInt64) {
        var bus = Bus()
        let error = #expect(throws: BusError.self) { try bus.insert(NamedDevice("wraps"), at: start, length: length) }
        #expect(error == .rangeOverflow(start: start, length: length))
        #expect(bus.entries.isEmpty)
        #expect(bus.device(at: 0) == nil, "a wrapped range must not claim low addresses")
    }

    @Test func aRangeEndingJustBelowTheTopIsAccepted() throws {
        var bus = Bus()
        try bus.insert(NamedDevice("top"), at: 0xFFFF_FFFF_FFFF_FF00, length: 0xFF)
        let hit = try #require(bus.device(at: UInt64.max - 1))
        #expect(hit.offset == 0xFE)
        #expect(bus.device(at: UInt64.max) == nil)
    }

    @Test func emptyBusFindsNothing() {
        let bus = Bus()
        #expect(bus.device(at: 0) == nil)
        #expect(bus.device(at: 0x3F8) == nil)
        #expect(bus.device(at: .max) == nil)
    }

    @Test func lookupsGiveTheDeviceAndTheOffsetAmongManyDevices() throws {
        // 300 ranges of varied length with varied gaps (some zero), inserted in a shuffled order.
        var generator = SplitMix64(state: 0x5EED)
        var ranges: [(start: UInt64, length: UInt64)] = []
        var next: UInt64 = 0x10
        for _ in 0..<300 {
            let length = UInt64.random(in: 1...64, using: &generator)
            ranges.append((next, length))
            next += length + UInt64.random(in: 0...3, using: &generator) * 8
        }
        var bus = Bus()
        for index in ranges.indices.shuffled(using: &generator) {
            try bus.insert(NamedDevice("d\(index)"), at: ranges[index].start, length: ranges[index].length)
        }
        #expect(bus.entries.map(\.start) == ranges.map(\.start), "entries are kept sorted")

        var claimed = Set<UInt64>()
        for (index, range) in ranges.enumerated() {
            let first = try #require(bus.device(at: range.start))
            #expect((first.device as? NamedDevice)?.name == "d\(index)")
            #expect(first.offset == 0)
            let last = try #require(bus.device(at: range.start + range.length - 1))
            #expect((last.device as? NamedDevice)?.name == "d\(index)")
            #expect(last.offset == range.length - 1)
            let middle = try #require(bus.device(at: range.start + range.length / 2))
            #expect(middle.offset == range.length / 2)
            for address in range.start..<range.start + range.length { claimed.insert(address) }
        }
        // Every address not in a range, including each gap and the space past the last one, is unclaimed.
        for address in 0..<next + 16 where !claimed.contains(address) {
            #expect(bus.device(at: address) == nil, "0x\(String(address, radix: 16)) lies in a gap")
        }
    }

    @Test func overlapDescriptionShowsBothRanges() {
        let error = BusError.overlap(newStart: 0x3F8, newEnd: 0x400, existingStart: 0x3F0, existingEnd: 0x3FC)
        #expect(error.description == "bus range 0x3f8-0x3ff overlaps 0x3f0-0x3fb")
        #expect(BusError.emptyRange(start: 0x60).description == "bus range at 0x60 is empty")
    }
}
