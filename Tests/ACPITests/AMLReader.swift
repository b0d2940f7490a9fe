import ACPI

/// A reader for the subset of AML the DSDT here is made of, written separately from the encoder
/// so tests can read a DSDT back by meaning: names, scopes, devices, integers, strings, buffers,
/// packages (ACPI 6.5 §20.2). Anything else is an error.
struct AMLReader {
    indirect enum Object: Equatable {
        case integer(UInt64)
        case string(String)
        case buffer([UInt8])
        case package([Object])

        var integer: UInt64? { if case .integer(let value) = self { value } else { nil } }
        var string: String? { if case .string(let value) = self { value } else { nil } }
        var buffer: [UInt8]? { if case .buffer(let value) = self { value } else { nil } }
        var package: [Object]? { if case .package(let value) = self { value } else { nil } }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Every `Name` by absolute path (`\_SB_.VR00._HID`), and every device's absolute path in order.
    private(set) var names: [String: Object] = [:]
    private(set) var devices: [String] = []

    private let bytes: [UInt8]
    private var position = 0

    /// Reads a whole term list, the AML of a DSDT after its header.
    init(aml: [UInt8]) throws {
        bytes = aml
        try readTermList(until: aml.count, scope: "\\")
    }

    /// The named objects of device `path`, by their four-character name.
    func objects(of path: String) -> [String: Object] {
        var result: [String: Object] = [:]
        for (name, object) in names where name.hasPrefix(path + ".") {
            let rest = name.dropFirst(path.count + 1)
            if !rest.contains(".") { result[String(rest)] = object }
        }
        return result
    }

    private mutating func byte() throws -> UInt8 {
        guard position < bytes.count else { throw Failure(description: "AML ends at \(position)") }
        defer { position += 1 }
        return bytes[position]
    }

    private mutating func littleEndian(_ count: Int) throws -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<count { value |= UInt64(try byte()) << (8 * UInt64(index)) }
        return value
    }

    /// A PkgLength; returns the end position of the package it measures.
    private mutating func packageEnd() throws -> Int {
        let start = position
        let lead = try byte()
        let following = Int(lead >> 6)
        var length = following == 0 ? Int(lead & 0x3F) : Int(lead & 0x0F)
        for index in 0..<following { length |= Int(try byte()) << (4 + 8 * index) }
        guard start + length <= bytes.count else { throw Failure(description: "package at \(start) runs past the end") }
        return start + length
    }

    private mutating func nameSegment() throws -> String {
        var segment = ""
        for _ in 0..<4 { segment.append(Character(Unicode.Scalar(try byte()))) }
        return segment
    }

    /// A NameString, made absolute against `scope`.
    private mutating func nameString(scope: String) throws -> String {
        var prefix = ""
        var base = scope
        if bytes[position] == 0x5C {
            position += 1
            base = "\\"
        }
        while bytes[position] == 0x5E {
            position += 1
            prefix += "^"
        }
        guard prefix.isEmpty else { throw Failure(description: "parent prefixes are not used here") }
        var segments: [String] = []
        switch try byte() {
        case 0x00: break
        case 0x2E: segments = [try nameSegment(), try nameSegment()]
        case 0x2F:
            let count = Int(try byte())
            for _ in 0..<count { segments.append(try nameSegment()) }
        default:
            position -= 1
            segments = [try nameSegment()]
        }
        let joined = segments.joined(separator: ".")
        if base == "\\" { return "\\" + joined }
        return joined.isEmpty ? base : base + "." + joined
    }

    private mutating func readTermList(until end: Int, scope: String) throws {
        while position < end {
            let opcode = try byte()
            switch opcode {
            case 0x08:
                let name = try nameString(scope: scope)
                names[name] = try dataObject()
            case 0x10:
                let packageEnd = try packageEnd()
                let path = try nameString(scope: scope)
                try readTermList(until: packageEnd, scope: path)
            case 0x5B where position < end && bytes[position] == 0x82:
                position += 1
                let packageEnd = try packageEnd()
                let path = try nameString(scope: scope)
                devices.append(path)
                try readTermList(until: packageEnd, scope: path)
            default:
                throw Failure(description: "unexpected opcode 0x\(String(opcode, radix: 16)) at \(position - 1)")
            }
        }
        guard position == end else { throw Failure(description: "term list overran its package: \(position) past \(end)") }
    }

    private mutating func dataObject() throws -> Object {
        let opcode = try byte()
        switch opcode {
        case 0x00: return .integer(0)
        case 0x01: return .integer(1)
        case 0x0A: return .integer(try littleEndian(1))
        case 0x0B: return .integer(try littleEndian(2))
        case 0x0C: return .integer(try littleEndian(4))
        case 0x0E: return .integer(try littleEndian(8))
        case 0x0D:
            var text = ""
            while true {
                let character = try byte()
                if character == 0 { break }
                text.append(Character(Unicode.Scalar(character)))
            }
            return .string(text)
        case 0x11:
            let end = try packageEnd()
            guard let size = try dataObject().integer, position + Int(size) == end else {
                throw Failure(description: "buffer size disagrees with its package length")
            }
            defer { position = end }
            return .buffer(Array(bytes[position..<end]))
        case 0x12:
            let end = try packageEnd()
            let count = Int(try byte())
            var elements: [Object] = []
            for _ in 0..<count { elements.append(try dataObject()) }
            guard position == end else { throw Failure(description: "package elements disagree with its length") }
            return .package(elements)
        default:
            throw Failure(description: "unexpected data opcode 0x\(String(opcode, radix: 16)) at \(position - 1)")
        }
    }
}

/// Decodes a resource template (ACPI 6.5 §6.4) back into descriptors, checking the end tag and
/// its checksum.
func decodeResourceTemplate(_ bytes: [UInt8]) throws -> [ResourceDescriptor] {
    func little(_ offset: Int, _ count: Int) -> UInt64 {
        (0..<count).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }
    var descriptors: [ResourceDescriptor] = []
    var position = 0
    while position < bytes.count {
        let tag = bytes[position]
        if tag & 0x80 == 0 {
            let name = tag >> 3 & 0x0F
            let length = Int(tag & 0x07)
            guard position + 1 + length <= bytes.count else { throw AMLReader.Failure(description: "small item runs past the end") }
            switch (name, length) {
            case (0x08, 7):
                descriptors.append(.ioPort(
                    minimum: UInt16(little(position + 2, 2)), maximum: UInt16(little(position + 4, 2)),
                    alignment: bytes[position + 6], length: bytes[position + 7]))
            case (0x04, 2):
                let mask = little(position + 1, 2)
                descriptors.append(.irqNoFlags((0..<16).filter { mask & (1 << $0) != 0 }.map { UInt8($0) }))
            case (0x0F, 1):
                guard position + 2 == bytes.count else { throw AMLReader.Failure(description: "bytes after the end tag") }
                guard zeroSumChecksum(bytes) == 0 else { throw AMLReader.Failure(description: "end tag checksum wrong") }
                return descriptors
            default:
                throw AMLReader.Failure(description: "unexpected small item \(name) of \(length) bytes")
            }
            position += 1 + length
        } else {
            let name = tag & 0x7F
            let length = Int(little(position + 1, 2))
            guard position + 3 + length <= bytes.count else { throw AMLReader.Failure(description: "large item runs past the end") }
            let data = position + 3
            switch name {
            case 0x06 where length == 9:
                descriptors.append(.memory32Fixed(
                    base: UInt32(little(data + 1, 4)), length: UInt32(little(data + 5, 4)), writable: bytes[data] & 1 != 0))
            case 0x09:
                let flags = bytes[data]
                let count = Int(bytes[data + 1])
                guard length == 2 + 4 * count, flags & 1 == 1 else { throw AMLReader.Failure(description: "odd interrupt descriptor") }
                descriptors.append(.interrupt(
                    (0..<count).map { UInt32(little(data + 2 + 4 * $0, 4)) }, edgeTriggered: flags & 2 != 0,
                    activeLow: flags & 4 != 0, shared: flags & 8 != 0))
            default:
                throw AMLReader.Failure(description: "unexpected large item \(name)")
            }
            position += 3 + length
        }
    }
    throw AMLReader.Failure(description: "no end tag")
}

/// Little-endian integer of `count` bytes at `offset`.
func littleEndian(_ bytes: [UInt8], _ offset: Int, _ count: Int) -> UInt64 {
    (0..<count).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
}

func sum(_ bytes: some Collection<UInt8>) -> UInt8 { bytes.reduce(0, &+) }

func ascii(_ bytes: some Collection<UInt8>) -> String { String(decoding: bytes, as: UTF8.self) }
