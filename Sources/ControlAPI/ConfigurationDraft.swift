import VMConfig

/// A `VMConfiguration` being put together before start, which may still lack its boot source
/// (Firecracker's flow: `PUT /machine-config`, `/drives/…` and `/boot-source` in any order, then
/// `InstanceStart`). Everything but the boot source has the CLI's default until a request sets it.
public struct ConfigurationDraft: Sendable, Equatable {
    public var boot: BootSource?
    /// nil: the default for the boot source (`VMConfiguration.defaultLinuxMemory` for Linux).
    public var memoryBytes: Int?
    public var cpus: Int
    public var disks: [DiskConfig]
    /// The disk `PUT /drives` marked `is_root_device`: it becomes the first disk (`/dev/vda`) and the
    /// command line gets `root=/dev/vda` (with `ro` or `rw`), as Firecracker does.
    public var rootDriveID: String?
    public var networkInterfaces: [NetworkInterfaceConfig]
    /// What the API does not set, kept from the configuration the draft was made from.
    public var name: String?
    public var cpuFeatures: [String]
    public var pit: PITModel
    public var acpi: Bool
    public var console: ConsoleConfig
    public var onPowerOff: LifecycleAction
    public var onReboot: LifecycleAction
    public var onCrash: LifecycleAction

    /// An empty draft (`swiftkvm serve`): no boot source, the CLI's defaults for the rest.
    public init(name: String? = nil, console: ConsoleConfig = ConsoleConfig()) {
        let defaults = VMConfiguration(boot: .linux(LinuxBootSource(kernel: "")))
        self.init(defaults)
        self.name = name
        self.console = console
        boot = nil
        memoryBytes = nil
    }

    /// The draft of a whole configuration, as `makeConfiguration()` gives it back.
    public init(_ configuration: VMConfiguration) {
        boot = configuration.boot
        memoryBytes = configuration.memoryBytes
        cpus = configuration.cpus
        disks = configuration.disks
        rootDriveID = nil
        networkInterfaces = configuration.networkInterfaces
        name = configuration.name
        cpuFeatures = configuration.cpuFeatures
        pit = configuration.pit
        acpi = configuration.acpi
        console = configuration.console
        onPowerOff = configuration.onPowerOff
        onReboot = configuration.onReboot
        onCrash = configuration.onCrash
    }

    /// The guest RAM it will have.
    public var effectiveMemoryBytes: Int {
        if let memoryBytes { return memoryBytes }
        if case .firmware = boot { return VMConfiguration.defaultFirmwareMemory }
        return VMConfiguration.defaultLinuxMemory
    }

    /// The configuration to start: needs a boot source; checked with `VMConfiguration.validate()`.
    public func makeConfiguration() throws(ControllerError) -> VMConfiguration {
        guard let boot else { throw .invalid("the VM has no boot source yet: PUT /boot-source first") }
        let configuration = assemble(boot: boot)
        do {
            try configuration.validate()
        } catch {
            throw .invalid("the configuration is not valid: \(error)")
        }
        return configuration
    }

    /// Checks what can be checked without a boot source (with a stand-in Linux kernel in its place),
    /// so `PUT /machine-config` with 0 vCPUs fails at once, not at `InstanceStart`.
    public func validate() throws(ControllerError) {
        let configuration = assemble(boot: boot ?? .linux(LinuxBootSource(kernel: "(no boot source yet)")))
        do {
            try configuration.validate()
        } catch {
            throw .invalid("the configuration is not valid: \(error)")
        }
    }

    private func assemble(boot: BootSource) -> VMConfiguration {
        var disks = disks
        var boot = boot
        if let rootDriveID, let index = disks.firstIndex(where: { $0.id == rootDriveID }) {
            let root = disks.remove(at: index)
            disks.insert(root, at: 0)
            if case .linux(var linux) = boot, !linux.commandLine.split(separator: " ").contains(where: { $0.hasPrefix("root=") }) {
                linux.commandLine += " root=/dev/vda " + (root.readOnly ? "ro" : "rw")
                boot = .linux(linux)
            }
        }
        return VMConfiguration(
            name: name, boot: boot, memoryBytes: effectiveMemoryBytes, cpus: cpus, cpuFeatures: cpuFeatures, pit: pit, acpi: acpi,
            disks: disks, networkInterfaces: networkInterfaces, console: console, onPowerOff: onPowerOff, onReboot: onReboot,
            onCrash: onCrash)
    }
}
