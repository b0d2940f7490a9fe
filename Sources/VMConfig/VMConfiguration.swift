/// One description of a whole VM: what the CLI's options, a JSON file (`swiftkvm run --config`),
/// the control API and a libvirt import all produce, and what the VMM builds a machine from.
///
/// It is plain data: encoded as JSON with snake_case keys, decoded strictly (an unknown key is an
/// error, so a misspelt field never silently means its default), and checked in one place,
/// `validate()`, whose errors (`ConfigurationError`) speak of fields, never of command-line flags.
/// How a run is watched (a trace, a time limit, statistics) is not part of it: see the VMM's run
/// policy.
public struct VMConfiguration: Codable, Equatable, Sendable {
    /// A name for people (kept VMs are found by it); nil for an anonymous run.
    public var name: String?
    public var boot: BootSource
    /// Guest RAM in bytes.
    public var memoryBytes: Int
    public var cpus: Int
    /// CPU features hidden from the guest, each written `-name` (e.g. `-xsave`).
    public var cpuFeatures: [String]
    public var pit: PITModel
    /// Whether a Linux guest gets ACPI tables.
    public var acpi: Bool
    /// virtio-blk disks, in order: /dev/vda, /dev/vdb, …
    public var disks: [DiskConfig]
    /// virtio-net interfaces, in order.
    public var networkInterfaces: [NetworkInterfaceConfig]
    public var console: ConsoleConfig
    /// What a guest power-off, reboot and crash (a panic, a triple fault) do.
    public var onPowerOff: LifecycleAction
    public var onReboot: LifecycleAction
    public var onCrash: LifecycleAction

    public static let defaultLinuxMemory = 256 << 20
    public static let defaultFirmwareMemory = 2 << 20
    /// At most this many virtio-mmio devices (disks and NICs together): one free legacy IRQ each.
    public static let maximumVirtioDevices = 8

    public init(
        name: String? = nil, boot: BootSource, memoryBytes: Int? = nil, cpus: Int = 1, cpuFeatures: [String] = [],
        pit: PITModel = .kvm, acpi: Bool = true, disks: [DiskConfig] = [], networkInterfaces: [NetworkInterfaceConfig] = [],
        console: ConsoleConfig = ConsoleConfig(), onPowerOff: LifecycleAction = .destroy,
        onReboot: LifecycleAction = .destroy, onCrash: LifecycleAction = .destroy
    ) {
        self.name = name
        self.boot = boot
        if let memoryBytes {
            self.memoryBytes = memoryBytes
        } else {
            switch boot {
            case .linux: self.memoryBytes = Self.defaultLinuxMemory
            case .firmware: self.memoryBytes = Self.defaultFirmwareMemory
            }
        }
        self.cpus = cpus
        self.cpuFeatures = cpuFeatures
        self.pit = pit
        self.acpi = acpi
        self.disks = disks
        self.networkInterfaces = networkInterfaces
        self.console = console
        self.onPowerOff = onPowerOff
        self.onReboot = onReboot
        self.onCrash = onCrash
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, boot
        case memoryBytes = "memory_bytes"
        case cpus
        case cpuFeatures = "cpu_features"
        case pit, acpi, disks
        case networkInterfaces = "network_interfaces"
        case console
        case onPowerOff = "on_poweroff"
        case onReboot = "on_reboot"
        case onCrash = "on_crash"
    }

    /// Only `boot` is required; every other field has the default the CLI has.
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "the VM configuration")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let boot = try container.decode(BootSource.self, forKey: .boot)
        self.init(
            name: try container.decodeIfPresent(String.self, forKey: .name), boot: boot,
            memoryBytes: try container.decodeIfPresent(Int.self, forKey: .memoryBytes),
            cpus: try container.decodeIfPresent(Int.self, forKey: .cpus) ?? 1,
            cpuFeatures: try container.decodeIfPresent([String].self, forKey: .cpuFeatures) ?? [],
            pit: try container.decodeIfPresent(PITModel.self, forKey: .pit) ?? .kvm,
            acpi: try container.decodeIfPresent(Bool.self, forKey: .acpi) ?? true,
            disks: try container.decodeIfPresent([DiskConfig].self, forKey: .disks) ?? [],
            networkInterfaces: try container.decodeIfPresent([NetworkInterfaceConfig].self, forKey: .networkInterfaces) ?? [],
            console: try container.decodeIfPresent(ConsoleConfig.self, forKey: .console) ?? ConsoleConfig(),
            onPowerOff: try container.decodeIfPresent(LifecycleAction.self, forKey: .onPowerOff) ?? .destroy,
            onReboot: try container.decodeIfPresent(LifecycleAction.self, forKey: .onReboot) ?? .destroy,
            onCrash: try container.decodeIfPresent(LifecycleAction.self, forKey: .onCrash) ?? .destroy)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(name, forKey: .name)
        try container.encode(boot, forKey: .boot)
        try container.encode(memoryBytes, forKey: .memoryBytes)
        try container.encode(cpus, forKey: .cpus)
        try container.encode(cpuFeatures, forKey: .cpuFeatures)
        try container.encode(pit, forKey: .pit)
        try container.encode(acpi, forKey: .acpi)
        try container.encode(disks, forKey: .disks)
        try container.encode(networkInterfaces, forKey: .networkInterfaces)
        try container.encode(console, forKey: .console)
        try container.encode(onPowerOff, forKey: .onPowerOff)
        try container.encode(onReboot, forKey: .onReboot)
        try container.encode(onCrash, forKey: .onCrash)
    }
}

/// What the VM boots.
public enum BootSource: Codable, Equatable, Sendable {
    case linux(LinuxBootSource)
    case firmware(FirmwareBootSource)

    enum CodingKeys: String, CodingKey, CaseIterable { case linux, firmware }

    /// JSON: `{"linux": {...}}` or `{"firmware": {...}}`, exactly one of them.
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "boot")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch (container.contains(.linux), container.contains(.firmware)) {
        case (true, false): self = .linux(try container.decode(LinuxBootSource.self, forKey: .linux))
        case (false, true): self = .firmware(try container.decode(FirmwareBootSource.self, forKey: .firmware))
        default:
            throw DecodingError.dataCorrupted(
                DecodingError.Context(codingPath: decoder.codingPath, debugDescription: "boot needs exactly one of linux or firmware"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .linux(let source): try container.encode(source, forKey: .linux)
        case .firmware(let source): try container.encode(source, forKey: .firmware)
        }
    }
}

/// A Linux kernel and what it is given.
public struct LinuxBootSource: Codable, Equatable, Sendable {
    /// The kernel file (a bzImage).
    public var kernel: String
    public var initrd: String?
    public var commandLine: String
    /// The boot-protocol entry: `64` or `32`.
    public var entry: String

    /// The serial console on COM1, `reboot=k` so a guest reboot reaches the i8042, `panic=-1` so a
    /// panic reboots at once instead of hanging.
    public static let defaultCommandLine = "console=ttyS0 reboot=k panic=-1"
    public static let defaultEntry = "64"
    public static let entries = ["64", "32"]

    public init(kernel: String, initrd: String? = nil, commandLine: String = Self.defaultCommandLine, entry: String = Self.defaultEntry) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.entry = entry
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case kernel, initrd
        case commandLine = "cmdline"
        case entry
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "boot.linux")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            kernel: try container.decode(String.self, forKey: .kernel),
            initrd: try container.decodeIfPresent(String.self, forKey: .initrd),
            commandLine: try container.decodeIfPresent(String.self, forKey: .commandLine) ?? Self.defaultCommandLine,
            entry: try container.decodeIfPresent(String.self, forKey: .entry) ?? Self.defaultEntry)
    }
}

/// A flat binary run as a unit guest.
public struct FirmwareBootSource: Codable, Equatable, Sendable {
    public var path: String
    /// The CPU mode it starts in: `real`, `protected`, `long` or `user`.
    public var mode: String
    /// The guest address the binary is copied to.
    public var loadAddress: UInt64
    /// The first instruction's address; the load address when nil.
    public var entry: UInt64?

    public static let modes = ["real", "protected", "long", "user"]

    public init(path: String, mode: String = "long", loadAddress: UInt64 = 0, entry: UInt64? = nil) {
        self.path = path
        self.mode = mode
        self.loadAddress = loadAddress
        self.entry = entry
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case path, mode
        case loadAddress = "load_address"
        case entry
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "boot.firmware")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            path: try container.decode(String.self, forKey: .path),
            mode: try container.decodeIfPresent(String.self, forKey: .mode) ?? "long",
            loadAddress: try container.decodeIfPresent(UInt64.self, forKey: .loadAddress) ?? 0,
            entry: try container.decodeIfPresent(UInt64.self, forKey: .entry))
    }
}

/// Which 8254 PIT the guest gets.
public enum PITModel: String, Codable, CaseIterable, Sendable {
    /// KVM's in-kernel PIT: no exits for timer ports or ticks.
    case kvm
    /// The VMM's own PIT8254, driven by the VMM's timer.
    case emulated
}

/// What the VMM does when the guest powers off, reboots or crashes (libvirt's `on_*` elements).
public enum LifecycleAction: String, Codable, CaseIterable, Sendable {
    /// End the VM (the VMM exits with the outcome).
    case destroy
    /// Reset the devices and vCPUs and boot again in the same process.
    case restart
    /// Keep the VM paused as it is, for inspection.
    case preserve
}

/// A virtio-blk disk.
public struct DiskConfig: Codable, Equatable, Sendable {
    /// A name for the API (`PUT /drives/{drive_id}`); the device name (`vda`, …) when nil.
    public var id: String?
    public var path: String
    public var readOnly: Bool
    /// Open read-write even where another VM holds the image (the user keeps them consistent).
    public var shareable: Bool

    public init(id: String? = nil, path: String, readOnly: Bool = false, shareable: Bool = false) {
        self.id = id
        self.path = path
        self.readOnly = readOnly
        self.shareable = shareable
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case id, path
        case readOnly = "read_only"
        case shareable
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "a disk")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            id: try container.decodeIfPresent(String.self, forKey: .id), path: try container.decode(String.self, forKey: .path),
            readOnly: try container.decodeIfPresent(Bool.self, forKey: .readOnly) ?? false,
            shareable: try container.decodeIfPresent(Bool.self, forKey: .shareable) ?? false)
    }
}

/// A virtio-net interface and where its frames go.
public struct NetworkInterfaceConfig: Codable, Equatable, Sendable {
    public enum Backend: Codable, Equatable, Sendable {
        /// A host tap device by name.
        case tap(name: String)
        /// User-mode networking (passt), with ports forwarded into the guest.
        case user(forwards: [PortForward])
    }

    /// A name for the API (`PUT /network-interfaces/{iface_id}`); `eth0`, … when nil.
    public var id: String?
    public var backend: Backend
    /// `52:54:00:12:34:56`; one is made up when nil.
    public var mac: String?

    public init(id: String? = nil, backend: Backend, mac: String? = nil) {
        self.id = id
        self.backend = backend
        self.mac = mac
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case id, tap, user, mac }
    enum UserKeys: String, CodingKey, CaseIterable { case forwards }

    /// JSON: `{"tap": "tap0"}` or `{"user": {"forwards": [...]}}`, with optional `id` and `mac`.
    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "a network interface")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch (container.contains(.tap), container.contains(.user)) {
        case (true, false): backend = .tap(name: try container.decode(String.self, forKey: .tap))
        case (false, true):
            let user = try container.superDecoder(forKey: .user)
            try StrictKeys.check(user, allowed: UserKeys.allCases.map(\.rawValue), in: "a user-mode network interface")
            let keyed = try user.container(keyedBy: UserKeys.self)
            backend = .user(forwards: try keyed.decodeIfPresent([PortForward].self, forKey: .forwards) ?? [])
        default:
            throw DecodingError.dataCorrupted(
                DecodingError.Context(
                    codingPath: decoder.codingPath, debugDescription: "a network interface needs exactly one of tap or user"))
        }
        id = try container.decodeIfPresent(String.self, forKey: .id)
        mac = try container.decodeIfPresent(String.self, forKey: .mac)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(id, forKey: .id)
        switch backend {
        case .tap(let name): try container.encode(name, forKey: .tap)
        case .user(let forwards):
            var user = container.nestedContainer(keyedBy: UserKeys.self, forKey: .user)
            try user.encode(forwards, forKey: .forwards)
        }
        try container.encodeIfPresent(mac, forKey: .mac)
    }
}

/// A TCP port on the host forwarded to a port in the guest.
public struct PortForward: Codable, Equatable, Sendable {
    /// The host address to listen on; all of the host's when nil.
    public var hostAddress: String?
    public var hostPort: Int
    public var guestPort: Int

    public init(hostAddress: String? = nil, hostPort: Int, guestPort: Int) {
        self.hostAddress = hostAddress
        self.hostPort = hostPort
        self.guestPort = guestPort
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case hostAddress = "host_address"
        case hostPort = "host_port"
        case guestPort = "guest_port"
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "a port forward")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            hostAddress: try container.decodeIfPresent(String.self, forKey: .hostAddress),
            hostPort: try container.decode(Int.self, forKey: .hostPort), guestPort: try container.decode(Int.self, forKey: .guestPort))
    }
}

/// Where the guest's serial console (COM1) goes.
public struct ConsoleConfig: Codable, Equatable, Sendable {
    public enum Output: String, Codable, CaseIterable, Sendable {
        /// This process's standard output (and input).
        case stdio
        /// Appended to `path`; no input.
        case file
        /// Nowhere (still counted).
        case none
    }

    public var output: Output
    /// The file for `output: file`.
    public var path: String?
    /// A copy of everything the guest prints, appended to this file (libvirt's `<log file append>`).
    public var logPath: String?

    public init(output: Output = .stdio, path: String? = nil, logPath: String? = nil) {
        self.output = output
        self.path = path
        self.logPath = logPath
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case output, path
        case logPath = "log_path"
    }

    public init(from decoder: any Decoder) throws {
        try StrictKeys.check(decoder, allowed: CodingKeys.allCases.map(\.rawValue), in: "the console")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            output: try container.decodeIfPresent(Output.self, forKey: .output) ?? .stdio,
            path: try container.decodeIfPresent(String.self, forKey: .path),
            logPath: try container.decodeIfPresent(String.self, forKey: .logPath))
    }
}

/// Refuses keys a type does not know: Codable ignores them, which would let `"cpu": 4` for
/// `"cpus": 4` silently mean one vCPU.
enum StrictKeys {
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    static func check(_ decoder: any Decoder, allowed: [String], in place: String) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        for key in container.allKeys where !allowed.contains(key.stringValue) {
            throw DecodingError.dataCorrupted(
                DecodingError.Context(
                    codingPath: decoder.codingPath + [key],
                    debugDescription: "unknown field '\(key.stringValue)' in \(place) (known: \(allowed.joined(separator: ", ")))"))
        }
    }
}
