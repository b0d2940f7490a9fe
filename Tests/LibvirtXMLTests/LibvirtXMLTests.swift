import Foundation
import LibvirtXML
import Testing
import VMConfig

/// Hostile and malformed documents: each is one typed error, quickly, never a crash or a hang.
@Suite struct HostileXMLTests {
    static func readError(_ text: String) -> XMLReadError? { readError(Array(text.utf8)) }

    static func readError(_ bytes: [UInt8]) -> XMLReadError? {
        do {
            _ = try LibvirtImport.importDomain(bytes: bytes)
            return nil
        } catch {
            if case .unreadable(let reason) = error { return reason }
            return nil
        }
    }

    static func timed(_ body: () -> XMLReadError?) -> (XMLReadError?, Duration) {
        let clock = ContinuousClock()
        var result: XMLReadError?
        let elapsed = clock.measure { result = body() }
        return (result, elapsed)
    }

    @Test func billionLaughsIsRefusedBeforeParsing() {
        var entities = #"<!ENTITY lol "lol">"#
        for level in 1...9 {
            entities += "<!ENTITY lol\(level) \"" + String(repeating: "&lol\(level == 1 ? "" : String(level - 1));", count: 10) + "\">"
        }
        let xml = "<?xml version=\"1.0\"?>\n<!DOCTYPE domain [\(entities)]>\n<domain><name>&lol9;</name></domain>"
        let (error, elapsed) = Self.timed { Self.readError(xml) }
        #expect(error == .doctype)
        #expect(elapsed < .seconds(1))
        #expect(error?.description.contains("remove it") == true)
    }

    @Test func externalEntityIsRefused() {
        let xml = #"<!DOCTYPE domain [<!ENTITY passwd SYSTEM "file:///etc/passwd">]><domain><name>&passwd;</name></domain>"#
        #expect(Self.readError(xml) == .doctype)
        // A DOCTYPE after comments and a processing instruction is found too.
        let hidden = "\u{FEFF}<?xml version='1.0'?><!-- x --><?pi y?>\n<!DOCTYPE domain SYSTEM \"http://192.0.2.1/d.dtd\"><domain/>"
        #expect(Self.readError(hidden) == .doctype)
    }

    @Test func undeclaredEntityIsMalformed() {
        guard case .malformed(let line, let message) = Self.readError("<domain>\n<name>&nope;</name></domain>") else {
            Issue.record("not malformed")
            return
        }
        #expect(line == 2)
        #expect(message.contains("nope"))
    }

    @Test func tenMebibyteDocumentIsRefusedBeforeParsing() {
        var bytes = Array("<domain><description>".utf8)
        bytes += [UInt8](repeating: UInt8(ascii: "a"), count: 10 << 20)
        bytes += Array("</description></domain>".utf8)
        let (error, elapsed) = Self.timed { Self.readError(bytes) }
        #expect(error == .tooLarge(bytes: bytes.count, limit: XMLLimits.maximumBytes))
        #expect(elapsed < .seconds(1))
    }

    @Test func deepNestingIsRefused() {
        let deep = "<domain>" + String(repeating: "<a>", count: 10_000) + String(repeating: "</a>", count: 10_000) + "</domain>"
        let (error, elapsed) = Self.timed { Self.readError(deep) }
        // libxml2 stops at its own limit (256) first; anything below that stops at ours.
        guard case .malformed = error else {
            Issue.record("\(String(describing: error))")
            return
        }
        #expect(elapsed < .seconds(2))
        let sixtyFive = "<domain>" + String(repeating: "<a>", count: 65) + String(repeating: "</a>", count: 65) + "</domain>"
        #expect(Self.readError(sixtyFive) == .tooDeep(limit: XMLLimits.maximumDepth))
    }

    @Test func notXMLAndWrongRootAreOneLine() throws {
        guard case .malformed(_, let message) = Self.readError("this is not XML\n{\"boot\": 1}") else {
            Issue.record("not malformed")
            return
        }
        #expect(!message.contains("\n"))
        #expect(Self.readError("<network><name>default</name></network>") == .wrongRoot(found: "network", expected: "domain"))
        #expect(Self.readError("") == .empty)
        #expect(Self.readError("  \n ") == .empty)
        #expect(Self.readError([0xFF, 0xFE, 0x00, 0x3C]) != nil)
        guard case .malformed = Self.readError("<domain><name>x</name>") else {
            Issue.record("a truncated document must be malformed")
            return
        }
        for error in [XMLReadError.doctype, .empty, .tooDeep(limit: 64), .tooLarge(bytes: 1, limit: 0), .wrongRoot(found: "a", expected: "b")] {
            #expect(!error.description.contains("\n"))
        }
    }

    /// A bounded, deterministic mutation run over every fixture: the fuzz entry point never traps.
    @Test func mutatedFixturesNeverCrash() throws {
        var generator = SplitMix(seed: 12)
        var imported = 0
        for name in try Fixtures.names() {
            let original = Array(try Fixtures.text(name).utf8)
            for _ in 0..<150 {
                var bytes = original
                for _ in 0..<Int(generator.next() % 8 + 1) {
                    let position = Int(generator.next() % UInt64(bytes.count))
                    switch generator.next() % 4 {
                    case 0: bytes[position] = UInt8(truncatingIfNeeded: generator.next())
                    case 1: bytes.remove(at: position)
                    case 2:
                        let tokens = Array("<>&'\"/=[]!?-x0 ".utf8)
                        bytes.insert(tokens[Int(generator.next() % UInt64(tokens.count))], at: position)
                    default: bytes = Array(bytes.prefix(position))
                    }
                    if bytes.isEmpty { bytes = [0] }
                }
                if bytes.withUnsafeBytes({ LibvirtImport.fuzz($0) }) { imported += 1 }
            }
        }
        #expect(imported > 0)
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Units, names, disk order, vCPU limits, the serial console's two spellings.
@Suite struct ImportRuleTests {
    static func domain(memory: String = "<memory unit='MiB'>256</memory>", devices: String = "", extra: String = "") -> String {
        """
        <domain type='kvm'><name>t</name>\(memory)<vcpu>1</vcpu>
        <os><type arch='x86_64'>hvm</type><kernel>/k</kernel><cmdline>console=ttyS0</cmdline></os>\(extra)
        <devices>\(devices)</devices></domain>
        """
    }

    @Test(arguments: [
        ("b", 4096, 4096), ("bytes", 8192, 8192), ("KB", 4096, 4_096_000), ("k", 4, 4096), ("KiB", 4, 4096),
        ("MB", 1, 1_003_520), ("M", 1, 1 << 20), ("MiB", 3, 3 << 20), ("GB", 1, 1_000_001_536), ("G", 1, 1 << 30),
        ("GiB", 2, 2 << 30), ("TB", 1, 1_000_000_000_000), ("T", 1, 1 << 40), ("TiB", 1, 1 << 40),
    ])
    func memoryUnits(unit: String, count: Int, bytes: Int) throws {
        let result = try LibvirtImport.importDomain(xml: Self.domain(memory: "<memory unit='\(unit)'>\(count)</memory>"))
        // Sizes that are not whole 4 KiB pages are rounded up, with a warning.
        #expect(result.configuration.memoryBytes == bytes, "\(count) \(unit)")
        let exact = count * (LibvirtImport.memoryUnitFactor(unit) ?? 0)
        #expect(result.decisions.contains { $0.xpath == "/domain/memory" && $0.kind == .warned } == (exact % 4096 != 0))
    }

    @Test func noUnitIsKiBAndBadSizesAreRefused() throws {
        #expect(try LibvirtImport.importDomain(xml: Self.domain(memory: "<memory>262144</memory>")).configuration.memoryBytes == 256 << 20)
        for (memory, xpath) in [
            ("<memory unit='furlongs'>1</memory>", "/domain/memory/@unit"), ("<memory>-5</memory>", "/domain/memory"),
            ("<memory unit='EiB'>100</memory>", "/domain/memory"), ("<memory>lots</memory>", "/domain/memory"),
        ] {
            #expect(throws: LibvirtImportError.self) { try LibvirtImport.importDomain(xml: Self.domain(memory: memory)) }
            do { _ = try LibvirtImport.importDomain(xml: Self.domain(memory: memory)) } catch { #expect(error.refusals.first?.xpath == xpath, "\(memory)") }
        }
    }

    @Test func diskTargetsSortByLibvirtsIndexNotByDocumentOrder() throws {
        #expect(LibvirtImport.diskIndex("vda") == 1)
        #expect(LibvirtImport.diskIndex("vdz") == 26)
        #expect(LibvirtImport.diskIndex("vdaa") == 27)
        #expect(LibvirtImport.diskIndex("sdb") == 2)
        #expect(LibvirtImport.diskIndex("vd") == nil)
        #expect(LibvirtImport.diskIndex("vd1") == nil)
        #expect((0..<30).map(LibvirtImport.guestDiskName).suffix(5) == ["vdz", "vdaa", "vdab", "vdac", "vdad"])
        for position in 0..<800 { #expect(LibvirtImport.diskIndex(LibvirtImport.guestDiskName(position)) == position + 1) }
        let disks = ["vdaa", "vdb", "vdz", "vda"].map { "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/d/\($0)'/><target dev='\($0)' bus='virtio'/></disk>" }
        let result = try LibvirtImport.importDomain(xml: Self.domain(devices: disks.joined()))
        #expect(result.configuration.disks.map(\.path) == ["/d/vda", "/d/vdb", "/d/vdz", "/d/vdaa"])
        #expect(result.decisions.first { $0.xpath == "/domain/devices/disk[3]" }?.message.hasSuffix("→ /dev/vdc (libvirt's target vdz)") == true)
    }

    @Test func namesAreMappedOrRefused() throws {
        #expect(LibvirtImport.suggestedName(for: "Web Server #1") == "web-server-1")
        #expect(LibvirtImport.suggestedName(for: "--x--") == "x")
        #expect(LibvirtImport.suggestedName(for: "ΩΩ") == nil)
        #expect(LibvirtImport.suggestedName(for: String(repeating: "a", count: 100))?.count == 63)
        let mapped = try LibvirtImport.importDomain(xml: Self.domain().replacing("<name>t</name>", with: "<name>My VM</name>"))
        #expect(mapped.configuration.name == "my-vm")
        #expect(throws: LibvirtImportError.self) { try LibvirtImport.importDomain(xml: Self.domain().replacing("<name>t</name>", with: "<name>ΩΩ</name>")) }
        let given = try LibvirtImport.importDomain(xml: Self.domain().replacing("<name>t</name>", with: "<name>ΩΩ</name>"), options: ImportOptions(name: "omega"))
        #expect(given.configuration.name == "omega")
        #expect(throws: LibvirtImportError.self) { try LibvirtImport.importDomain(xml: Self.domain(), options: ImportOptions(name: "Bad Name")) }
    }

    @Test func vcpusAboveTheLimitAreRefusedAndCurrentIsUsed() throws {
        let many = Self.domain().replacing("<vcpu>1</vcpu>", with: "<vcpu>300</vcpu>")
        do {
            _ = try LibvirtImport.importDomain(xml: many)
            Issue.record("300 vCPUs imported")
        } catch { #expect(error.refusals.map(\.xpath) == ["/domain/vcpu"]) }
        #expect(throws: LibvirtImportError.self) {
            try LibvirtImport.importDomain(xml: Self.domain().replacing("<vcpu>1</vcpu>", with: "<vcpu>8</vcpu>"), options: ImportOptions(maximumCPUs: 4))
        }
        let current = try LibvirtImport.importDomain(xml: Self.domain().replacing("<vcpu>1</vcpu>", with: "<vcpu current='2'>4</vcpu>"))
        #expect(current.configuration.cpus == 2)
        #expect(current.decisions.contains { $0.xpath == "/domain/vcpu/@current" && $0.kind == .warned })
    }

    @Test func serialAndConsoleAreOneCOM1() throws {
        let devices = """
            <serial type='pty'><source path='/dev/pts/3'/><target type='isa-serial' port='0'><model name='isa-serial'/></target><alias name='serial0'/></serial>
            <console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/><target type='serial' port='0'/><log file='/var/log/c.log' append='on'/><alias name='serial0'/></console>
            <serial type='pty'><target port='1'/></serial>
            """
        let result = try LibvirtImport.importDomain(xml: Self.domain(devices: devices))
        #expect(result.configuration.console == ConsoleConfig(output: .stdio, logPath: "/var/log/c.log"))
        let byPath = Dictionary(result.decisions.map { ($0.xpath, $0.kind) }, uniquingKeysWith: { first, _ in first })
        #expect(byPath["/domain/devices/serial[1]"] == .taken)
        #expect(byPath["/domain/devices/console"] == .taken)
        #expect(byPath["/domain/devices/serial[2]"] == .warned)
        // The live tty and pty paths and the aliases: one warning, where the first of them is.
        #expect(result.decisions.filter { $0.message.hasPrefix(runtimeMessage) }.map(\.xpath) == ["/domain/devices/console/@tty"])
    }

    @Test func ignoredGroupsAreWarnedOnce() throws {
        let devices = String(repeating: "<controller type='usb'/>", count: 5) + "<graphics type='vnc'/><graphics type='spice'/><rng model='virtio'/>"
        let result = try LibvirtImport.importDomain(xml: Self.domain(devices: devices))
        let warnings = result.decisions.filter { $0.kind == .warned }
        #expect(warnings.filter { $0.xpath.hasPrefix("/domain/devices/controller") }.count == 1)
        #expect(warnings.first { $0.xpath == "/domain/devices/controller[1]" }?.message.hasSuffix("(5 elements)") == true)
        #expect(warnings.filter { $0.xpath.hasPrefix("/domain/devices/graphics") }.count == 1)
        #expect(warnings.contains { $0.xpath == "/domain/devices/rng" })
    }

    @Test func hostdevIsRefusedUnlessDropped() throws {
        let devices = "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev>"
        do {
            _ = try LibvirtImport.importDomain(xml: Self.domain(devices: devices))
            Issue.record("hostdev imported")
        } catch { #expect(error.refusals.map(\.xpath) == ["/domain/devices/hostdev"]) }
        let dropped = try LibvirtImport.importDomain(xml: Self.domain(devices: devices), options: ImportOptions(dropUnsupported: true))
        #expect(dropped.decisions.contains { $0.xpath == "/domain/devices/hostdev" && $0.kind == .warned })
    }

    @Test func messagesStayOneLineAndForwardsAreBounded() throws {
        let result = try LibvirtImport.importDomain(xml: Self.domain().replacing("<name>t</name>", with: "<name>a&#10;b</name>"))
        #expect(result.configuration.name == "a-b")
        #expect(result.decisions.first { $0.xpath == "/domain/name" }?.message == #"'a\nb' is not a valid VM name (lower-case letters, digits, '.', '_', '-'): using 'a-b'"#)
        let ranges = (0..<5).map { "<range start='\(10000 + $0 * 256)' end='\(10000 + $0 * 256 + 255)' to='\(20000 + $0 * 256)'/>" }.joined()
        let devices = "<interface type='user'><portForward proto='tcp'>\(ranges)</portForward></interface>"
        do {
            _ = try LibvirtImport.importDomain(xml: Self.domain(devices: devices))
            Issue.record("1280 forwards imported")
        } catch { #expect(error.refusals.map(\.xpath) == ["/domain/devices/interface/portForward/range[5]"]) }
    }

    @Test func otherArchitecturesAreRefused() throws {
        do {
            _ = try LibvirtImport.importDomain(xml: Self.domain().replacing("x86_64", with: "aarch64"))
            Issue.record("aarch64 imported")
        } catch { #expect(error.refusals.map(\.xpath) == ["/domain/os/type/@arch"]) }
    }

    @Test func tooManyDevicesFailValidationAsARefusal() throws {
        let disks = (0..<9).map { "<disk type='file' device='disk'><source file='/d/\($0)'/><target dev='\(LibvirtImport.guestDiskName($0))'/></disk>" }
        do {
            _ = try LibvirtImport.importDomain(xml: Self.domain(devices: disks.joined()))
            Issue.record("nine disks imported")
        } catch { #expect(error.refusals.map(\.xpath) == ["/domain"]) }
    }
}

/// How the importer words its one warning for runtime-only attributes.
let runtimeMessage = "attributes of a running domain"
