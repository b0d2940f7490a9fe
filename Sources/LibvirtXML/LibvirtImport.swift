import VMConfig

/// What the importer did with one element or attribute of a domain description.
public struct Decision: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        /// Honoured: it is in the configuration.
        case taken
        /// Ignored, and the user told why.
        case warned
        /// Cannot be run as described: the import fails.
        case refused
    }

    /// Where, as an XPath: `/domain/devices/disk[2]/driver/@type` (an index only where siblings share a name).
    public var xpath: String
    public var kind: Kind
    public var message: String
    /// A refusal of an optional device that `ImportOptions.dropUnsupported` would turn into a warning.
    public var droppable: Bool

    /// Control characters in `message` (a name or command line from the document may hold a
    /// newline) are written as escapes, so each decision stays one line.
    public init(xpath: String, kind: Kind, message: String, droppable: Bool = false) {
        self.xpath = xpath
        self.kind = kind
        self.message = Self.oneLine(message)
        self.droppable = droppable
    }

    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        var result = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default:
                if scalar.properties.generalCategory == .control {
                    result += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
        }
        return result
    }

    public var description: String { "\(kind.rawValue) \(xpath): \(message)" }
}

public struct ImportOptions: Sendable {
    /// The VM's name instead of the domain's.
    public var name: String?
    /// Drop the optional devices that cannot be run (host devices, libvirt networks, image formats
    /// other than raw, CD-ROMs) with a warning, instead of refusing the domain.
    public var dropUnsupported: Bool
    /// The most vCPUs allowed: `VMConfiguration.maximumCPUs`, or less where the host's KVM says so.
    public var maximumCPUs: Int

    public init(name: String? = nil, dropUnsupported: Bool = false, maximumCPUs: Int = VMConfiguration.maximumCPUs) {
        self.name = name
        self.dropUnsupported = dropUnsupported
        self.maximumCPUs = maximumCPUs
    }
}

public struct ImportResult: Sendable {
    /// Valid: `validate()` has passed.
    public var configuration: VMConfiguration
    /// One per element or attribute that mattered, in document order (a warning for a group of
    /// ignored elements stands where the first of them is).
    public var decisions: [Decision]
    /// libvirt's `<title>` and `<description>`, which the configuration does not hold.
    public var title: String?
    public var description: String?
}

public enum LibvirtImportError: Error, Sendable, CustomStringConvertible {
    /// Not a domain description that can be read at all.
    case unreadable(XMLReadError)
    /// Read, but some of it cannot be run: every decision, the refusals among them.
    case refused([Decision])

    public var refusals: [Decision] {
        if case .refused(let decisions) = self { return decisions.filter { $0.kind == .refused } }
        return []
    }

    public var description: String {
        switch self {
        case .unreadable(let error): return error.description
        case .refused:
            let refusals = self.refusals
            guard let first = refusals.first else { return "the domain was refused" }
            let more = refusals.count > 1 ? " (and \(refusals.count - 1) more refusal\(refusals.count > 2 ? "s" : ""))" : ""
            return "cannot import \(first.xpath): \(first.message)\(more)"
        }
    }
}

/// Turns libvirt domain XML (https://libvirt.org/formatdomain.html) into a `VMConfiguration`,
/// element by element: honoured, warned about and ignored, or refused with what to do instead.
public enum LibvirtImport {
    public static func importDomain(xml: String, options: ImportOptions = ImportOptions()) throws(LibvirtImportError) -> ImportResult {
        try importDomain(bytes: Array(xml.utf8), options: options)
    }

    public static func importDomain(bytes: [UInt8], options: ImportOptions = ImportOptions()) throws(LibvirtImportError) -> ImportResult {
        let root: XMLNode
        do { root = try XMLReader.parse(bytes, root: "domain") } catch { throw .unreadable(error) }
        var importer = DomainImporter(options: options)
        return try importer.run(root)
    }

    /// For a libFuzzer harness (`LLVMFuzzerTestOneInput`): reads and imports any bytes, and returns
    /// whether they were imported. It never traps: every failure is a thrown, typed error.
    public static func fuzz(_ data: UnsafeRawBufferPointer) -> Bool {
        do {
            _ = try importDomain(bytes: Array(data), options: ImportOptions(dropUnsupported: data.first.map { $0 & 1 == 1 } ?? false))
            return true
        } catch {
            return false
        }
    }

    /// libvirt's memory units (formatdomain.html#memory-allocation): the SI ones are powers of
    /// 1000, the one-letter and IEC ones powers of 1024; no unit means KiB.
    public static func memoryUnitFactor(_ unit: String) -> Int? {
        switch unit {
        case "b", "bytes": 1
        case "KB": 1000
        case "k", "K", "KiB": 1 << 10
        case "MB": 1_000_000
        case "M", "MiB": 1 << 20
        case "GB": 1_000_000_000
        case "G", "GiB": 1 << 30
        case "TB": 1_000_000_000_000
        case "T", "TiB": 1 << 40
        case "PB": 1_000_000_000_000_000
        case "P", "PiB": 1 << 50
        case "EB": 1_000_000_000_000_000_000
        case "E", "EiB": 1 << 60
        default: nil
        }
    }

    /// Where a disk target sorts: `vda` 1, … `vdz` 26, `vdaa` 27 (bijective base 26 after the bus
    /// prefix, as libvirt's virDiskNameToIndex counts); nil for a name that is not a disk name.
    public static func diskIndex(_ target: String) -> Int? {
        let prefixes = ["xvd", "ubd", "vd", "sd", "hd", "nvme"]
        guard let prefix = prefixes.first(where: { target.hasPrefix($0) }) else { return nil }
        let letters = target.utf8.dropFirst(prefix.utf8.count)
        guard !letters.isEmpty, letters.count <= 4 else { return nil }
        var index = 0
        for letter in letters {
            guard (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(letter) else { return nil }
            index = index * 26 + Int(letter - UInt8(ascii: "a")) + 1
        }
        return index
    }

    /// The guest's name for the disk at position `position` (0-based): vda, …, vdz, vdaa, …
    public static func guestDiskName(_ position: Int) -> String {
        var number = position + 1
        var letters: [Character] = []
        while number > 0 {
            number -= 1
            letters.insert(Character(UnicodeScalar(UInt8(ascii: "a") + UInt8(number % 26))), at: 0)
            number /= 26
        }
        return "vd" + String(letters)
    }

    /// A valid VM name made from a libvirt one (which may hold capitals, spaces, anything), or nil
    /// when nothing of it can be kept.
    public static func suggestedName(for name: String) -> String? {
        var result: [UInt8] = []
        for byte in name.lowercased().utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"):
                result.append(byte)
            default:
                if result.last != UInt8(ascii: "-") { result.append(UInt8(ascii: "-")) }
            }
        }
        while let first = result.first, !(first >= UInt8(ascii: "a") && first <= UInt8(ascii: "z") || first >= UInt8(ascii: "0") && first <= UInt8(ascii: "9")) {
            result.removeFirst()
        }
        result = Array(result.prefix(63))
        while result.last == UInt8(ascii: "-") { result.removeLast() }
        guard !result.isEmpty else { return nil }
        return String(decoding: result, as: UTF8.self)
    }

    /// The namespace of SwiftKVM's own `<metadata>` element, which holds what libvirt's schema has
    /// no place for (the PIT model, the boot-protocol entry), so an export imports back the same.
    public static let metadataNamespace = "urn:swiftkvm:domain:1"
}

/// The groups of ignored elements, each warned about once.
enum IgnoredGroup: String {
    case emulator, machineType, cpuModel, timers, memballoon, rng, channels, controllers, usb, video, graphics, sound, input
    case addresses, seclabel, runtime, powerManagement, features, diskOptions, interfaceOptions, bootOrder, vcpuPlacement, tuning, watchdog

    var message: String {
        switch self {
        case .emulator: "the emulator is not used: SwiftKVM is the VMM"
        case .machineType: "the machine type is ignored: SwiftKVM has one machine (PC with virtio-mmio devices)"
        case .cpuModel: "the CPU model is ignored: the guest sees the host's CPU as KVM offers it, less any disabled features"
        case .timers: "timers other than the PIT are ignored: the guest gets KVM's clock and local APIC timer"
        case .memballoon: "the memory balloon is ignored: the guest keeps all of its memory"
        case .rng: "the random number device is ignored: there is no virtio-rng"
        case .channels: "channels (guest agent, spice) are ignored: there is no virtio-serial"
        case .controllers: "controllers are ignored: disks and NICs are virtio-mmio devices"
        case .usb: "USB devices are ignored: there is no USB"
        case .video: "video is ignored: the console is the serial port"
        case .graphics: "graphics are ignored: the console is the serial port (COM1)"
        case .sound: "sound is ignored: there is no sound device"
        case .input: "input devices are ignored: the console is the serial port"
        case .addresses: "device addresses are ignored: devices are placed on virtio-mmio in order"
        case .seclabel: "security labels are ignored: confine the swiftkvm process yourself"
        case .runtime: "attributes of a running domain (id, alias, pty paths) are ignored"
        case .powerManagement: "power management (suspend) settings are ignored"
        case .features: "these features are ignored: only ACPI is chosen (APIC and PAE are always there)"
        case .diskOptions: "disk tuning options (cache, io, serial, boot order, …) are ignored"
        case .interfaceOptions: "interface options (link state, MTU, driver, filters) are ignored"
        case .bootOrder: "the boot order is ignored: the kernel is booted directly"
        case .vcpuPlacement: "vCPU placement and tuning are ignored"
        case .tuning: "resource tuning (NUMA, memory backing, cputune, …) is ignored"
        case .watchdog: "the watchdog is ignored: there is none"
        }
    }
}

struct DomainImporter {
    /// Forwarded ports per interface: a document cannot make the configuration grow past this.
    static let maximumForwards = 1024

    let options: ImportOptions
    var decisions: [Decision] = []
    var groups: [IgnoredGroup: (index: Int, count: Int)] = [:]

    var name: String?
    var memoryBytes: Int?
    var cpus = 1
    var cpuFeatures: [String] = []
    var pit = PITModel.kvm
    var entry = LinuxBootSource.defaultEntry
    var kernel: String?
    var initrd: String?
    var commandLine = ""
    var acpi = false
    var onPowerOff = LifecycleAction.destroy
    var onReboot = LifecycleAction.restart
    var onCrash = LifecycleAction.destroy
    var disks: [(order: Int, sequence: Int, disk: DiskConfig, decision: Int, target: String)] = []
    var interfaces: [NetworkInterfaceConfig] = []
    var console = ConsoleConfig(output: .none)
    var title: String?
    var description: String?

    init(options: ImportOptions) { self.options = options }

    mutating func take(_ xpath: String, _ message: String) { decisions.append(Decision(xpath: xpath, kind: .taken, message: message)) }
    mutating func warn(_ xpath: String, _ message: String) { decisions.append(Decision(xpath: xpath, kind: .warned, message: message)) }
    mutating func refuse(_ xpath: String, _ message: String) { decisions.append(Decision(xpath: xpath, kind: .refused, message: message)) }

    /// A refusal of something the VM can run without: a warning with `dropUnsupported`.
    /// Returns whether it was dropped.
    @discardableResult
    mutating func refuseOptional(_ xpath: String, _ message: String) -> Bool {
        if options.dropUnsupported {
            decisions.append(Decision(xpath: xpath, kind: .warned, message: message + "; dropped, as asked", droppable: true))
            return true
        }
        decisions.append(Decision(xpath: xpath, kind: .refused, message: message, droppable: true))
        return false
    }

    mutating func ignore(_ group: IgnoredGroup, _ xpath: String) {
        if let existing = groups[group] {
            groups[group] = (existing.index, existing.count + 1)
        } else {
            groups[group] = (decisions.count, 1)
            warn(xpath, group.message)
        }
    }

    /// Children with their XPaths (`name[i]` where siblings share the name).
    func paths(_ node: XMLNode, under parent: String) -> [(node: XMLNode, path: String)] {
        var totals: [String: Int] = [:]
        for child in node.children { totals[child.name, default: 0] += 1 }
        var seen: [String: Int] = [:]
        return node.children.map { child in
            seen[child.name, default: 0] += 1
            let suffix = (totals[child.name] ?? 0) > 1 ? "[\(seen[child.name] ?? 0)]" : ""
            return (child, "\(parent)/\(child.name)\(suffix)")
        }
    }

    mutating func run(_ root: XMLNode) throws(LibvirtImportError) -> ImportResult {
        domainAttributes(root)
        var seen = Set<String>()
        for (node, path) in paths(root, under: "/domain") {
            seen.insert(node.name)
            element(node, path)
        }
        if !seen.contains("name") { refuse("/domain/name", "the domain has no <name>: add one") }
        if !seen.contains("memory") { refuse("/domain/memory", "the domain has no <memory>: add one, e.g. <memory unit='MiB'>256</memory>") }
        if !seen.contains("os") { refuse("/domain/os/kernel", Self.noKernel) }
        if !seen.contains("features") { take("/domain/features/acpi", "absent: the guest gets no ACPI tables (the MP table remains)") }
        for (element, action) in [("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")] where !seen.contains(element) {
            take("/domain/\(element)", "absent: libvirt's default, \(action)")
        }
        if !seen.contains("devices") { take("/domain/devices/serial", "no serial console: the guest's console output goes nowhere") }
        for (_, entry) in groups where entry.count > 1 {
            decisions[entry.index].message += " (\(entry.count) elements)"
        }

        if let override = options.name {
            do { try VMConfiguration.validateName(override) } catch {
                refuse("/domain/name", "the name given instead, '\(override)', is not valid: \(error)")
            }
            name = override
        }

        let ordered = disks.sorted { ($0.order, $0.sequence) < ($1.order, $1.sequence) }
        for (position, entry) in ordered.enumerated() {
            let guestName = LibvirtImport.guestDiskName(position)
            let renamed = guestName == entry.target ? "" : " (libvirt's target \(entry.target))"
            decisions[entry.decision].message += " → /dev/\(guestName)\(renamed)"
        }

        guard !decisions.contains(where: { $0.kind == .refused }), let kernel, let memoryBytes else { throw .refused(decisions) }
        let configuration = VMConfiguration(
            name: name, boot: .linux(LinuxBootSource(kernel: kernel, initrd: initrd, commandLine: commandLine, entry: entry)),
            memoryBytes: memoryBytes, cpus: cpus, cpuFeatures: cpuFeatures, pit: pit, acpi: acpi, disks: ordered.map(\.disk),
            networkInterfaces: interfaces, console: console, onPowerOff: onPowerOff, onReboot: onReboot, onCrash: onCrash)
        do { try configuration.validate() } catch {
            refuse("/domain", "the result is not a VM SwiftKVM can run: \(error)")
            throw .refused(decisions)
        }
        return ImportResult(configuration: configuration, decisions: decisions, title: title, description: description)
    }

    static let noKernel =
        "no <kernel>: SwiftKVM boots a Linux kernel directly, not from a disk or firmware; copy the guest's /boot/vmlinuz-* and initrd.img-* out (e.g. virt-get-kernel) and add <kernel>, <initrd> and <cmdline> (root=/dev/vda1 console=ttyS0) to <os>"

    mutating func domainAttributes(_ root: XMLNode) {
        for (attribute, value) in root.attributes {
            let path = "/domain/@\(attribute)"
            switch attribute {
            case "type":
                switch value {
                case "kvm": take(path, "KVM")
                case "qemu": take(path, "'qemu' (software emulation in libvirt): SwiftKVM always runs on KVM")
                default: warn(path, "domain type '\(value)' is ignored: SwiftKVM always runs on KVM")
                }
            case "id": ignore(.runtime, path)
            default: warn(path, "unknown attribute, ignored")
            }
        }
    }

    mutating func element(_ node: XMLNode, _ path: String) {
        switch node.name {
        case "name":
            let text = node.text
            if let suggested = LibvirtImport.suggestedName(for: text) {
                if suggested == text {
                    take(path, "'\(text)'")
                } else if options.name == nil {
                    take(path, "'\(text)' is not a valid VM name (lower-case letters, digits, '.', '_', '-'): using '\(suggested)'")
                } else {
                    take(path, "'\(text)', replaced by the name given")
                }
                name = suggested
            } else if options.name == nil {
                refuse(path, "'\(text)' has nothing to make a VM name of: choose a name of lower-case letters, digits, '.', '_' and '-'")
            } else {
                take(path, "'\(text)', replaced by the name given")
            }
        case "title":
            title = node.text
            take(path, "kept with the import: '\(node.text)'")
        case "description":
            description = node.text
            take(path, "kept with the import (\(node.text.utf8.count) bytes)")
        case "uuid", "genid": warn(path, "not kept: SwiftKVM VMs are known by name")
        case "metadata": metadata(node, path)
        case "memory":
            if let bytes = memory(node, path) {
                memoryBytes = bytes
                take(path, describe(bytes))
            }
        case "currentMemory":
            if let bytes = memory(node, path, rounding: false) {
                if let total = memoryBytes, bytes < total {
                    warn(path, "\(describe(bytes)) is less than <memory>: without a balloon the guest gets all of <memory>")
                } else {
                    take(path, "\(describe(bytes)), the same as <memory>")
                }
            }
        case "maxMemory": warn(path, "memory hotplug is ignored: the guest gets <memory> from the start")
        case "vcpu": vcpu(node, path)
        case "vcpus", "cputune", "iothreads", "iothreadids": ignore(.vcpuPlacement, path)
        case "os": os(node, path)
        case "features": features(node, path)
        case "cpu": cpu(node, path)
        case "clock": clock(node, path)
        case "on_poweroff", "on_reboot", "on_crash": lifecycle(node, path)
        case "pm": ignore(.powerManagement, path)
        case "devices": devices(node, path)
        case "seclabel": ignore(.seclabel, path)
        case "resource", "numatune", "memoryBacking", "blkiotune", "memtune", "perf", "keywrap", "sysinfo", "idmap":
            ignore(.tuning, path)
        case "launchSecurity": refuse(path, "confidential guests (SEV, TDX) cannot be run: remove <launchSecurity>")
        default: warn(path, "<\(node.name)> is not known to the importer: ignored")
        }
    }

    func describe(_ bytes: Int) -> String {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] where bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift) \(unit)"
        }
        return "\(bytes) bytes"
    }

    /// `<memory unit='…'>N</memory>` in bytes, rounded up to 4 KiB pages (libvirt rounds to KiB).
    mutating func memory(_ node: XMLNode, _ path: String, rounding: Bool = true) -> Int? {
        let unit = node[attribute: "unit"] ?? "KiB"
        guard let factor = LibvirtImport.memoryUnitFactor(unit) else {
            refuse("\(path)/@unit", "'\(unit)' is not one of libvirt's units (b, KB, KiB, MB, MiB, GB, GiB, TB, TiB, …)")
            return nil
        }
        let text = node.text.trimmingWhitespace
        guard let count = Int(text), count > 0 else {
            refuse(path, "'\(text)' is not a positive whole number")
            return nil
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: factor)
        guard !overflow, bytes <= Int.max - 4095 else {
            refuse(path, "\(text) \(unit) is more memory than can be described")
            return nil
        }
        guard rounding, bytes % 4096 != 0 else { return bytes }
        let rounded = (bytes + 4095) / 4096 * 4096
        warn(path, "\(bytes) bytes is not a whole number of 4 KiB pages: rounded up to \(rounded)")
        return rounded
    }

    mutating func vcpu(_ node: XMLNode, _ path: String) {
        let text = node.text.trimmingWhitespace
        guard let count = Int(text), count >= 1 else {
            refuse(path, "'\(text)' is not a vCPU count")
            return
        }
        var booted = count
        for (attribute, value) in node.attributes {
            switch attribute {
            case "current":
                guard let current = Int(value), (1...count).contains(current) else {
                    refuse("\(path)/@current", "'\(value)' is not a vCPU count from 1 to \(count)")
                    return
                }
                booted = current
                if current < count {
                    warn("\(path)/@current", "\(current) of \(count) vCPUs at boot: there is no vCPU hotplug, so the guest gets \(current)")
                } else {
                    take("\(path)/@current", "\(current)")
                }
            case "placement", "cpuset": ignore(.vcpuPlacement, "\(path)/@\(attribute)")
            default: warn("\(path)/@\(attribute)", "unknown attribute, ignored")
            }
        }
        guard booted <= options.maximumCPUs else {
            refuse(path, "\(booted) vCPUs are more than the \(options.maximumCPUs) a VM can have here: give fewer")
            return
        }
        cpus = booted
        take(path, "\(booted) vCPU\(booted == 1 ? "" : "s")")
    }

    mutating func os(_ node: XMLNode, _ path: String) {
        var sawKernel = false
        for (attribute, _) in node.attributes {
            if attribute == "firmware" { warn("\(path)/@firmware", "firmware selection is ignored: the kernel is booted directly") }
        }
        for (child, childPath) in paths(node, under: path) {
            switch child.name {
            case "type":
                let kind = child.text.trimmingWhitespace
                if kind == "hvm" { take(childPath, "a fully virtualized guest") } else {
                    refuse(childPath, "OS type '\(kind)' cannot be run: SwiftKVM runs hvm guests (a Linux bzImage), not Xen PV or containers")
                }
                if let arch = child[attribute: "arch"] {
                    switch arch {
                    case "x86_64": take("\(childPath)/@arch", "x86_64")
                    case "i686": take("\(childPath)/@arch", "i686: an x86 guest on x86_64 KVM")
                    default: refuse("\(childPath)/@arch", "architecture '\(arch)' cannot be run: SwiftKVM runs x86_64 and i686 guests on x86_64 KVM")
                    }
                }
                if child[attribute: "machine"] != nil { ignore(.machineType, "\(childPath)/@machine") }
            case "kernel":
                sawKernel = true
                if child.text.isEmpty { refuse(childPath, "the kernel path is empty: give the path of a bzImage") } else {
                    kernel = child.text
                    take(childPath, child.text)
                }
            case "initrd":
                if child.text.isEmpty { warn(childPath, "empty: no initramfs") } else {
                    initrd = child.text
                    take(childPath, child.text)
                }
            case "cmdline":
                commandLine = child.text
                take(childPath, "'\(child.text)'")
            case "boot": ignore(.bootOrder, childPath)
            case "bootmenu", "bios", "smbios": warn(childPath, "BIOS settings are ignored: there is no BIOS, the kernel is booted directly")
            case "loader", "nvram": warn(childPath, "firmware is ignored: the kernel is booted directly")
            case "dtb": warn(childPath, "a device tree is ignored: x86 guests get ACPI or MP tables")
            case "acpi": warn(childPath, "extra ACPI tables are ignored: SwiftKVM makes its own")
            default: warn(childPath, "<\(child.name)> is not known to the importer: ignored")
            }
        }
        if !sawKernel { refuse("\(path)/kernel", Self.noKernel) } else if initrd == nil, node.child("initrd") == nil {
            take("\(path)/initrd", "absent: no initramfs")
        }
        if node.child("cmdline") == nil { take("\(path)/cmdline", "absent: the kernel gets an empty command line") }
    }

    mutating func features(_ node: XMLNode, _ path: String) {
        var sawACPI = false
        for (child, childPath) in paths(node, under: path) {
            switch child.name {
            case "acpi":
                sawACPI = true
                acpi = true
                take(childPath, "the guest gets ACPI tables")
            case "apic", "pae": take(childPath, "always there")
            default: ignore(.features, childPath)
            }
        }
        if !sawACPI { take("\(path)/acpi", "absent: the guest gets no ACPI tables (the MP table remains)") }
    }

    mutating func cpu(_ node: XMLNode, _ path: String) {
        var other = false
        for (attribute, value) in node.attributes {
            if attribute == "mode", value == "host-passthrough" {
                take("\(path)/@mode", "the host's CPU, as KVM offers it")
            } else if attribute != "check", attribute != "migratable" {
                other = true
            }
        }
        for (child, childPath) in paths(node, under: path) {
            if child.name == "feature", let policy = child[attribute: "policy"], policy == "disable" || policy == "forbid",
                let name = child[attribute: "name"]
            {
                let feature = "-" + name.replacingHyphens
                cpuFeatures.append(feature)
                take(childPath, "hidden from the guest (\(feature))")
            } else {
                other = true
            }
        }
        if other { ignore(.cpuModel, path) }
    }

    mutating func clock(_ node: XMLNode, _ path: String) {
        if let offset = node[attribute: "offset"] {
            if offset == "utc" { take("\(path)/@offset", "the guest's clock follows the host's (UTC)") } else {
                warn("\(path)/@offset", "offset '\(offset)' is ignored: the guest's clock follows the host's (UTC)")
            }
        }
        for (child, childPath) in paths(node, under: path) {
            if child.name == "timer", child[attribute: "name"] == "pit" {
                take(childPath, "the 8254 PIT (KVM's in-kernel one unless SwiftKVM's metadata says emulated)")
            } else {
                ignore(.timers, childPath)
            }
        }
    }

    mutating func lifecycle(_ node: XMLNode, _ path: String) {
        let value = node.text.trimmingWhitespace
        let action: LifecycleAction
        switch value {
        case "destroy", "restart", "preserve":
            action = LifecycleAction(rawValue: value) ?? .destroy
            take(path, value)
        case "rename-restart":
            action = .restart
            warn(path, "rename-restart: restarted under the same name")
        case "coredump-destroy":
            action = .destroy
            warn(path, "coredump-destroy: destroyed without a core dump")
        case "coredump-restart":
            action = .restart
            warn(path, "coredump-restart: restarted without a core dump")
        default:
            refuse(path, "'\(value)' is not an action: use destroy, restart or preserve")
            return
        }
        switch node.name {
        case "on_poweroff": onPowerOff = action
        case "on_reboot": onReboot = action
        default: onCrash = action
        }
    }

    mutating func metadata(_ node: XMLNode, _ path: String) {
        for (child, childPath) in paths(node, under: path) {
            guard child.namespace == LibvirtImport.metadataNamespace else {
                warn(childPath, "metadata of other programs is ignored")
                continue
            }
            for (setting, settingPath) in paths(child, under: childPath) {
                let localName = setting.name.split(separator: ":").last.map(String.init) ?? setting.name
                let value = setting.text.trimmingWhitespace
                switch localName {
                case "pit":
                    if let model = PITModel(rawValue: value) {
                        pit = model
                        take(settingPath, "the \(value) PIT")
                    } else {
                        refuse(settingPath, "'\(value)' is not a PIT model: use kvm or emulated")
                    }
                case "boot-entry":
                    if LinuxBootSource.entries.contains(value) {
                        entry = value
                        take(settingPath, "the \(value)-bit boot-protocol entry")
                    } else {
                        refuse(settingPath, "'\(value)' is not a boot entry: use 64 or 32")
                    }
                default: warn(settingPath, "not a SwiftKVM setting: ignored")
                }
            }
        }
    }

    mutating func devices(_ node: XMLNode, _ path: String) {
        let children = paths(node, under: path)
        var serialPorts: [(node: XMLNode, path: String)] = []
        var consoles: [(node: XMLNode, path: String)] = []
        for (child, childPath) in children {
            switch child.name {
            case "emulator": ignore(.emulator, childPath)
            case "disk": disk(child, childPath)
            case "interface": interface(child, childPath)
            case "serial": serialPorts.append((child, childPath))
            case "console": consoles.append((child, childPath))
            case "panic":
                let model = child[attribute: "model"] ?? "isa"
                if model == "isa" || model == "pvpanic" {
                    take(childPath, "pvpanic (always there): a guest panic is a crash (on_crash)")
                } else {
                    warn(childPath, "panic model '\(model)' is ignored: the guest has the ISA pvpanic device")
                }
            case "hostdev":
                refuseOptional(childPath, "host devices cannot be passed through: remove it (there is no VFIO)")
            case "filesystem":
                refuseOptional(childPath, "shared folders cannot be given to the guest: there is no virtio-fs; use a disk image")
            case "memballoon": ignore(.memballoon, childPath)
            case "rng": ignore(.rng, childPath)
            case "channel": ignore(.channels, childPath)
            case "controller": ignore(.controllers, childPath)
            case "hub", "redirdev", "smartcard": ignore(.usb, childPath)
            case "video": ignore(.video, childPath)
            case "graphics": ignore(.graphics, childPath)
            case "sound", "audio": ignore(.sound, childPath)
            case "input": ignore(.input, childPath)
            case "watchdog": ignore(.watchdog, childPath)
            default: warn(childPath, "<\(child.name)> devices are not supported: ignored")
            }
        }
        serialConsole(serialPorts, consoles, devicesPath: path)
    }

    /// The libvirt device options every device may have: an address, a user alias (`ua-…`, the
    /// device's id), a runtime alias.
    mutating func commonDeviceChild(_ child: XMLNode, _ childPath: String, id: inout String?) -> Bool {
        switch child.name {
        case "address": ignore(.addresses, childPath)
        case "alias":
            if let alias = child[attribute: "name"], alias.hasPrefix("ua-") {
                id = String(alias.dropFirst(3))
                take("\(childPath)/@name", "the device's id, '\(alias.dropFirst(3))'")
            } else {
                ignore(.runtime, childPath)
            }
        case "boot": ignore(.bootOrder, childPath)
        default: return false
        }
        return true
    }

    mutating func disk(_ node: XMLNode, _ path: String) {
        let type = node[attribute: "type"] ?? "file"
        let device = node[attribute: "device"] ?? "disk"
        guard type == "file" || type == "block" else {
            refuseOptional("\(path)/@type", "disks of type '\(type)' cannot be used: give a raw image file (type='file') or a block device (type='block')")
            return
        }
        guard device == "disk" else {
            refuseOptional("\(path)/@device", "a \(device) cannot be attached: only disks (virtio-blk) are supported")
            return
        }
        var sourcePath: String?
        var target: String?
        var readOnly = false
        var shareable = false
        var id: String?
        var formatProblem: (format: String, path: String)?
        var backingProblem = false
        var sawDriver = false
        for (child, childPath) in paths(node, under: path) {
            if commonDeviceChild(child, childPath, id: &id) { continue }
            switch child.name {
            case "driver":
                sawDriver = true
                let format = child[attribute: "type"] ?? "raw"
                if format != "raw" { formatProblem = (format, "\(childPath)/@type") }
                if child.attributes.contains(where: { $0.name != "type" && $0.name != "name" }) { ignore(.diskOptions, childPath) }
            case "source":
                let attribute = type == "block" ? "dev" : "file"
                if let value = child[attribute: attribute], !value.isEmpty { sourcePath = value }
                if child[attribute: "index"] != nil { ignore(.runtime, "\(childPath)/@index") }
            case "target":
                target = child[attribute: "dev"]
                let bus = child[attribute: "bus"] ?? "virtio"
                if bus != "virtio" { warn("\(childPath)/@bus", "bus '\(bus)': the disk becomes a virtio-blk device") }
            case "readonly":
                readOnly = true
                take(childPath, "read-only")
            case "shareable":
                shareable = true
                take(childPath, "shareable")
            case "backingStore":
                if child.children.isEmpty && child.attributes.isEmpty { ignore(.runtime, childPath) } else {
                    backingProblem = true
                    refuseOptional(childPath, "backing files cannot be read: flatten the image into one raw file with qemu-img convert -O raw")
                }
            default: ignore(.diskOptions, childPath)
            }
        }
        if let formatProblem {
            let image = sourcePath ?? "IMAGE"
            let raw = image.hasSuffix(".\(formatProblem.format)") ? String(image.dropLast(formatProblem.format.utf8.count)) + "raw" : image + ".raw"
            refuseOptional(
                formatProblem.path,
                "'\(formatProblem.format)' images cannot be read (only raw): convert it with qemu-img convert -O raw \(image) \(raw) and point <source> at \(raw)")
            return
        }
        if backingProblem { return }
        guard let sourcePath else {
            refuseOptional("\(path)/source", "the disk has no source (an empty drive): give <source \(type == "block" ? "dev" : "file")='…'/>")
            return
        }
        guard let target, let order = LibvirtImport.diskIndex(target) else {
            refuse("\(path)/target/@dev", "'\(target ?? "")' is not a disk name like vda: give <target dev='vda' bus='virtio'/>")
            return
        }
        let raw = sawDriver ? "raw" : "raw (no <driver type>, as libvirt assumes)"
        take(path, "\(sourcePath), \(raw)\(readOnly ? ", read-only" : "")")
        disks.append((order, disks.count, DiskConfig(id: id, path: sourcePath, readOnly: readOnly, shareable: shareable), decisions.count - 1, target))
    }

    static let tapAdvice =
        "make a tap yourself (ip tuntap add dev tap0 mode tap; ip link set tap0 master br0 up) and use <interface type='ethernet'><target dev='tap0' managed='no'/></interface>, or type='user'"

    mutating func interface(_ node: XMLNode, _ path: String) {
        let type = node[attribute: "type"] ?? ""
        var mac: String?
        var id: String?
        var tap: String?
        var forwards: [PortForward] = []
        switch type {
        case "ethernet", "user": break
        case "network", "bridge":
            refuseOptional("\(path)/@type", "libvirt \(type == "network" ? "networks" : "bridges") are not managed by SwiftKVM: \(Self.tapAdvice)")
            return
        default:
            refuseOptional("\(path)/@type", "interfaces of type '\(type)' cannot be used: \(Self.tapAdvice)")
            return
        }
        for (child, childPath) in paths(node, under: path) {
            if commonDeviceChild(child, childPath, id: &id) { continue }
            switch child.name {
            case "mac":
                mac = child[attribute: "address"]
                take("\(childPath)/@address", mac ?? "")
            case "target":
                if type == "ethernet" { tap = child[attribute: "dev"] } else { ignore(.runtime, childPath) }
            case "model":
                let model = child[attribute: "type"] ?? "virtio"
                if model == "virtio" { take("\(childPath)/@type", "virtio-net") } else {
                    warn("\(childPath)/@type", "model '\(model)': the interface becomes a virtio-net device")
                }
            case "backend" where type == "user":
                let backend = child[attribute: "type"] ?? "default"
                take(childPath, "\(backend): user-mode networking is passt")
            case "portForward" where type == "user":
                guard portForward(child, childPath, into: &forwards) else { return }
            default: ignore(.interfaceOptions, childPath)
            }
        }
        if type == "ethernet" {
            guard let tap, !tap.isEmpty else {
                refuseOptional("\(path)/target/@dev", "an ethernet interface needs the tap's name: \(Self.tapAdvice)")
                return
            }
            take(path, "a virtio-net interface on the tap \(tap)")
            interfaces.append(NetworkInterfaceConfig(id: id, backend: .tap(name: tap), mac: mac))
        } else {
            take(path, "a virtio-net interface on user-mode networking (passt)\(forwards.isEmpty ? "" : " with \(forwards.count) forwarded port\(forwards.count == 1 ? "" : "s")")")
            interfaces.append(NetworkInterfaceConfig(id: id, backend: .user(forwards: forwards), mac: mac))
        }
    }

    /// `<portForward proto='tcp' address='…'><range start='2222' [end='…'] to='22'/></portForward>`.
    mutating func portForward(_ node: XMLNode, _ path: String, into forwards: inout [PortForward]) -> Bool {
        let proto = node[attribute: "proto"] ?? "tcp"
        guard proto == "tcp" else {
            warn("\(path)/@proto", "only TCP ports are forwarded: '\(proto)' is ignored")
            return true
        }
        if node[attribute: "dev"] != nil { warn("\(path)/@dev", "the host interface is ignored: ports are forwarded from every one (or the address)") }
        let address = node[attribute: "address"]
        for (range, rangePath) in paths(node, under: path) where range.name == "range" {
            if range[attribute: "exclude"] == "yes" {
                warn("\(rangePath)/@exclude", "excluded ranges are ignored")
                continue
            }
            guard let start = range[attribute: "start"].flatMap({ Int($0) }), (1...65535).contains(start) else {
                refuse("\(rangePath)/@start", "'\(range[attribute: "start"] ?? "")' is not a port from 1 to 65535")
                return false
            }
            let end = range[attribute: "end"].flatMap { Int($0) } ?? start
            let to = range[attribute: "to"].flatMap { Int($0) } ?? start
            guard (start...65535).contains(end), end - start < 256, (1...65535).contains(to), to + (end - start) <= 65535 else {
                refuse(rangePath, "the range \(start)-\(end) to \(to) does not fit: give at most 256 ports from 1 to 65535")
                return false
            }
            guard forwards.count + (end - start) < DomainImporter.maximumForwards else {
                refuse(rangePath, "more than \(DomainImporter.maximumForwards) forwarded ports: forward fewer")
                return false
            }
            for offset in 0...(end - start) {
                forwards.append(PortForward(hostAddress: address, hostPort: start + offset, guestPort: to + offset))
            }
            take(rangePath, "host port \(start)\(end == start ? "" : "-\(end)") → guest port \(to)\(end == start ? "" : "-\(to + end - start)")")
        }
        return true
    }

    /// `<serial>` and `<console target type='serial'>` describe one COM1 (formatdomain.html#consoles-serial-parallel-channel-devices):
    /// libvirt writes the console as an alias of the first serial port.
    mutating func serialConsole(_ serialPorts: [(node: XMLNode, path: String)], _ consoles: [(node: XMLNode, path: String)], devicesPath: String) {
        var com1: (node: XMLNode, path: String)?
        for port in serialPorts {
            let number = port.node.child("target")?[attribute: "port"] ?? "0"
            if com1 == nil, number == "0" {
                com1 = port
            } else {
                warn(port.path, "only COM1 is there: this serial port is ignored")
            }
        }
        var consoleLog: (String, String?, String)?
        for console in consoles {
            let targetType = console.node.child("target")?[attribute: "type"] ?? "serial"
            guard targetType == "serial" else {
                warn(console.path, "a \(targetType) console is ignored: the console is COM1")
                continue
            }
            if let log = console.node.child("log"), let file = log[attribute: "file"] { consoleLog = (file, log[attribute: "append"], "\(console.path)/log") }
            if com1 == nil {
                com1 = console
            } else {
                take(console.path, "the same COM1 as \(com1?.path ?? "")")
                if console.node.child("log") != nil, com1?.node.child("log") == nil, let consoleLog { log(consoleLog.0, append: consoleLog.1, consoleLog.2) }
                for attribute in ["tty"] where console.node[attribute: attribute] != nil { ignore(.runtime, "\(console.path)/@\(attribute)") }
            }
        }
        guard let com1 else {
            take("\(devicesPath)/serial", "no serial console: the guest's console output goes nowhere")
            return
        }
        let type = com1.node[attribute: "type"] ?? "pty"
        switch type {
        case "pty", "stdio":
            console.output = .stdio
            take(com1.path, "COM1 on swiftkvm's standard input and output (libvirt's \(type))")
        case "file":
            guard let file = com1.node.child("source")?[attribute: "path"], !file.isEmpty else {
                refuse("\(com1.path)/source/@path", "a file console needs the file: give <source path='…'/>")
                return
            }
            console.output = .file
            console.path = file
            take(com1.path, "COM1 output appended to \(file) (no input)")
            if let append = com1.node.child("source")?[attribute: "append"], append == "off" {
                warn("\(com1.path)/source/@append", "the file is appended to, not truncated")
            }
        case "null":
            console.output = .none
            take(com1.path, "COM1 output goes nowhere")
        default:
            console.output = .stdio
            warn(com1.path, "a '\(type)' console is not supported: COM1 is on swiftkvm's standard input and output instead")
        }
        for (child, childPath) in paths(com1.node, under: com1.path) {
            switch child.name {
            case "log":
                if let file = child[attribute: "file"] { log(file, append: child[attribute: "append"], childPath) }
            case "source" where type == "pty":
                ignore(.runtime, childPath)
            case "target", "source": break
            default:
                var id: String?
                _ = commonDeviceChild(child, childPath, id: &id)
            }
        }
        if com1.node[attribute: "tty"] != nil { ignore(.runtime, "\(com1.path)/@tty") }
    }

    mutating func log(_ file: String, append: String?, _ path: String) {
        console.logPath = file
        take(path, "a copy of the console appended to \(file)")
        if append == "off" { warn("\(path)/@append", "the log is appended to, not truncated") }
    }
}

extension String {
    var trimmingWhitespace: String {
        var slice = Substring(self)
        while let first = slice.first, first.isWhitespace { slice = slice.dropFirst() }
        while let last = slice.last, last.isWhitespace { slice = slice.dropLast() }
        return String(slice)
    }

    var replacingHyphens: String { String(map { $0 == "-" ? "_" : $0 }) }
}
