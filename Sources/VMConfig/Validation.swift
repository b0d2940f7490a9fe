/// Why a `VMConfiguration` cannot work. Each case names the field (as in the JSON) and says what
/// would; front ends (the CLI, the API, an import) word it for their users.
public enum ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `field` holds `value`, which is not allowed; `expected` says what is.
    case invalid(field: String, value: String, expected: String)
    /// Two entries of a list share what must be unique.
    case duplicate(field: String, value: String)
    /// More entries than the VM has room for.
    case tooMany(field: String, count: Int, maximum: Int)
    /// Fields that do not go together.
    case conflict(String)

    public var description: String {
        switch self {
        case .invalid(let field, let value, let expected): "\(field) '\(value)' is not valid: \(expected)"
        case .duplicate(let field, let value): "\(field): '\(value)' appears more than once; each must be unique"
        case .tooMany(let field, let count, let maximum): "\(field): \(count) is more than the \(maximum) this VM can have"
        case .conflict(let text): text
        }
    }
}

extension VMConfiguration {
    /// The largest vCPU count the VMM describes to a guest (the MP table and CPUID hold 8-bit ids);
    /// the host's KVM may allow fewer, which the VMM checks when it builds the machine.
    public static let maximumCPUs = 255

    /// Checks everything that can be checked without the host: names, sizes, counts, choices and
    /// combinations. Host facts (KVM's vCPU limit, the host's RAM, whether files exist) are checked
    /// when the machine is built.
    public func validate() throws(ConfigurationError) {
        if let name { try Self.validateName(name) }
        guard memoryBytes > 0, memoryBytes % 4096 == 0 else {
            throw .invalid(field: "memory_bytes", value: "\(memoryBytes)", expected: "a positive multiple of 4096")
        }
        guard (1...Self.maximumCPUs).contains(cpus) else {
            throw .invalid(field: "cpus", value: "\(cpus)", expected: "from 1 to \(Self.maximumCPUs)")
        }
        for feature in cpuFeatures {
            let name = feature.dropFirst()
            guard feature.hasPrefix("-"), !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") })
            else {
                throw .invalid(field: "cpu_features", value: feature, expected: "a feature to hide, written -name (e.g. -xsave)")
            }
        }
        switch boot {
        case .linux(let linux):
            guard !linux.kernel.isEmpty else { throw .invalid(field: "boot.linux.kernel", value: "", expected: "the path of a kernel file") }
            if let initrd = linux.initrd, initrd.isEmpty {
                throw .invalid(field: "boot.linux.initrd", value: "", expected: "the path of an initramfs, or no initrd field")
            }
            guard LinuxBootSource.entries.contains(linux.entry) else {
                throw .invalid(field: "boot.linux.entry", value: linux.entry, expected: "one of \(LinuxBootSource.entries.joined(separator: ", "))")
            }
        case .firmware(let firmware):
            guard !firmware.path.isEmpty else { throw .invalid(field: "boot.firmware.path", value: "", expected: "the path of a flat binary") }
            guard FirmwareBootSource.modes.contains(firmware.mode) else {
                throw .invalid(field: "boot.firmware.mode", value: firmware.mode, expected: "one of \(FirmwareBootSource.modes.joined(separator: ", "))")
            }
            guard disks.isEmpty, networkInterfaces.isEmpty else {
                throw .conflict("a firmware guest has no virtio devices: remove its disks and network interfaces, or boot Linux")
            }
        }
        let devices = disks.count + networkInterfaces.count
        guard devices <= Self.maximumVirtioDevices else {
            throw .tooMany(field: "disks and network_interfaces", count: devices, maximum: Self.maximumVirtioDevices)
        }
        var ids = Set<String>()
        for (index, disk) in disks.enumerated() {
            guard !disk.path.isEmpty else { throw .invalid(field: "disks[\(index)].path", value: "", expected: "the path of a disk image") }
            if let id = disk.id {
                try Self.validateIdentifier(id, field: "disks[\(index)].id")
                guard ids.insert(id).inserted else { throw .duplicate(field: "disks[].id", value: id) }
            }
        }
        var hostPorts = Set<Int>()
        var macs = Set<String>()
        for (index, interface) in networkInterfaces.enumerated() {
            if let id = interface.id {
                try Self.validateIdentifier(id, field: "network_interfaces[\(index)].id")
                guard ids.insert(id).inserted else { throw .duplicate(field: "network_interfaces[].id", value: id) }
            }
            if let mac = interface.mac {
                guard let bytes = MACAddress(mac) else {
                    throw .invalid(field: "network_interfaces[\(index)].mac", value: mac, expected: "six hex bytes like 52:54:00:12:34:56")
                }
                guard bytes.isUnicast else {
                    throw .invalid(field: "network_interfaces[\(index)].mac", value: mac, expected: "a unicast address (the first byte even)")
                }
                guard macs.insert(bytes.description).inserted else { throw .duplicate(field: "network_interfaces[].mac", value: mac) }
            }
            switch interface.backend {
            case .tap(let name):
                // IFNAMSIZ is 16 with the terminating zero.
                guard !name.isEmpty, name.utf8.count <= 15, !name.contains("/"), !name.contains(" ") else {
                    throw .invalid(field: "network_interfaces[\(index)].tap", value: name, expected: "an interface name of 1 to 15 characters")
                }
            case .user(let forwards):
                for forward in forwards {
                    for (field, port) in [("host_port", forward.hostPort), ("guest_port", forward.guestPort)] where !(1...65535).contains(port) {
                        throw .invalid(field: "network_interfaces[\(index)].forwards[].\(field)", value: "\(port)", expected: "a TCP port from 1 to 65535")
                    }
                    guard hostPorts.insert(forward.hostPort).inserted else {
                        throw .duplicate(field: "network_interfaces[].forwards[].host_port", value: "\(forward.hostPort)")
                    }
                }
            }
        }
        switch console.output {
        case .file:
            guard let path = console.path, !path.isEmpty else {
                throw .invalid(field: "console.path", value: "", expected: "a file for the console output (console.output is file)")
            }
        case .stdio, .none:
            if console.path != nil { throw .conflict("console.path is only for console.output file") }
        }
        if let log = console.logPath, log.isEmpty {
            throw .invalid(field: "console.log_path", value: "", expected: "a file to append the console to, or no log_path field")
        }
    }

    /// VM names: 1–63 characters of `[a-z0-9][a-z0-9._-]*`, so a name is a safe folder and unit name.
    public static func validateName(_ name: String) throws(ConfigurationError) {
        let bytes = Array(name.utf8)
        func allowed(_ byte: UInt8, first: Bool) -> Bool {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
            case UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"): !first
            default: false
            }
        }
        guard (1...63).contains(bytes.count), bytes.enumerated().allSatisfy({ allowed($0.element, first: $0.offset == 0) }) else {
            throw .invalid(
                field: "name", value: name,
                expected: "1 to 63 characters: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit")
        }
    }

    /// Device ids (`drive_id`, `iface_id`): 1–64 characters of letters, digits, `_` and `-`, as Firecracker allows.
    static func validateIdentifier(_ id: String, field: String) throws(ConfigurationError) {
        guard (1...64).contains(id.utf8.count), id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
            throw .invalid(field: field, value: id, expected: "1 to 64 letters, digits, '_' or '-'")
        }
    }
}

/// A 48-bit Ethernet address, parsed from `aa:bb:cc:dd:ee:ff` (or with `-`).
public struct MACAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).count == 6
            ? text.split(separator: ":", omittingEmptySubsequences: false)
            : text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard part.count == 2, let byte = UInt8(part, radix: 16) else { return nil }
            bytes.append(byte)
        }
        self.bytes = bytes
    }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    /// Not a multicast (or broadcast) address: bit 0 of the first byte clear.
    public var isUnicast: Bool { bytes[0] & 1 == 0 }

    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }
}
