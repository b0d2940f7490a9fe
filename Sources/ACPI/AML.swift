/// A small encoder for the ACPI Machine Language: just what a DSDT describing a few devices needs.
/// Section numbers are ACPI 6.5 chapter 20, "ACPI Machine Language (AML) Specification".
///
/// Two kinds of value, each holding its encoded bytes so they compose by concatenation:
/// `AMLData` is a data object (an integer, string, buffer or package: §20.2.3, `DataRefObject`),
/// `AMLTerm` a term that goes in a term list (`Name`, `Scope`, `Device`: §20.2.5). Every factory
/// validates what it is given, so a value that exists always encodes valid AML.
public struct AMLData: Equatable, Sendable {
    /// The encoded object.
    public let bytes: [UInt8]

    private init(bytes: [UInt8]) { self.bytes = bytes }

    /// An integer in its shortest encoding (§20.2.3, `ComputationalData`): `ZeroOp` (0x00),
    /// `OneOp` (0x01), or a `BytePrefix` (0x0A), `WordPrefix` (0x0B), `DWordPrefix` (0x0C) or
    /// `QWordPrefix` (0x0E) constant. A QWord needs a DSDT of revision 2 or more (64-bit integers),
    /// which `ACPITable.makeDSDT` writes.
    public static func integer(_ value: UInt64) -> AMLData {
        var bytes: [UInt8] = []
        switch value {
        case 0: bytes.append(AMLOpcode.zero)
        case 1: bytes.append(AMLOpcode.one)
        case 2...0xFF:
            bytes.append(AMLOpcode.bytePrefix)
            bytes.append(UInt8(value))
        case 0x100...0xFFFF:
            bytes.append(AMLOpcode.wordPrefix)
            bytes.appendLittleEndian(UInt16(value))
        case 0x1_0000...0xFFFF_FFFF:
            bytes.append(AMLOpcode.dwordPrefix)
            bytes.appendLittleEndian(UInt32(value))
        default:
            bytes.append(AMLOpcode.qwordPrefix)
            bytes.appendLittleEndian(value)
        }
        return AMLData(bytes: bytes)
    }

    /// A string (§20.2.3: `StringPrefix` 0x0D, ASCII characters 0x01–0x7F, `NullChar`).
    public static func string(_ text: String) throws(FirmwareTableError) -> AMLData {
        var bytes: [UInt8] = [AMLOpcode.stringPrefix]
        for scalar in text.unicodeScalars {
            guard scalar.value >= 0x01, scalar.value <= 0x7F else { throw .invalidString(text) }
            bytes.append(UInt8(scalar.value))
        }
        bytes.append(0x00)
        return AMLData(bytes: bytes)
    }

    /// A compressed EISA ID such as `PNP0501` (ASL's `EisaId()`, ACPI 6.5 §6.1.5 `_HID`): three
    /// upper-case letters of five bits each, then four hexadecimal digits, stored as a DWord whose
    /// bytes in memory read vendor-high, vendor-low, digits 1–2, digits 3–4.
    public static func eisaID(_ id: String) throws(FirmwareTableError) -> AMLData {
        let characters = Array(id.utf8)
        guard characters.count == 7 else { throw .invalidString(id) }
        var vendor: UInt16 = 0
        for letter in characters[0..<3] {
            guard letter >= UInt8(ascii: "A"), letter <= UInt8(ascii: "Z") else { throw .invalidString(id) }
            vendor = vendor << 5 | UInt16(letter - 0x40)
        }
        var product: UInt16 = 0
        for digit in characters[3..<7] {
            guard let nibble = hexValue(digit) else { throw .invalidString(id) }
            product = product << 4 | UInt16(nibble)
        }
        let inMemory: [UInt8] = [
            UInt8(vendor >> 8), UInt8(vendor & 0xFF), UInt8(product >> 8), UInt8(product & 0xFF),
        ]
        let value = UInt32(inMemory[0]) | UInt32(inMemory[1]) << 8 | UInt32(inMemory[2]) << 16 | UInt32(inMemory[3]) << 24
        return integer(UInt64(value))
    }

    /// A buffer of `contents` (§20.2.5.4, `DefBuffer`: `BufferOp` 0x11, `PkgLength`, the size as
    /// an integer, the bytes).
    public static func buffer(_ contents: [UInt8]) throws(FirmwareTableError) -> AMLData {
        let body = integer(UInt64(contents.count)).bytes + contents
        return AMLData(bytes: [AMLOpcode.buffer] + (try AMLEncoding.packageLength(of: body.count)) + body)
    }

    /// A buffer holding a resource template (ASL's `ResourceTemplate()`): `descriptors` followed
    /// by an end tag (ACPI 6.5 §6.4).
    public static func resourceTemplate(_ descriptors: [ResourceDescriptor]) throws(FirmwareTableError) -> AMLData {
        try buffer(ResourceDescriptor.template(descriptors))
    }

    /// A package of at most 255 `elements` (§20.2.5.4, `DefPackage`: `PackageOp` 0x12, `PkgLength`,
    /// `NumElements` as one byte, the elements).
    public static func package(_ elements: [AMLData]) throws(FirmwareTableError) -> AMLData {
        guard elements.count <= 0xFF else { throw .tooLarge(what: "AML package element count", size: elements.count, limit: 0xFF) }
        let body = [UInt8(elements.count)] + elements.flatMap(\.bytes)
        return AMLData(bytes: [AMLOpcode.package] + (try AMLEncoding.packageLength(of: body.count)) + body)
    }

    private static func hexValue(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): character - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// A term for a term list: a named object or a namespace modifier (§20.2.5).
public struct AMLTerm: Equatable, Sendable {
    /// The encoded term.
    public let bytes: [UInt8]

    private init(bytes: [UInt8]) { self.bytes = bytes }

    /// `Name (name, value)` (§20.2.5.1, `DefName`: `NameOp` 0x08, `NameString`, `DataRefObject`).
    public static func name(_ name: String, _ value: AMLData) throws(FirmwareTableError) -> AMLTerm {
        AMLTerm(bytes: [AMLOpcode.name] + (try AMLEncoding.nameString(name)) + value.bytes)
    }

    /// `Scope (path) { terms }` (§20.2.5.1, `DefScope`: `ScopeOp` 0x10, `PkgLength`, `NameString`,
    /// `TermList`).
    public static func scope(_ path: String, _ terms: [AMLTerm]) throws(FirmwareTableError) -> AMLTerm {
        let body = (try AMLEncoding.nameString(path)) + terms.flatMap(\.bytes)
        return AMLTerm(bytes: [AMLOpcode.scope] + (try AMLEncoding.packageLength(of: body.count)) + body)
    }

    /// `Device (name) { terms }` (§20.2.5.2, `DefDevice`: `ExtOpPrefix` 0x5B, `DeviceOp` 0x82,
    /// `PkgLength`, `NameString`, `TermList`).
    public static func device(_ name: String, _ terms: [AMLTerm]) throws(FirmwareTableError) -> AMLTerm {
        let body = (try AMLEncoding.nameString(name)) + terms.flatMap(\.bytes)
        return AMLTerm(bytes: [AMLOpcode.extendedPrefix, AMLOpcode.device] + (try AMLEncoding.packageLength(of: body.count)) + body)
    }
}

/// AML opcodes and prefixes this encoder emits (§20.3, "AML Byte Stream Byte Values").
public enum AMLOpcode {
    public static let zero: UInt8 = 0x00
    public static let one: UInt8 = 0x01
    public static let name: UInt8 = 0x08
    public static let bytePrefix: UInt8 = 0x0A
    public static let wordPrefix: UInt8 = 0x0B
    public static let dwordPrefix: UInt8 = 0x0C
    public static let stringPrefix: UInt8 = 0x0D
    public static let qwordPrefix: UInt8 = 0x0E
    public static let scope: UInt8 = 0x10
    public static let buffer: UInt8 = 0x11
    public static let package: UInt8 = 0x12
    public static let dualNamePrefix: UInt8 = 0x2E
    public static let multiNamePrefix: UInt8 = 0x2F
    public static let extendedPrefix: UInt8 = 0x5B
    public static let rootPrefix: UInt8 = 0x5C
    public static let parentPrefix: UInt8 = 0x5E
    /// After `extendedPrefix`.
    public static let device: UInt8 = 0x82
}

/// The two encodings the terms share: package lengths and name strings.
public enum AMLEncoding {
    /// The largest `PkgLength` value: 28 bits.
    public static let maximumPackageLength = (1 << 28) - 1

    /// The `PkgLength` for a package whose contents after the length are `payload` bytes
    /// (§20.2.4). The encoded length counts itself: one byte holds up to 63 (bits 5:0); otherwise
    /// bits 7:6 of the lead byte give the number (1–3) of bytes that follow, bits 3:0 the low
    /// nibble of the length, and each following byte the next eight bits.
    public static func packageLength(of payload: Int) throws(FirmwareTableError) -> [UInt8] {
        guard payload >= 0 else { throw .tooLarge(what: "AML package length", size: payload, limit: maximumPackageLength) }
        if payload + 1 <= 0x3F { return [UInt8(payload + 1)] }
        for following in 1...3 {
            let total = payload + 1 + following
            guard total < 1 << (4 + 8 * following) else { continue }
            var bytes = [UInt8(following << 6) | UInt8(total & 0x0F)]
            for index in 0..<following {
                bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * index)))
            }
            return bytes
        }
        throw .tooLarge(what: "AML package length", size: payload, limit: maximumPackageLength)
    }

    /// A `NameString` (§20.2.2): an optional root prefix `\` or parent prefixes `^`, then a name
    /// path of `.`-separated segments. Each segment is one to four characters, `[A-Z_]` then
    /// `[A-Z0-9_]`, padded with `_` to four (`_S5` is `_S5_`). Two segments take the
    /// `DualNamePrefix`, three or more the `MultiNamePrefix` and a count; none (`\` alone) the
    /// `NullName`.
    public static func nameString(_ path: String) throws(FirmwareTableError) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = Substring(path)
        if rest.first == "\\" {
            bytes.append(AMLOpcode.rootPrefix)
            rest = rest.dropFirst()
        } else {
            while rest.first == "^" {
                bytes.append(AMLOpcode.parentPrefix)
                rest = rest.dropFirst()
            }
        }
        let segments = rest.isEmpty ? [] : rest.split(separator: ".", omittingEmptySubsequences: false)
        var encoded: [UInt8] = []
        for segment in segments {
            guard let bytes = nameSegment(segment) else { throw .invalidName(path) }
            encoded += bytes
        }
        switch segments.count {
        case 0:
            guard !bytes.isEmpty else { throw .invalidName(path) }  // "" names nothing
            bytes.append(0x00)  // NullName
        case 1: bytes += encoded
        case 2: bytes += [AMLOpcode.dualNamePrefix] + encoded
        case 3...0xFF: bytes += [AMLOpcode.multiNamePrefix, UInt8(segments.count)] + encoded
        default: throw .invalidName(path)
        }
        return bytes
    }

    /// A `NameSeg`: four bytes, or nil if `segment` is not one to four characters of
    /// `[A-Z_][A-Z0-9_]*`.
    static func nameSegment(_ segment: Substring) -> [UInt8]? {
        let characters = Array(segment.utf8)
        guard (1...4).contains(characters.count) else { return nil }
        for (index, character) in characters.enumerated() {
            let isLead = (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(character) || character == UInt8(ascii: "_")
            let isDigit = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(character)
            guard isLead || (index > 0 && isDigit) else { return nil }
        }
        return characters + Array(repeating: UInt8(ascii: "_"), count: 4 - characters.count)
    }
}
