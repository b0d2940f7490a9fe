import Glibc

/// Why a guest memory access was refused.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible, Sendable {
    /// `length` bytes at `address` are not all inside one RAM region.
    case outOfBounds(address: GuestAddress, length: Int)
    /// The host could not provide the memory (mmap failed).
    case allocationFailed(size: Int, errno: Int32)
    /// The regions given overlap, are empty, or are not page-aligned.
    case invalidLayout(String)

    public var description: String {
        switch self {
        case .outOfBounds(let address, let length):
            "guest access of \(length) bytes at \(address) is outside guest RAM"
        case .allocationFailed(let size, let error):
            "cannot map \(size) bytes of guest memory: \(String(cString: strerror(error)))"
        case .invalidLayout(let reason):
            "invalid guest memory layout: \(reason)"
        }
    }
}

/// One contiguous block of guest RAM and the host mapping behind it.
public struct GuestMemoryRegion: @unchecked Sendable {
    public let start: GuestAddress
    public let size: Int
    /// The host address of the region's first byte. Only `GuestMemory` dereferences it.
    public let host: UnsafeMutableRawPointer

    /// The first guest address past the region.
    public var end: UInt64 { start.rawValue + UInt64(size) }

    func contains(_ address: UInt64, length: Int) -> Bool {
        guard address >= start.rawValue, length >= 0 else { return false }
        let offset = address - start.rawValue
        return offset <= UInt64(size) && UInt64(length) <= UInt64(size) - offset
    }
}

/// Guest RAM: anonymous host mappings placed at guest-physical addresses.
///
/// Every access goes through a bounds check: an address or length the guest controls can never make
/// the VMM read or write host memory outside these mappings. Devices use only this interface
/// (`read`/`write` of bytes, `load`/`store` of fixed-width little-endian integers) and never learn
/// how the memory is provided. The mappings are released when the last reference goes away.
public final class GuestMemory: @unchecked Sendable {
    public let regions: [GuestMemoryRegion]
    /// Whether the regions map a file (`init(mappingFile:…)`, a restored snapshot) rather than
    /// anonymous memory: a page never touched then holds the file's bytes, not zeros.
    public let isFileBacked: Bool
    /// The mapped file's device and inode (`init(mappingFile:…)`), so nothing truncates it while
    /// it is mapped: a write into it would take pages the mapping still reads (SIGBUS).
    public let backingFile: (device: UInt64, inode: UInt64)?

    /// Maps anonymous memory for each `(start, size)` pair. Sizes must be non-zero multiples of 4 KiB,
    /// starts page-aligned, and the ranges must not overlap.
    public init(layout: [(start: GuestAddress, size: Int)]) throws(GuestMemoryError) {
        let sorted = layout.sorted { $0.start < $1.start }
        var previousEnd: UInt64 = 0
        for (index, block) in sorted.enumerated() {
            guard block.size > 0, block.size % 4096 == 0, block.start.rawValue % 4096 == 0 else {
                throw .invalidLayout("region at \(block.start) of \(block.size) bytes is empty or not 4 KiB aligned")
            }
            guard index == 0 || block.start.rawValue >= previousEnd else {
                throw .invalidLayout("region at \(block.start) overlaps the one before it")
            }
            guard let end = block.start.adding(UInt64(block.size)) else {
                throw .invalidLayout("region at \(block.start) passes the end of the address space")
            }
            previousEnd = end.rawValue
        }
        var mapped: [GuestMemoryRegion] = []
        for block in sorted {
            let pointer = mmap(nil, block.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let pointer, pointer != MAP_FAILED else {
                let error = errno
                for region in mapped { munmap(region.host, region.size) }
                throw .allocationFailed(size: block.size, errno: error)
            }
            mapped.append(GuestMemoryRegion(start: block.start, size: block.size, host: pointer))
        }
        regions = mapped
        isFileBacked = false
        backingFile = nil
    }

    /// Maps each region of a memory file written by a snapshot, `MAP_PRIVATE`: pages are read
    /// from the file only when the guest (or KVM) first touches them, and a write makes a private
    /// copy, so the file stays as it was and two VMs restored from it never see each other's
    /// writes. `layout` gives each region's guest address, size and offset in the file; the
    /// same checks as for anonymous memory apply, and every region must lie inside the file.
    public init(
        mappingFile descriptor: Int32, fileSize: Int, layout: [(start: GuestAddress, size: Int, offset: Int)]
    ) throws(GuestMemoryError) {
        let sorted = layout.sorted { $0.start < $1.start }
        var previousEnd: UInt64 = 0
        for (index, block) in sorted.enumerated() {
            guard block.size > 0, block.size % 4096 == 0, block.start.rawValue % 4096 == 0, block.offset >= 0,
                block.offset % 4096 == 0
            else {
                throw .invalidLayout("region at \(block.start) of \(block.size) bytes is empty or not 4 KiB aligned")
            }
            guard index == 0 || block.start.rawValue >= previousEnd else {
                throw .invalidLayout("region at \(block.start) overlaps the one before it")
            }
            guard let end = block.start.adding(UInt64(block.size)) else {
                throw .invalidLayout("region at \(block.start) passes the end of the address space")
            }
            let (fileEnd, overflow) = block.offset.addingReportingOverflow(block.size)
            guard !overflow, fileEnd <= fileSize else {
                throw .invalidLayout("region at \(block.start) needs bytes \(block.offset)..<\(fileEnd) of a \(fileSize)-byte memory file")
            }
            previousEnd = end.rawValue
        }
        var mapped: [GuestMemoryRegion] = []
        for block in sorted {
            let pointer = mmap(nil, block.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, descriptor, off_t(block.offset))
            guard let pointer, pointer != MAP_FAILED else {
                let error = errno
                for region in mapped { munmap(region.host, region.size) }
                throw .allocationFailed(size: block.size, errno: error)
            }
            mapped.append(GuestMemoryRegion(start: block.start, size: block.size, host: pointer))
        }
        regions = mapped
        isFileBacked = true
        var status = stat()
        backingFile = fstat(descriptor, &status) == 0 ? (UInt64(status.st_dev), UInt64(status.st_ino)) : nil
    }

    /// One region of `size` bytes at guest address 0.
    public convenience init(size: Int) throws(GuestMemoryError) {
        try self.init(layout: [(start: GuestAddress(0), size: size)])
    }

    deinit {
        for region in regions { munmap(region.host, region.size) }
    }

    /// The total size of guest RAM in bytes.
    public var size: Int { regions.reduce(0) { $0 + $1.size } }

    /// The host pointer for `length` bytes at `address`, if they lie within one region.
    ///
    /// The pointer is valid while this object lives. Prefer `read`/`write`/`load`/`store`; this
    /// exists for zero-copy paths (a virtqueue buffer handed to `pread`), which must keep `length`.
    @inline(__always)
    public func hostPointer(for address: GuestAddress, length: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        for region in regions where region.contains(address.rawValue, length: length) {
            return region.host + Int(address.rawValue - region.start.rawValue)
        }
        throw .outOfBounds(address: address, length: length)
    }

    /// Copies guest bytes at `address` into `buffer`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: GuestAddress) throws(GuestMemoryError) {
        guard buffer.count > 0, let base = buffer.baseAddress else { return }
        let source = try hostPointer(for: address, length: buffer.count)
        base.copyMemory(from: source, byteCount: buffer.count)
    }

    /// `count` guest bytes at `address`.
    public func read(count: Int, at address: GuestAddress) throws(GuestMemoryError) -> [UInt8] {
        guard count >= 0 else { throw .outOfBounds(address: address, length: count) }
        let source = try hostPointer(for: address, length: count)
        return Array(UnsafeRawBufferPointer(start: source, count: count))
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: UnsafeRawBufferPointer, at address: GuestAddress) throws(GuestMemoryError) {
        guard bytes.count > 0, let base = bytes.baseAddress else { return }
        let target = try hostPointer(for: address, length: bytes.count)
        target.copyMemory(from: base, byteCount: bytes.count)
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: [UInt8], at address: GuestAddress) throws(GuestMemoryError) {
        let length = bytes.count
        guard length > 0 else { return }
        let target = try hostPointer(for: address, length: length)
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress { target.copyMemory(from: base, byteCount: length) }
        }
    }

    /// Fills `count` bytes at `address` with `value`.
    public func fill(_ value: UInt8, count: Int, at address: GuestAddress) throws(GuestMemoryError) {
        let target = try hostPointer(for: address, length: count)
        target.initializeMemory(as: UInt8.self, repeating: value, count: count)
    }

    /// A little-endian integer at `address` (any alignment).
    @inline(__always)
    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: GuestAddress) throws(GuestMemoryError) -> T {
        let source = try hostPointer(for: address, length: MemoryLayout<T>.size)
        return T(littleEndian: source.loadUnaligned(as: T.self))
    }

    /// Stores a little-endian integer at `address` (any alignment).
    @inline(__always)
    public func store<T: FixedWidthInteger>(_ value: T, at address: GuestAddress) throws(GuestMemoryError) {
        let target = try hostPointer(for: address, length: MemoryLayout<T>.size)
        target.storeBytes(of: value.littleEndian, as: T.self)
    }
}
