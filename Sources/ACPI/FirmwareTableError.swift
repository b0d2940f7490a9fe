// ACPI: the firmware tables a VMM hands an x86 guest in place of a BIOS — the ACPI tables (RSDP,
// XSDT, FADT, MADT, DSDT with its AML) and the Intel MultiProcessor Specification 1.4 table — built
// from a small `PlatformDescription` and laid out in guest memory. Pure: it depends only on
// VMMCore's guest memory, so every byte is testable without /dev/kvm. See docs/acpi.md.
import VMMCore

/// Why firmware tables could not be built or written. Each description is one line that says what
/// is wrong.
public enum FirmwareTableError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The platform description is inconsistent (a count out of range, two devices on one IRQ, ...).
    case invalidDescription(String)
    /// An AML name segment or path is not made of 1–4 character segments of `[A-Z_][A-Z0-9_]*`.
    case invalidName(String)
    /// An AML string holds a character outside ASCII 0x01–0x7F.
    case invalidString(String)
    /// An AML package, buffer or table is larger than its encoding allows.
    case tooLarge(what: String, size: Int, limit: Int)
    /// The tables need `size` bytes but the area chosen for them holds fewer.
    case doesNotFit(what: String, size: Int, area: Range<GuestAddress>)
    /// Writing the tables into guest memory failed (the area is not guest RAM).
    case guestMemory(GuestMemoryError)

    public var description: String {
        switch self {
        case .invalidDescription(let reason):
            "invalid platform description: \(reason)"
        case .invalidName(let name):
            "invalid AML name '\(name)': segments are 1-4 characters, [A-Z_] then [A-Z0-9_]"
        case .invalidString(let string):
            "invalid AML string '\(string)': only ASCII 0x01-0x7F may appear"
        case .tooLarge(let what, let size, let limit):
            "\(what) is \(size), more than the \(limit) its encoding allows"
        case .doesNotFit(let what, let size, let area):
            "\(what) needs \(size) bytes, more than the area \(area.lowerBound)..<\(area.upperBound) holds"
        case .guestMemory(let error):
            "cannot write firmware tables: \(error)"
        }
    }
}

/// Little-endian serialisation and the byte checksum every table here uses.
extension Array where Element == UInt8 {
    /// Appends `value` little-endian, in `MemoryLayout<T>.size` bytes.
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        for index in 0..<MemoryLayout<T>.size {
            append(UInt8(truncatingIfNeeded: value >> (8 * index)))
        }
    }

    /// Appends the ASCII bytes of `text`, cut or padded with `padding` to exactly `count` bytes.
    /// Callers pass fixed identifiers (signatures, OEM IDs): non-ASCII scalars become `?`.
    mutating func appendASCII(_ text: String, count: Int, padding: UInt8 = 0x20) {
        var bytes = text.unicodeScalars.map { $0.isASCII ? UInt8($0.value) : UInt8(ascii: "?") }
        if bytes.count > count { bytes.removeLast(bytes.count - count) }
        append(contentsOf: bytes)
        append(contentsOf: repeatElement(padding, count: count - bytes.count))
    }

    /// Overwrites `MemoryLayout<T>.size` bytes at `offset` with `value`, little-endian.
    mutating func setLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for index in 0..<MemoryLayout<T>.size {
            self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index))
        }
    }
}

/// The byte that makes `bytes` sum to zero modulo 256: the checksum of ACPI tables (ACPI 6.5
/// §5.2.5.3, §5.2.6), of the MP structures (MP spec 1.4 §4.1, §4.2) and of the AML end tag.
/// Compute it with the checksum field still zero.
public func zeroSumChecksum<C: Collection>(_ bytes: C) -> UInt8 where C.Element == UInt8 {
    0 &- bytes.reduce(0, &+)
}
