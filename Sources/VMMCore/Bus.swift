/// A device on a port-I/O or MMIO bus.
///
/// The bus hands it the offset of the access from the start of the range it was inserted at, and
/// the bytes: `data.count` is the access width (1, 2 or 4 for ports; 1 to 8 for MMIO). A device
/// never sees `kvm_run`, a file descriptor or a thread. Whatever the guest writes is untrusted:
/// an offset or width the device does not expect is ignored on write and reads as all ones.
public protocol BusDevice: AnyObject {
    /// The guest reads: fill `data` (it arrives zeroed).
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    /// The guest writes `data`.
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

/// Why a device could not be placed on a bus.
public enum BusError: Error, Equatable, CustomStringConvertible, Sendable {
    case overlap(newStart: UInt64, newEnd: UInt64, existingStart: UInt64, existingEnd: UInt64)
    case emptyRange(start: UInt64)
    /// The range would pass the top of the address space.
    case rangeOverflow(start: UInt64, length: UInt64)

    public var description: String {
        switch self {
        case .overlap(let newStart, let newEnd, let existingStart, let existingEnd):
            "bus range 0x\(String(newStart, radix: 16))-0x\(String(newEnd - 1, radix: 16)) overlaps 0x\(String(existingStart, radix: 16))-0x\(String(existingEnd - 1, radix: 16))"
        case .emptyRange(let start):
            "bus range at 0x\(String(start, radix: 16)) is empty"
        case .rangeOverflow(let start, let length):
            "bus range of 0x\(String(length, radix: 16)) addresses at 0x\(String(start, radix: 16)) passes the end of the address space"
        }
    }
}

/// A map from address ranges to devices (Firecracker's `Bus`): ranges never overlap, lookups are a
/// binary search, and a device learns only the offset within its own range.
///
/// Used twice per machine: once for the 64 Ki I/O ports, once for guest-physical MMIO.
public struct Bus {
    public struct Entry {
        public let start: UInt64
        /// One past the last address.
        public let end: UInt64
        public let device: any BusDevice

        /// The device's type and range, e.g. `Serial16550 0x3f8-0x3ff`: how traces and statistics name it.
        public var label: String {
            let last = end - 1
            let range = last == start ? "0x\(String(start, radix: 16))" : "0x\(String(start, radix: 16))-0x\(String(last, radix: 16))"
            // "Devices.I8042.Port" without its module: "I8042.Port" (private types: just their name).
            let qualified = String(reflecting: type(of: device))
            let name =
                qualified.contains("(") ? String(describing: type(of: device))
                : qualified.split(separator: ".", maxSplits: 1).last.map(String.init) ?? qualified
            return "\(name) \(range)"
        }
    }

    /// Sorted by `start`.
    public private(set) var entries: [Entry] = []

    public init() {}

    /// Places `device` on `length` addresses from `start`. Throws if that range is empty or
    /// overlaps a device already on the bus.
    public mutating func insert(_ device: any BusDevice, at start: UInt64, length: UInt64) throws(BusError) {
        guard length > 0 else { throw .emptyRange(start: start) }
        let (end, overflow) = start.addingReportingOverflow(length)
        guard !overflow else { throw .rangeOverflow(start: start, length: length) }
        let index = firstIndex(endingAfter: start)
        if index < entries.count, entries[index].start < end {
            let existing = entries[index]
            throw .overlap(newStart: start, newEnd: end, existingStart: existing.start, existingEnd: existing.end)
        }
        entries.insert(Entry(start: start, end: end, device: device), at: index)
    }

    /// The device whose range holds `address`, and the offset of `address` in that range.
    @inline(__always)
    public func device(at address: UInt64) -> (device: any BusDevice, offset: UInt64)? {
        guard let index = entryIndex(at: address) else { return nil }
        return (entries[index].device, address - entries[index].start)
    }

    /// The position in `entries` of the device whose range holds `address`.
    @inline(__always)
    public func entryIndex(at address: UInt64) -> Int? {
        let index = firstIndex(endingAfter: address)
        guard index < entries.count, entries[index].start <= address else { return nil }
        return index
    }

    /// The first entry whose end lies beyond `address` (binary search over the sorted, disjoint ranges).
    @inline(__always)
    private func firstIndex(endingAfter address: UInt64) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if entries[middle].end <= address { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
