import VMConfig

/// A configuration written for other tools: libvirt domain XML, or the `swiftkvm run` command.
public enum LibvirtExport {
    /// The name libvirt gets for an anonymous VM (libvirt requires one).
    public static let anonymousName = "swiftkvm"

    /// Why a configuration cannot be written as domain XML.
    public enum ExportError: Error, Equatable, Sendable, CustomStringConvertible {
        case firmwareBoot

        public var description: String {
            switch self {
            case .firmwareBoot: "a firmware guest has no libvirt equivalent: only Linux guests (a kernel booted directly) can be exported as domain XML"
            }
        }
    }

    /// Domain XML (formatdomain.html) for a Linux guest, which `virsh define` accepts and
    /// `LibvirtImport.importDomain` reads back as the same configuration. The PIT model and the
    /// boot-protocol entry go in SwiftKVM's own `<metadata>` element, as libvirt's schema has no
    /// place for them.
    public static func domainXML(for configuration: VMConfiguration) throws(ExportError) -> String {
        guard case .linux(let linux) = configuration.boot else { throw .firmwareBoot }
        var lines = ["<domain type='kvm'>"]
        func add(_ depth: Int, _ line: String) { lines.append(String(repeating: "  ", count: depth) + line) }
        add(1, "<name>\(escape(configuration.name ?? anonymousName))</name>")
        if configuration.pit != .kvm || linux.entry != LinuxBootSource.defaultEntry {
            add(1, "<metadata>")
            add(2, "<swiftkvm:config xmlns:swiftkvm='\(LibvirtImport.metadataNamespace)'>")
            if configuration.pit != .kvm { add(3, "<swiftkvm:pit>\(configuration.pit.rawValue)</swiftkvm:pit>") }
            if linux.entry != LinuxBootSource.defaultEntry { add(3, "<swiftkvm:boot-entry>\(escape(linux.entry))</swiftkvm:boot-entry>") }
            add(2, "</swiftkvm:config>")
            add(1, "</metadata>")
        }
        add(1, "<memory unit='b'>\(configuration.memoryBytes)</memory>")
        add(1, "<vcpu>\(configuration.cpus)</vcpu>")
        add(1, "<os>")
        add(2, "<type arch='x86_64'>hvm</type>")
        add(2, "<kernel>\(escape(linux.kernel))</kernel>")
        if let initrd = linux.initrd { add(2, "<initrd>\(escape(initrd))</initrd>") }
        add(2, "<cmdline>\(escape(linux.commandLine))</cmdline>")
        add(1, "</os>")
        if configuration.acpi {
            add(1, "<features>")
            add(2, "<acpi/>")
            add(1, "</features>")
        }
        if !configuration.cpuFeatures.isEmpty {
            // libvirt accepts a feature list only with a model or host-passthrough.
            add(1, "<cpu mode='host-passthrough'>")
            for feature in configuration.cpuFeatures {
                add(2, "<feature policy='disable' name='\(escape(String(feature.dropFirst())))'/>")
            }
            add(1, "</cpu>")
        }
        add(1, "<on_poweroff>\(configuration.onPowerOff.rawValue)</on_poweroff>")
        add(1, "<on_reboot>\(configuration.onReboot.rawValue)</on_reboot>")
        add(1, "<on_crash>\(configuration.onCrash.rawValue)</on_crash>")
        add(1, "<devices>")
        for (position, disk) in configuration.disks.enumerated() {
            let source = isBlockDevice(disk.path) ? ("block", "dev") : ("file", "file")
            add(2, "<disk type='\(source.0)' device='disk'>")
            add(3, "<driver name='qemu' type='raw'/>")
            add(3, "<source \(source.1)='\(escape(disk.path))'/>")
            add(3, "<target dev='\(LibvirtImport.guestDiskName(position))' bus='virtio'/>")
            if disk.readOnly { add(3, "<readonly/>") }
            if disk.shareable { add(3, "<shareable/>") }
            if let id = disk.id { add(3, "<alias name='ua-\(escape(id))'/>") }
            add(2, "</disk>")
        }
        for interface in configuration.networkInterfaces {
            switch interface.backend {
            case .tap(let name):
                add(2, "<interface type='ethernet'>")
                if let mac = interface.mac { add(3, "<mac address='\(escape(mac))'/>") }
                add(3, "<target dev='\(escape(name))' managed='no'/>")
            case .user(let forwards):
                add(2, "<interface type='user'>")
                if let mac = interface.mac { add(3, "<mac address='\(escape(mac))'/>") }
                // No <backend type='passt'/>: libvirt 9.0's schema refuses it; user-mode is passt here anyway.
                for forward in forwards {
                    let address = forward.hostAddress.map { " address='\(escape($0))'" } ?? ""
                    add(3, "<portForward proto='tcp'\(address)>")
                    add(4, "<range start='\(forward.hostPort)' to='\(forward.guestPort)'/>")
                    add(3, "</portForward>")
                }
            }
            add(3, "<model type='virtio'/>")
            if let id = interface.id { add(3, "<alias name='ua-\(escape(id))'/>") }
            add(2, "</interface>")
        }
        let log = configuration.console.logPath.map { "<log file='\(escape($0))' append='on'/>" }
        switch configuration.console.output {
        case .stdio:
            add(2, "<serial type='pty'>")
            add(3, "<target port='0'/>")
            if let log { add(3, log) }
            add(2, "</serial>")
            add(2, "<console type='pty'>")
            add(3, "<target type='serial' port='0'/>")
            add(2, "</console>")
        case .file:
            add(2, "<serial type='file'>")
            add(3, "<source path='\(escape(configuration.console.path ?? ""))' append='on'/>")
            add(3, "<target port='0'/>")
            if let log { add(3, log) }
            add(2, "</serial>")
        case .none:
            if let log {
                add(2, "<serial type='null'>")
                add(3, "<target port='0'/>")
                add(3, log)
                add(2, "</serial>")
            }
        }
        add(2, "<panic model='isa'/>")
        add(1, "</devices>")
        add(0, "</domain>")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Text for an XML attribute (in single quotes) or element (XML 1.0 §2.4).
    public static func escape(_ text: String) -> String {
        var result = ""
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "'": result += "&apos;"
            case "\"": result += "&quot;"
            case "\n": result += "&#10;"
            case "\r": result += "&#13;"
            case "\t": result += "&#9;"
            default: result.append(character)
            }
        }
        return result
    }

    static func isBlockDevice(_ path: String) -> Bool { path.hasPrefix("/dev/") }

    /// The `swiftkvm run` command for a configuration, and the fields it cannot say (no option yet).
    public struct Command: Equatable, Sendable {
        public var arguments: [String]
        /// Fields of the configuration that `swiftkvm run` has no option for, with their values.
        public var unsupported: [String]

        /// One shell line, each argument quoted where the shell would read it otherwise.
        public var shellLine: String { arguments.map(LibvirtExport.shellQuote).joined(separator: " ") }
    }

    public static func runCommand(for configuration: VMConfiguration) -> Command {
        var arguments = ["swiftkvm", "run"]
        var unsupported: [String] = []
        if let name = configuration.name { unsupported.append("name (\(name))") }
        switch configuration.boot {
        case .linux(let linux):
            arguments += ["--kernel", linux.kernel]
            if let initrd = linux.initrd { arguments += ["--initrd", initrd] }
            arguments += ["--cmdline", linux.commandLine]
            if linux.entry != LinuxBootSource.defaultEntry { arguments += ["--boot-entry", linux.entry] }
            if configuration.memoryBytes != VMConfiguration.defaultLinuxMemory { arguments += ["--memory", size(configuration.memoryBytes)] }
        case .firmware(let firmware):
            arguments += ["--firmware", firmware.path, "--mode", firmware.mode]
            if firmware.loadAddress != 0 { arguments += ["--load", "0x" + String(firmware.loadAddress, radix: 16)] }
            if let entry = firmware.entry { arguments += ["--entry", "0x" + String(entry, radix: 16)] }
            if configuration.memoryBytes != VMConfiguration.defaultFirmwareMemory { arguments += ["--memory", size(configuration.memoryBytes)] }
        }
        if configuration.cpus != 1 { arguments += ["--cpus", "\(configuration.cpus)"] }
        if configuration.pit != .kvm { arguments += ["--pit", configuration.pit.rawValue] }
        if !configuration.cpuFeatures.isEmpty { arguments += ["--cpu-features", configuration.cpuFeatures.joined(separator: ",")] }
        if !configuration.acpi, case .linux = configuration.boot { arguments.append("--no-acpi") }
        for (index, disk) in configuration.disks.enumerated() {
            if disk.path.contains(",") {
                unsupported.append("disks[\(index)].path (\(disk.path): --disk cannot take a path with a comma)")
                continue
            }
            arguments += ["--disk", disk.path + (disk.readOnly ? ",readonly" : "")]
            if disk.shareable { unsupported.append("disks[\(index)].shareable") }
            if let id = disk.id { unsupported.append("disks[\(index)].id (\(id))") }
        }
        for (index, interface) in configuration.networkInterfaces.enumerated() {
            switch interface.backend {
            case .tap(let name): unsupported.append("network_interfaces[\(index)] (tap \(name))")
            case .user: unsupported.append("network_interfaces[\(index)] (user-mode)")
            }
        }
        switch configuration.console.output {
        case .stdio: break
        case .file: unsupported.append("console.output (file \(configuration.console.path ?? ""))")
        case .none: unsupported.append("console.output (none)")
        }
        if let log = configuration.console.logPath { unsupported.append("console.log_path (\(log))") }
        // `swiftkvm run` ends on every power-off, reboot and crash: destroy.
        for (field, action) in [("on_poweroff", configuration.onPowerOff), ("on_reboot", configuration.onReboot), ("on_crash", configuration.onCrash)]
        where action != .destroy {
            unsupported.append("\(field) (\(action.rawValue))")
        }
        return Command(arguments: arguments, unsupported: unsupported)
    }

    /// A size as `swiftkvm run --memory` reads it: 1G, 256M, 64K or bytes.
    static func size(_ bytes: Int) -> String {
        for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] where bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }

    /// POSIX shell quoting (XCU 2.2): bare when every byte is safe, else in single quotes, each
    /// single quote written '\''.
    public static func shellQuote(_ word: String) -> String {
        let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=@%+,")
        if !word.isEmpty, word.allSatisfy({ safe.contains($0) }) { return word }
        return "'" + word.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
    }
}
