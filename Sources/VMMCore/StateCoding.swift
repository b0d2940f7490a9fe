/// Why a snapshot's state could not be read. Each description is one line a user can act on.
///
/// A state file is untrusted input (it may be truncated, from another build, edited, or made to
/// attack the VMM): every read is bounds-checked and every count capped before anything is
/// allocated, as for guest input.
public enum StateFormatError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file ends before `what` (or before its checksum).
    case truncated(String)
    /// The file does not start with the snapshot magic: not a swiftkvm state file.
    case notAStateFile
    /// Written by another format version.
    case unsupportedVersion(found: UInt32, supported: UInt32)
    /// The CRC-32 over the header and payload does not match.
    case badChecksum(stored: UInt32, computed: UInt32)
    /// A value no VMM could have written: a count too large, an unknown tag, a register value the
    /// hardware cannot hold.
    case impossible(String)

    public var description: String {
        switch self {
        case .truncated(let what): "the state file is truncated: it ends inside \(what)"
        case .notAStateFile: "this is not a swiftkvm snapshot state file (its first bytes are not the snapshot magic)"
        case .unsupportedVersion(let found, let supported):
            "the state file has format version \(found); this swiftkvm reads version \(supported) only"
        case .badChecksum(let stored, let computed):
            "the state file is damaged: its checksum is 0x\(String(stored, radix: 16)), its contents give 0x\(String(computed, radix: 16))"
        case .impossible(let what): "the state file holds an impossible value: \(what)"
        }
    }
}

/// The outer frame of a state file:
///
/// ```
/// 0   "SWKVSNAP"          magic, 8 bytes
/// 8   version     u32     StateFile.version
/// 12  reserved    u32     0
/// 16  length      u64     payload bytes
/// 24  payload             sections (StateWriter.section)
/// …   crc32       u32     CRC-32 (IEEE 802.3) of every byte before it
/// ```
/// All integers little-endian. The file must be exactly this long: trailing bytes are refused too.
public enum StateFile {
    public static let magic: [UInt8] = Array("SWKVSNAP".utf8)
    public static let version: UInt32 = 1
    static let headerSize = 24
    /// A payload larger than this is refused before it is read (the state of 255 vCPUs with big
    /// XSAVE areas is a few MiB; guest RAM is never in it).
    public static let maximumPayload = 64 << 20

    /// Frames `payload` with the header and checksum.
    public static func encode(payload: [UInt8]) -> [UInt8] {
        var writer = StateWriter()
        writer.raw(magic)
        writer.u32(version)
        writer.u32(0)
        writer.u64(UInt64(payload.count))
        writer.raw(payload)
        let checksum = CRC32.checksum(writer.bytes)
        writer.u32(checksum)
        return writer.bytes
    }

    /// The payload of a whole state file, after checking magic, version, length and checksum (in
    /// that order, so each corruption gets its own message).
    public static func decode(_ file: [UInt8]) throws(StateFormatError) -> [UInt8] {
        // A short file that does not start like the magic is something else, not a truncated one.
        guard file.prefix(magic.count).elementsEqual(magic.prefix(file.count)) else { throw .notAStateFile }
        guard file.count >= magic.count else { throw .truncated("the header") }
        var reader = StateReader(file)
        _ = try reader.raw(count: magic.count, "the header")
        let found = try reader.u32("the header")
        guard found == version else { throw .unsupportedVersion(found: found, supported: version) }
        guard try reader.u32("the header") == 0 else { throw .impossible("the header's reserved field is not 0") }
        let length = try reader.u64("the header")
        guard length <= UInt64(maximumPayload) else {
            throw .impossible("a payload of \(length) bytes (at most \(maximumPayload) are allowed)")
        }
        let needed = headerSize + Int(length) + 4
        guard file.count >= needed else { throw .truncated(file.count >= headerSize + Int(length) ? "the checksum" : "the payload") }
        guard file.count == needed else { throw .impossible("\(file.count - needed) bytes after the checksum") }
        let stored = file[needed - 4..<needed].withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        let computed = CRC32.checksum(file[0..<(needed - 4)])
        guard stored == computed else { throw .badChecksum(stored: stored, computed: computed) }
        return Array(file[headerSize..<(headerSize + Int(length))])
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): catches torn writes and flipped bits.
/// It is not a signature: the decoded state is checked value by value all the same.
public enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { (index: UInt32) -> UInt32 in
        var value = index
        for _ in 0..<8 { value = value & 1 != 0 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc ^ 0xFFFF_FFFF
    }
}

/// Builds a state payload: little-endian integers, length-prefixed byte strings, tagged sections.
public struct StateWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }
    public mutating func u16(_ value: UInt16) { append(value) }
    public mutating func u32(_ value: UInt32) { append(value) }
    public mutating func u64(_ value: UInt64) { append(value) }
    public mutating func raw(_ value: [UInt8]) { bytes.append(contentsOf: value) }

    private mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// A u32 length, then the bytes.
    public mutating func data(_ value: [UInt8]) {
        u32(UInt32(value.count))
        raw(value)
    }

    public mutating func string(_ value: String) { data(Array(value.utf8)) }

    /// An optional value: a presence byte, then the value.
    public mutating func optional<T>(_ value: T?, _ write: (inout StateWriter, T) -> Void) {
        bool(value != nil)
        if let value { write(&self, value) }
    }

    /// A tagged section: the 4-character tag, a u64 length, then what `body` writes.
    public mutating func section(_ tag: String, _ body: (inout StateWriter) -> Void) {
        var inner = StateWriter()
        body(&inner)
        raw(Array(tag.utf8.prefix(4)) + [UInt8](repeating: 0x20, count: max(0, 4 - tag.utf8.count)))
        u64(UInt64(inner.bytes.count))
        raw(inner.bytes)
    }
}

/// Reads a state payload with a bounds check on every read. `what` names the field in errors.
public struct StateReader: Sendable {
    private let bytes: [UInt8]
    private var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var isAtEnd: Bool { offset == bytes.count }
    public var remaining: Int { bytes.count - offset }

    public mutating func raw(count: Int, _ what: @autoclosure () -> String) throws(StateFormatError) -> [UInt8] {
        guard count >= 0, count <= remaining else { throw .truncated(what()) }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    private mutating func integer<T: FixedWidthInteger>(_ type: T.Type, _ what: () -> String) throws(StateFormatError) -> T {
        let size = MemoryLayout<T>.size
        guard size <= remaining else { throw .truncated(what()) }
        defer { offset += size }
        return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    public mutating func u8(_ what: @autoclosure () -> String) throws(StateFormatError) -> UInt8 { try integer(UInt8.self, what) }
    public mutating func u16(_ what: @autoclosure () -> String) throws(StateFormatError) -> UInt16 { try integer(UInt16.self, what) }
    public mutating func u32(_ what: @autoclosure () -> String) throws(StateFormatError) -> UInt32 { try integer(UInt32.self, what) }
    public mutating func u64(_ what: @autoclosure () -> String) throws(StateFormatError) -> UInt64 { try integer(UInt64.self, what) }

    public mutating func bool(_ what: @autoclosure () -> String) throws(StateFormatError) -> Bool {
        switch try integer(UInt8.self, what) {
        case 0: return false
        case 1: return true
        case let other: throw .impossible("\(what()) is \(other), not a boolean (0 or 1)")
        }
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    public mutating func data(limit: Int, _ what: @autoclosure () -> String) throws(StateFormatError) -> [UInt8] {
        let count = try integer(UInt32.self, what)
        guard Int(count) <= limit else { throw .impossible("\(what()) of \(count) bytes (at most \(limit))") }
        return try raw(count: Int(count), what())
    }

    public mutating func string(limit: Int, _ what: @autoclosure () -> String) throws(StateFormatError) -> String {
        let bytes = try data(limit: limit, what())
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .impossible("\(what()) is not UTF-8") }
        return text
    }

    /// A count of at most `limit` things, each at least `minimumSize` bytes (so a huge count in a
    /// short file is refused before anything is allocated).
    public mutating func count(limit: Int, minimumSize: Int = 1, _ what: @autoclosure () -> String) throws(StateFormatError) -> Int {
        let count = Int(try integer(UInt32.self, what))
        guard count <= limit else { throw .impossible("\(count) \(what()) (at most \(limit))") }
        guard count * max(1, minimumSize) <= remaining else { throw .truncated(what()) }
        return count
    }

    public mutating func optional<T>(_ what: @autoclosure () -> String, _ read: (inout StateReader) throws(StateFormatError) -> T)
        throws(StateFormatError) -> T?
    {
        try bool("whether \(what()) is present") ? try read(&self) : nil
    }

    /// The next section, which must carry `tag`: a reader over its body alone.
    public mutating func section(_ tag: String) throws(StateFormatError) -> StateReader {
        let name = String(decoding: try raw(count: 4, "the tag of section '\(tag)'"), as: UTF8.self)
        let expected = String(decoding: Array(tag.utf8.prefix(4)) + [UInt8](repeating: 0x20, count: max(0, 4 - tag.utf8.count)), as: UTF8.self)
        guard name == expected else {
            throw .impossible("section '\(name.trimmingSpaces)' where '\(tag)' belongs")
        }
        let length = try u64("the length of section '\(tag)'")
        guard length <= UInt64(remaining) else { throw .truncated("section '\(tag)'") }
        return StateReader(try raw(count: Int(length), "section '\(tag)'"))
    }

    /// The tag of the next section, without reading it (nil at the end).
    public func peekTag() -> String? {
        guard remaining >= 4 else { return nil }
        return String(decoding: bytes[offset..<(offset + 4)], as: UTF8.self).trimmingSpaces
    }

    /// Refuses bytes left over in a section: a state file this version wrote has none.
    public func finish(_ what: @autoclosure () -> String) throws(StateFormatError) {
        guard isAtEnd else { throw .impossible("\(remaining) unexpected bytes at the end of \(what())") }
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var text = self
        while text.last == " " { text.removeLast() }
        return text
    }
}
