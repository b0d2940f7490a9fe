import Glibc
import VMConfig

/// How a run is watched, kept apart from what the VM is (`VMConfiguration`): the same VM can be
/// traced in one run and not the next.
public struct RunPolicy: Sendable {
    /// Where to write one line per exit; nil for none.
    public var trace: ExitTrace?
    /// After this long the vCPUs are kicked and the outcome is `.timedOut`; nil runs until the guest ends.
    public var timeLimit: Duration?

    public init(trace: ExitTrace? = nil, timeLimit: Duration? = nil) {
        self.trace = trace
        self.timeLimit = timeLimit
    }
}

extension VMConfiguration {
    /// `validate()`, then the checks that need the host: the host's RAM and the CPU feature names
    /// this VMM knows. Errors are `VMMError.configuration`, worded without command-line flags.
    public func validateForHost() throws(VMMError) {
        do { try validate() } catch { throw .configuration(error.description) }
        let hostMemory = Int(sysconf(Int32(_SC_PHYS_PAGES))) &* Int(sysconf(Int32(_SC_PAGESIZE)))
        if hostMemory > 0, memoryBytes > hostMemory {
            throw .configuration(
                "memory_bytes \(memoryBytes) (\(CommandLineValues.describe(size: memoryBytes))) is more than this host's \(CommandLineValues.describe(size: hostMemory)) of RAM")
        }
        _ = try cpuidPolicy()
    }

    /// The CPUID policy `cpu_features` describes.
    public func cpuidPolicy() throws(VMMError) -> CPUIDPolicy {
        do { return try CPUIDPolicy(parsing: cpuFeatures.joined(separator: ",")) } catch {
            throw .configuration("cpu_features: \(error.description.replacingFlag())")
        }
    }
}

extension LinuxGuestConfiguration {
    /// The Linux preset: what `LinuxGuest` needs, from a VM configuration whose boot source is a
    /// Linux kernel, and a run policy.
    public init(_ vm: VMConfiguration, policy: RunPolicy = RunPolicy()) throws(VMMError) {
        try vm.validateForHost()
        guard case .linux(let linux) = vm.boot else {
            throw .configuration("the VM boots firmware, not a Linux kernel")
        }
        guard let entry = LinuxBootEntry(rawValue: linux.entry) else {
            throw .configuration("boot.linux.entry '\(linux.entry)' is not a boot-protocol entry")
        }
        self.init(
            kernelPath: linux.kernel, initrdPath: linux.initrd, commandLine: linux.commandLine, memorySize: vm.memoryBytes,
            cpus: vm.cpus, pit: vm.pit == .kvm ? .kvm : .emulated, entry: entry, cpuid: try vm.cpuidPolicy(),
            disks: vm.disks.map { DiskConfiguration(path: $0.path, readOnly: $0.readOnly) }, trace: policy.trace,
            acpi: vm.acpi, timeLimit: policy.timeLimit)
        networkInterfaces = vm.networkInterfaces
    }
}

extension UnitGuest {
    /// The firmware preset: a unit guest from a VM configuration whose boot source is a flat binary.
    public init(_ vm: VMConfiguration, policy: RunPolicy = RunPolicy()) throws(VMMError) {
        guard case .firmware(let firmware) = vm.boot else {
            throw .configuration("the VM boots a Linux kernel, not firmware")
        }
        guard let mode = CPUMode(rawValue: firmware.mode) else {
            throw .configuration("boot.firmware.mode '\(firmware.mode)' is not a CPU mode")
        }
        try self.init(
            contentsOf: firmware.path, mode: mode, memorySize: vm.memoryBytes, loadAddress: GuestAddress(firmware.loadAddress),
            entry: firmware.entry.map { GuestAddress($0) }, timeLimit: policy.timeLimit)
        cpus = vm.cpus
        trace = policy.trace
        // The unit guest's own checks first: they say how the program, its entry and the memory fit.
        try validate()
        try vm.validateForHost()
    }
}

extension UnitGuest {
    /// A unit guest to restore from a snapshot of `vm`: its program is in the snapshot's memory
    /// file, so the firmware file is not read (it may be gone).
    public init(restoring vm: VMConfiguration, policy: RunPolicy = RunPolicy()) throws(VMMError) {
        guard case .firmware(let firmware) = vm.boot else { throw .configuration("the VM boots a Linux kernel, not firmware") }
        guard let mode = CPUMode(rawValue: firmware.mode) else {
            throw .configuration("boot.firmware.mode '\(firmware.mode)' is not a CPU mode")
        }
        self.init(
            program: [], mode: mode, memorySize: vm.memoryBytes, loadAddress: GuestAddress(firmware.loadAddress),
            entry: firmware.entry.map { GuestAddress($0) }, timeLimit: policy.timeLimit)
        cpus = vm.cpus
        trace = policy.trace
        try validate()
        do { try vm.validate() } catch { throw .configuration(error.description) }
    }
}

extension String {
    /// CPUIDPolicy's messages are worded for `--cpu-features`; the configuration field says it already.
    fileprivate func replacingFlag() -> String {
        var text = self
        for flag in ["--cpu-features: ", "--cpu-features "] where text.hasPrefix(flag) {
            text.removeFirst(flag.count)
        }
        return text
    }
}
