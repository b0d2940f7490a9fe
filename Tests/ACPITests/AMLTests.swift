import ACPI
import Testing

@Suite struct AMLTests {
    /// Decodes a PkgLength the way §20.2.4 defines it.
    private func decodePackageLength(_ bytes: [UInt8]) -> Int {
        let following = Int(bytes[0] >> 6)
        guard following > 0 else { return Int(bytes[0] & 0x3F) }
        var length = Int(bytes[0] & 0x0F)
        for index in 0..<following { length |= Int(bytes[1 + index]) << (4 + 8 * index) }
        return length
    }

    @Test func packageLengthBoundaries() throws {
        #expect(try AMLEncoding.packageLength(of: 0) == [0x01])
        #expect(try AMLEncoding.packageLength(of: 62) == [0x3F])
        // 63 bytes of payload need a second length byte: 63 + 2 = 65 = 0x41.
        #expect(try AMLEncoding.packageLength(of: 63) == [0x41, 0x04])
        // The largest two-byte length is 0xFFF: 4093 + 2.
        #expect(try AMLEncoding.packageLength(of: 4093) == [0x4F, 0xFF])
        // One more needs three bytes: 4094 + 3 = 0x1001.
        #expect(try AMLEncoding.packageLength(of: 4094) == [0x81, 0x00, 0x01])
        #expect(try AMLEncoding.packageLength(of: AMLEncoding.maximumPackageLength - 4).count == 4)
        #expect(throws: FirmwareTableError.self) { try AMLEncoding.packageLength(of: AMLEncoding.maximumPackageLength - 3) }
    }

    @Test(arguments: [0, 1, 61, 62, 63, 64, 200, 4092, 4093, 4094, 4095, 70_000, 1_048_571, 1_048_572, 1_048_573, 5_000_000])
    func packageLengthCountsItself(payload: Int) throws {
        let encoded = try AMLEncoding.packageLength(of: payload)
        #expect(decodePackageLength(encoded) == payload + encoded.count)
        #expect(encoded.count == 1 || encoded[0] & 0x30 == 0)  // bits 5:4 reserved in the multi-byte form
    }

    @Test func integersUseTheShortestEncoding() {
        #expect(AMLData.integer(0).bytes == [0x00])
        #expect(AMLData.integer(1).bytes == [0x01])
        #expect(AMLData.integer(2).bytes == [0x0A, 0x02])
        #expect(AMLData.integer(0xFF).bytes == [0x0A, 0xFF])
        #expect(AMLData.integer(0x100).bytes == [0x0B, 0x00, 0x01])
        #expect(AMLData.integer(0xFFFF).bytes == [0x0B, 0xFF, 0xFF])
        #expect(AMLData.integer(0x1_0000).bytes == [0x0C, 0x00, 0x00, 0x01, 0x00])
        #expect(AMLData.integer(0xD000_0000).bytes == [0x0C, 0x00, 0x00, 0x00, 0xD0])
        #expect(AMLData.integer(0x1_0000_0000).bytes == [0x0E, 0, 0, 0, 0, 1, 0, 0, 0])
        #expect(AMLData.integer(.max).bytes == [0x0E] + [UInt8](repeating: 0xFF, count: 8))
    }

    @Test func strings() throws {
        #expect(try AMLData.string("LNRO0005").bytes == [0x0D] + Array("LNRO0005".utf8) + [0x00])
        #expect(try AMLData.string("").bytes == [0x0D, 0x00])
        #expect(throws: FirmwareTableError.invalidString("café")) { try AMLData.string("café") }
        #expect(throws: FirmwareTableError.self) { try AMLData.string("a\u{0}b") }
    }

    @Test func eisaIDs() throws {
        // EisaId("PNP0501") is 0x0105D041: bytes 41 D0 05 01, what iasl writes.
        #expect(try AMLData.eisaID("PNP0501").bytes == [0x0C, 0x41, 0xD0, 0x05, 0x01])
        // EisaId("PNP0303"), the PS/2 keyboard: 0x0303D041.
        #expect(try AMLData.eisaID("PNP0303").bytes == [0x0C, 0x41, 0xD0, 0x03, 0x03])
        for bad in ["pnp0501", "PNP050", "PNP05011", "PNP0G01", "P1P0501"] {
            #expect(throws: FirmwareTableError.self) { try AMLData.eisaID(bad) }
        }
    }

    @Test func nameStrings() throws {
        let sb = Array("_SB_".utf8)
        #expect(try AMLEncoding.nameString("_S5") == Array("_S5_".utf8))
        #expect(try AMLEncoding.nameString("\\_SB") == [0x5C] + sb)
        #expect(try AMLEncoding.nameString("\\_SB.VR00") == [0x5C, 0x2E] + sb + Array("VR00".utf8))
        #expect(try AMLEncoding.nameString("\\_SB.PCI0.S08") == [0x5C, 0x2F, 3] + sb + Array("PCI0S08_".utf8))
        #expect(try AMLEncoding.nameString("^^COM1") == [0x5E, 0x5E] + Array("COM1".utf8))
        #expect(try AMLEncoding.nameString("\\") == [0x5C, 0x00])
        for bad in ["", "1ABC", "ABCDE", "abc", "A-B", "\\_SB.", "A..B", "^\\A"] {
            #expect(throws: FirmwareTableError.invalidName(bad)) { try AMLEncoding.nameString(bad) }
        }
    }

    @Test func namedObjectsAndDevices() throws {
        let uid = try AMLTerm.name("_UID", .integer(0))
        #expect(uid.bytes == [0x08] + Array("_UID".utf8) + [0x00])
        let device = try AMLTerm.device("VR00", [uid])
        // PkgLength covers itself (1), the name (4) and the Name term (6): 11.
        #expect(device.bytes == [0x5B, 0x82, 0x0B] + Array("VR00".utf8) + uid.bytes)
        let scope = try AMLTerm.scope("\\_SB", [device])
        #expect(scope.bytes == [0x10, UInt8(1 + 5 + device.bytes.count), 0x5C] + Array("_SB_".utf8) + device.bytes)
        let package = try AMLData.package([.integer(5), .integer(0)])
        #expect(package.bytes == [0x12, 0x05, 0x02, 0x0A, 0x05, 0x00])
        #expect(throws: FirmwareTableError.self) { try AMLData.package(Array(repeating: .integer(0), count: 256)) }
    }

    @Test func buffersMeasureThemselves() throws {
        #expect(try AMLData.buffer([0xAA, 0xBB]).bytes == [0x11, 0x05, 0x0A, 0x02, 0xAA, 0xBB])
        let large = try AMLData.buffer([UInt8](repeating: 0x55, count: 300)).bytes
        // BufferOp, a two-byte PkgLength (2 + 3 + 300 = 305 = 0x131), WordPrefix 300, the bytes.
        #expect(Array(large[0..<6]) == [0x11, 0x41, 0x13, 0x0B, 0x2C, 0x01])
        #expect(large.count == 306)
    }

    @Test func resourceDescriptors() throws {
        #expect(try ResourceDescriptor.ioPort(minimum: 0x3F8, maximum: 0x3F8, alignment: 8, length: 8).encoded()
            == [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x08, 0x08])
        #expect(try ResourceDescriptor.irqNoFlags([4]).encoded() == [0x22, 0x10, 0x00])
        #expect(try ResourceDescriptor.memory32Fixed(base: 0xD000_0000, length: 0x1000, writable: true).encoded()
            == [0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xD0, 0x00, 0x10, 0x00, 0x00])
        #expect(try ResourceDescriptor.interrupt([5], edgeTriggered: true, activeLow: false, shared: false).encoded()
            == [0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00])
        #expect(try ResourceDescriptor.interrupt([9, 20], edgeTriggered: false, activeLow: true, shared: true).encoded()
            == [0x89, 0x0A, 0x00, 0x0D, 0x02, 9, 0, 0, 0, 20, 0, 0, 0])
        #expect(throws: FirmwareTableError.self) { try ResourceDescriptor.irqNoFlags([16]).encoded() }
        #expect(throws: FirmwareTableError.self) { try ResourceDescriptor.memory32Fixed(base: 0xFFFF_F001, length: 0x1000, writable: true).encoded() }
        #expect(throws: FirmwareTableError.self) { try ResourceDescriptor.interrupt([], edgeTriggered: true, activeLow: false, shared: false).encoded() }
    }

    @Test func resourceTemplateEndsWithAChecksummedEndTag() throws {
        let descriptors: [ResourceDescriptor] = [
            .ioPort(minimum: 0x3F8, maximum: 0x3F8, alignment: 8, length: 8), .irqNoFlags([4]),
        ]
        let template = try ResourceDescriptor.template(descriptors)
        #expect(template.count == 8 + 3 + 2)
        #expect(template[11] == 0x79)
        #expect(sum(template) == 0)
        #expect(try decodeResourceTemplate(template) == descriptors)
        #expect(try ResourceDescriptor.template([]) == [0x79, 0x87])
        let buffer = try AMLData.resourceTemplate(descriptors).bytes
        #expect(Array(buffer.suffix(template.count)) == template)
    }
}
