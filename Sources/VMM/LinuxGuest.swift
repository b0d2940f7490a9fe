import ACPI
import Devices
import Dispatch
import Glibc
import KVM
import KernelDecompression
import LinuxBoot
import Synchronization
import VMConfig
import VMMCore
import Virtio

/// Which 8254 PIT the guest gets.
public enum PITChoice: String, CaseIterable, Sendable {
    /// KVM's in-kernel PIT (KVM_CREATE_PIT2): no exits for timer ports or ticks. The default.
    case kvm
    /// `PIT8254`, emulated in this process, driven by a timer thread.
    case emulated
}

/// How to boot a Linux guest.
public struct LinuxGuestConfiguration: Sendable {
    public var kernelPath: String
    public var initrdPath: String?
    public var commandLine: String
    public var memorySize: Int
    public var cpus: Int
    public var pit: PITChoice
    /// Which entry point the kernel is started at: `.direct` (host-side decompression) by default.
    public var entry: LinuxBootEntry
    public var cpuid: CPUIDPolicy
    /// virtio-blk disks, in order: /dev/vda, /dev/vdb, …
    public var disks: [DiskConfiguration]
    /// virtio-net interfaces, in order (eth0, eth1, …), on virtio-mmio after the disks.
    public var networkInterfaces: [NetworkInterfaceConfig] = []
    /// Where to write one line per exit (`--trace`); nil for none.
    public var trace: ExitTrace?
    /// Whether the guest gets ACPI tables (RSDP, XSDT, FADT, MADT, DSDT), as distribution kernels
    /// need to find their CPUs, their virtio-mmio disks and the power-off register. The MP table
    /// and the `virtio_mmio.device=` words, for kernels built without ACPI, are there either way.
    public var acpi: Bool
    /// After this long the vCPUs are kicked and the outcome is `.timedOut`; nil runs until the guest ends.
    public var timeLimit: Duration?

    /// The serial console on COM1, `reboot=k` so a guest reboot reaches the i8042 and ends the VM,
    /// `panic=-1` so a panic reboots at once instead of hanging.
    public static let defaultCommandLine = "console=ttyS0 reboot=k panic=-1"
    public static let defaultMemorySize = 256 << 20

    public init(
        kernelPath: String, initrdPath: String? = nil, commandLine: String = LinuxGuestConfiguration.defaultCommandLine,
        memorySize: Int = LinuxGuestConfiguration.defaultMemorySize, cpus: Int = 1, pit: PITChoice = .kvm,
        entry: LinuxBootEntry = .direct, cpuid: CPUIDPolicy = CPUIDPolicy(), disks: [DiskConfiguration] = [],
        trace: ExitTrace? = nil, acpi: Bool = true, timeLimit: Duration? = nil
    ) {
        self.kernelPath = kernelPath
        self.initrdPath = initrdPath
        self.commandLine = commandLine
        self.memorySize = memorySize
        self.cpus = cpus
        self.pit = pit
        self.entry = entry
        self.cpuid = cpuid
        self.disks = disks
        self.trace = trace
        self.acpi = acpi
        self.timeLimit = timeLimit
    }
}

/// A Linux guest: a bzImage loaded by the x86 boot protocol into a machine with the in-kernel
/// interrupt controllers, a 16550A on COM1, an 8254 PIT, an i8042 for `reboot=k`, and virtio-blk
/// disks on virtio-mmio (announced with `virtio_mmio.device=` on the command line).
public final class LinuxGuest: @unchecked Sendable {
    public let configuration: LinuxGuestConfiguration
    public let machine: Machine
    /// COM1: guest output goes to the `console` closure, `serial.enqueueInput` feeds the guest.
    public let serial: Serial16550
    /// Where the loader put the kernel, initrd and zero page (nil for a guest restored from a
    /// snapshot: nothing was loaded).
    public let bootInfo: LinuxBootInfo?
    /// The entry the kernel was started at, and a line about it when that is not the one asked for.
    public let entry: LinuxBootEntry
    public let bootNote: String?
    /// The virtio-blk devices, in --disk order, and where each sits.
    public let disks: [(device: VirtioBlock, location: VirtioMMIODeviceDescription)]
    /// The command line the kernel was given: the user's, plus the virtio-mmio devices.
    public let commandLine: String
    /// What the firmware tables (ACPI and MP) describe.
    public let platformDescription: PlatformDescription
    /// The ACPI PM1 event block with its fixed power button (nil on a hardware-reduced platform).
    public let powerEvents: PowerManagementEvents?
    /// The keyboard controller: `reboot=k` resets through it, Ctrl-Alt-Del is typed into it.
    public let keyboardController: I8042
    private let emulatedPIT: PIT8254?
    private let pitTimer: PITTimer?
    /// The event loop the emulated PIT's timer lives on: the caller's, or one of the guest's own
    /// that `run` starts and stops.
    private let events: EventLoop
    private let ownsEvents: Bool
    private let diskRunners: [VirtioDeviceRunner]
    /// The virtio-net devices, in order, with their backends and workers.
    public var networkDevices: [VirtioNet] { nics.map(\.device) }
    private let nics: [(device: VirtioNet, attachment: NetworkAttachment, runner: VirtioDeviceRunner)]
    private let clock = MonotonicClock()
    /// The disk files and NIC attachments, this guest's own or kept by the caller across boots.
    private let hostDevices: LinuxHostDevices
    private let ownsHostDevices: Bool
    private let stuck = Atomic<Bool>(false)
    /// After `run`: a disk's or NIC's I/O thread did not end in time (it is still in a request).
    /// Its file stays open, and kept host devices must not serve another boot.
    public var hostDevicesStuck: Bool { stuck.load(ordering: .acquiring) }

    /// Everything up to the first instruction: files read and checked, memory laid out, kernel,
    /// initrd, command line and zero page loaded, devices placed, vCPUs created and set.
    ///
    /// `memory`, when given, is the RAM of an earlier boot of the same configuration, kept across
    /// a reset as a PC keeps it (it must have the size the configuration asks for).
    ///
    /// `events` is the VMM's event loop, already running, that the emulated PIT's timer joins; the
    /// guest makes (and `run` runs) one of its own when it is nil.
    ///
    /// `hostDevices`, when given, are the disk files and NIC attachments of an earlier boot of the
    /// same configuration, kept open across a reset (the caller closes them); without, the guest
    /// opens its own and closes them when `run` returns.
    ///
    /// With `snapshot`, this is the builder's second entry (Firecracker's build from a snapshot):
    /// `memory` is the snapshot's mapped RAM, which holds the kernel, its tables and everything the
    /// guest did, so no file but the disks is read and nothing is loaded; the same devices are
    /// placed on the same ports and addresses, and then KVM's state and the devices' are restored
    /// (`restore(from:)` for the order).
    public init(
        _ configuration: LinuxGuestConfiguration, memory reused: GuestMemory? = nil, events loop: EventLoop? = nil,
        hostDevices kept: LinuxHostDevices? = nil, console: @escaping (UInt8) -> Void, restoring snapshot: MachineSnapshot? = nil
    ) throws(VMMError) {
        if let loop {
            events = loop
            ownsEvents = false
        } else {
            events = try EventLoop()
            ownsEvents = true
        }
        let milestones = BootMilestones()
        self.configuration = configuration
        guard configuration.memorySize > 0, configuration.memorySize % 4096 == 0 else {
            throw .configuration("guest memory must be a positive multiple of 4 KiB, not \(configuration.memorySize) bytes")
        }
        guard configuration.cpus >= 1 else { throw .configuration("--cpus must be at least 1") }

        if snapshot != nil {
            guard reused != nil else { throw .configuration("restoring a snapshot needs its memory file mapped") }
            guard configuration.networkInterfaces.isEmpty else {
                throw .configuration("snapshots of guests with network interfaces are not supported yet")
            }
        }
        let kernel = try snapshot == nil
            ? BootKernel(
                bytes: try readHostFile(configuration.kernelPath), name: configuration.kernelPath, entry: configuration.entry,
                cache: DecompressedKernelCache(directory: DecompressedKernelCache.defaultDirectory)) : nil
        (entry, bootNote) = (kernel?.entry ?? configuration.entry, kernel?.note)
        var initrd: [UInt8]?
        if snapshot == nil, let path = configuration.initrdPath { initrd = try readHostFile(path) }
        let virtioCount = configuration.disks.count + configuration.networkInterfaces.count
        let host: LinuxHostDevices
        if let kept {
            guard kept.storages.count == configuration.disks.count, kept.attachments.count == configuration.networkInterfaces.count else {
                throw .configuration("the kept host devices do not match the configuration's disks and network interfaces")
            }
            host = kept
        } else {
            host = try LinuxHostDevices(configuration)
        }
        // On a later error: the caller closes its own; ours close when `host` goes (their deinits).
        hostDevices = host
        ownsHostDevices = kept == nil
        let storages = host.storages
        let attachments = host.attachments
        let locations = (0..<virtioCount).compactMap(VirtioMMIOLayout.device)
        let fullCommandLine = ([configuration.commandLine] + locations.map(\.commandLineArgument)).filter { !$0.isEmpty }
            .joined(separator: " ")
        var commandLine: KernelCommandLine?
        if let kernel {
            do { commandLine = try KernelCommandLine(fullCommandLine, maximumLength: Int(kernel.commandLineSize)) } catch {
                throw .configuration(error.description)
            }
        }
        self.commandLine = fullCommandLine

        let system: KVMSystem
        let supported: [CPUIDEntry]
        do {
            system = try HostKVM.system()
            supported = try HostKVM.supportedCPUID()
        } catch {
            throw .kvm(error)
        }
        try system.checkVCPUCount(configuration.cpus)

        let memory: GuestMemory
        if let reused {
            guard reused.size == configuration.memorySize else {
                throw .configuration("the kept guest RAM has \(reused.size) bytes, the configuration asks for \(configuration.memorySize)")
            }
            memory = reused
        } else {
            do { memory = try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: configuration.memorySize)) } catch {
                throw .memory(error)
            }
        }
        let platform = PlatformDescription(
            cpuCount: configuration.cpus,
            virtioMMIODevices: locations.map { VirtioMMIOWindow(base: $0.base, size: $0.size, irq: $0.irq) })
        let entryLayout = LinuxEntryLayout(entry: entry)
        if let kernel, let commandLine {
            let bootInfo: LinuxBootInfo
            do {
                bootInfo = try kernel.load(
                    initrd: initrd, commandLine: commandLine, memory: memory,
                    reserved: [
                        GuestAddress(LinuxEntryLayout.gdtAddress)..<GuestAddress(LinuxEntryLayout.gdtAddress + 32),
                        GuestAddress(LinuxEntryLayout.pageTablesAddress)..<GuestAddress(
                            LinuxEntryLayout.pageTablesAddress + UInt64(IdentityPaging.size)),
                    ])
                try entryLayout.install(in: memory)
            } catch let error as LinuxBootError {
                throw .configuration(error.description)
            } catch let error as GuestMemoryError {
                throw .memory(error)
            } catch {
                throw .configuration("\(error)")
            }

            // The firmware tables: the MP table always, ACPI unless turned off (then the kernel finds no
            // RSDP, neither through the zero page nor by scanning the BIOS area, which stays zero).
            // No i8042 in the FADT's boot flags: Linux then does not probe one whose AUX IRQ 12 may be a
            // disk's; `reboot=k` still resets through port 0x64, which needs no driver.
            do {
                let tables = try FirmwareTables(description: platform)
                try tables.write(to: memory)
                if configuration.acpi {
                    try memory.store(tables.rsdpAddress.rawValue, at: GuestAddress(bootInfo.zeroPage.rawValue + UInt64(BootParams.Offset.acpiRsdpAddr)))
                    if kernel.entry == .pvh { try memory.store(tables.rsdpAddress.rawValue, at: GuestAddress(PVHStartInfo.address.rawValue + PVHStartInfo.rsdpOffset)) }
                } else {
                    for table in tables.acpiTables { try memory.fill(0, count: table.bytes.count, at: table.address) }
                }
            } catch let error as FirmwareTableError {
                throw .configuration(error.description)
            } catch let error as GuestMemoryError {
                throw .memory(error)
            } catch {
                throw .configuration("\(error)")
            }
            self.bootInfo = bootInfo
        } else {
            bootInfo = nil
        }
        platformDescription = platform

        machine = try Machine(system: system, memory: memory, milestones: milestones)
        machine.trace = configuration.trace
        let vm = machine.vm
        do {
            try vm.createInterruptController()
            if configuration.pit == .kvm { try vm.createInKernelPIT() }
        } catch {
            throw .kvm(error)
        }

        let panics = PanicWatcher()
        serial = Serial16550(interrupt: KVMInterruptLine(vm: vm, gsi: Serial16550.com1IRQ)) { byte in
            milestones.record(.firstConsoleByte)
            panics.observe(byte)
            console(byte)
        }
        try machine.addPortDevice(serial, at: Serial16550.com1, count: Serial16550.portCount)
        try machine.addPortDevice(
            MilestonePort { value in if value == MilestonePort.userspaceReady { milestones.record(.userspaceReady) } },
            at: MilestonePort.port)
        let keyboardController = I8042(interrupt: KVMInterruptLine(vm: vm, gsi: I8042.keyboardIRQ)) { [unowned machine] in
            // reboot=k pulses the reset line several times; the first request wins. A reset that
            // follows a panic message is the panic=N reboot of a kernel without pvpanic.
            machine.requestStop(panics.message.map { .panicked(message: $0) } ?? .rebooted)
        }
        try machine.addPortDevice(
            PanicPort { [unowned machine] in machine.requestStop(.panicked(message: panics.message)) }, at: PanicPort.port)
        // ACPI power management, where the FADT says it is: power-off ends the run as .poweredOff.
        let power = platform.power
        let powerOff = { [unowned machine] in machine.requestStop(.poweredOff) }
        switch power.model {
        case .fixedHardware(let eventPort, let controlPort, let sciIRQ):
            // PM1_STS, PM1_EN: the fixed power button, raising the SCI.
            let events = PowerManagementEvents(sci: KVMInterruptLine(vm: vm, gsi: UInt32(sciIRQ)))
            try machine.addPortDevice(events, at: eventPort, count: 4)
            powerEvents = events
            try machine.addPortDevice(
                PowerControlPort(readValue: PowerManagement.pm1ControlSCIEnable, isPowerOff: power.isPowerOff, onPowerOff: powerOff),
                at: controlPort, count: 2)
        case .hardwareReduced(let controlPort, let statusPort):
            powerEvents = nil
            try machine.addPortDevice(PowerControlPort(isPowerOff: power.isPowerOff, onPowerOff: powerOff), at: controlPort)
            try machine.addPortDevice(ZeroPort(), at: statusPort)
        }
        self.keyboardController = keyboardController
        try machine.addPortDevice(keyboardController.dataPort, at: I8042.dataPortAddress)
        try machine.addPortDevice(keyboardController.commandPort, at: I8042.commandPortAddress)
        if configuration.pit == .emulated {
            let timer = try PITTimer(clock: clock, loop: events)
            let pit = PIT8254(clock: clock, interruptLine: KVMInterruptLine(vm: vm, gsi: PIT8254.irq)) { [weak timer] in
                timer?.rearm()
            }
            timer.attach(pit)
            machine.addWorker(timer)
            pitTimer = timer
            try machine.addPortDevice(pit, at: PIT8254.basePort, count: PIT8254.portCount)
            try machine.addPortDevice(pit.speakerPort, at: PIT8254.speakerControlPort)
            emulatedPIT = pit
        } else {
            emulatedPIT = nil
            pitTimer = nil
        }

        var disks: [(device: VirtioBlock, location: VirtioMMIODeviceDescription)] = []
        var runners: [VirtioDeviceRunner] = []
        for (index, storage) in storages.enumerated() {
            let device = VirtioBlock(storage: storage, identifier: "swiftkvm-vd\(Character(UnicodeScalar(UInt8(97 + index))))")
            runners.append(try VirtioDeviceRunner(device: device, name: "virtio-blk\(index)", at: locations[index], in: machine))
            disks.append((device, locations[index]))
        }
        self.disks = disks
        diskRunners = runners
        var nics: [(device: VirtioNet, attachment: NetworkAttachment, runner: VirtioDeviceRunner)] = []
        for (index, attachment) in attachments.enumerated() {
            let (device, runner) = try attachment.makeRunner(at: locations[disks.count + index], index: index, in: machine)
            nics.append((device, attachment, runner))
        }
        self.nics = nics

        var cpuid = configuration.cpuid
        cpuid.tscDeadlineTimer = system.checkExtension(KVMCapability.tscDeadlineTimer) > 0
        if let snapshot {
            try restore(from: snapshot) { index in cpuid.entries(from: supported, vcpu: UInt32(index), of: UInt32(configuration.cpus)) }
            return
        }
        guard let kernel, let bootInfo else { throw .configuration("no kernel was loaded") }
        for index in 0..<configuration.cpus {
            let entries = cpuid.entries(from: supported, vcpu: UInt32(index), of: UInt32(configuration.cpus))
            let vcpu = try machine.addVCPU(cpuid: entries)
            do {
                try vcpu.setMSRs(Self.bootMSRs)
                // LINT0 delivers the 8259 PIC's interrupts (ExtINT), LINT1 NMIs: the wiring of a PC,
                // which Linux assumes when it finds no MP table saying otherwise.
                try vcpu.modifyLocalAPIC { registers in
                    Self.setLVT(&registers, offset: 0x350, deliveryMode: 0b111)
                    Self.setLVT(&registers, offset: 0x360, deliveryMode: 0b100)
                }
                if index == 0 {
                    let (registers, special) = entryLayout.cpuState(
                        entry: kernel.entryAddress(bootInfo), zeroPage: bootInfo.zeroPage.rawValue,
                        from: try vcpu.specialRegisters())
                    try vcpu.setSpecialRegisters(special)
                    try vcpu.setRegisters(registers)
                }
                // Application processors stay in the wait-for-SIPI state the in-kernel LAPIC gives them.
            } catch {
                throw .kvm(error)
            }
        }
    }

    // MARK: - Snapshots

    /// Every emulated device's state, named as on the bus, for a snapshot of the paused machine
    /// (the disks' I/O workers are paused between requests, so nothing is in flight).
    public func deviceStates() throws(SnapshotError) -> [MachineSnapshot.DeviceStateRecord] {
        guard nics.isEmpty else { throw .notApplicable("snapshots of guests with network interfaces are not supported yet") }
        var records: [MachineSnapshot.DeviceStateRecord] = [
            .init(name: "COM1", state: serial.exportState()), .init(name: "i8042", state: keyboardController.exportState()),
        ]
        if let powerEvents { records.append(.init(name: "PM1", state: powerEvents.exportState())) }
        if let emulatedPIT { records.append(.init(name: "PIT", state: emulatedPIT.exportState())) }
        for (index, runner) in diskRunners.enumerated() {
            records.append(.init(name: "virtio-blk\(index)", state: runner.transport.exportState()))
            records.append(.init(name: "virtio-blk\(index)-disk", state: disks[index].device.exportState()))
        }
        return records
    }

    /// The second entry's last step, in KVM's order:
    /// 1. The VM's in-kernel state (PIC, IOAPIC, PIT, clock), right after KVM_CREATE_IRQCHIP and
    ///    KVM_CREATE_PIT2 and before any vCPU: the IOAPIC's routes and the PIT must be in place
    ///    for the interrupts the local APICs then hold.
    /// 2. Each vCPU (`VCPU.restoreState` has the order inside one).
    /// 3. The devices last: importing raises their pending interrupt lines again (KVM_IRQ_LINE),
    ///    which must reach the restored irqchip and APICs, not be overwritten by them.
    private func restore(from snapshot: MachineSnapshot, offered: (Int) -> [CPUIDEntry]) throws(VMMError) {
        do throws(SnapshotError) {
            guard snapshot.vcpus.count == configuration.cpus else {
                throw .format(.impossible("\(snapshot.vcpus.count) vCPU states for a VM of \(configuration.cpus) vCPUs"))
            }
            try machine.restoreKernelState(snapshot.vm)
            try machine.restoreVCPUs(snapshot.vcpus, offered: offered)
            var expected: [(String, ([UInt8]) throws(StateFormatError) -> Void)] = [
                ("COM1", serial.importState), ("i8042", keyboardController.importState),
            ]
            if let powerEvents { expected.append(("PM1", powerEvents.importState)) }
            if let emulatedPIT { expected.append(("PIT", emulatedPIT.importState)) }
            for (index, runner) in diskRunners.enumerated() {
                expected.append(("virtio-blk\(index)", runner.transport.importState))
                expected.append(("virtio-blk\(index)-disk", disks[index].device.importState))
            }
            guard snapshot.devices.map(\.name) == expected.map(\.0) else {
                throw .format(.impossible("devices \(snapshot.devices.map(\.name)) where this VM has \(expected.map(\.0))"))
            }
            for (record, (name, importer)) in zip(snapshot.devices, expected) {
                do { try importer(record.state) } catch { throw .format(.impossible("\(name): \(error.description)")) }
            }
            for runner in diskRunners { runner.notifyEveryQueue() }
        } catch {
            throw .snapshot(error)
        }
    }

    /// MSRs a BIOS would have set: fast string operations on, MTRRs enabled with write-back default.
    static let bootMSRs: [(index: UInt32, value: UInt64)] = [
        (0x1A0, 1),  // IA32_MISC_ENABLE: fast-string enable
        (0x2FF, 1 << 11 | 6),  // IA32_MTRR_DEF_TYPE: MTRRs on, default type write-back
    ]

    /// Sets the delivery mode (bits 10:8) of a local-APIC LVT entry and unmasks it.
    static func setLVT(_ registers: inout [UInt8], offset: Int, deliveryMode: UInt32) {
        guard offset + 4 <= registers.count else { return }
        var value = UInt32(registers[offset]) | UInt32(registers[offset + 1]) << 8 | UInt32(registers[offset + 2]) << 16
            | UInt32(registers[offset + 3]) << 24
        value = (value & ~0x0001_0700) | deliveryMode << 8
        for byte in 0..<4 { registers[offset + byte] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(byte))) }
    }

    /// Runs the guest until it ends (reboot, shutdown, a stop request) or the time limit passes.
    ///
    /// When it returns, every disk's I/O thread has finished and each disk file has been synced
    /// and closed: whatever the guest wrote is on the host.
    ///
    /// With `paused`, the vCPUs start parked (`Machine.resume()` lets them go).
    public func run(paused: Bool = false) throws(VMMError) -> RunReport {
        BootKernel.releaseFreedMemory()  // the kernel image and any decompression buffer are gone by now
        if ownsEvents { try events.start() }
        defer {
            pitTimer?.stop()
            if ownsEvents { events.stop() }
        }
        defer {
            // Every device's thread at once (each gets the same deadline). A disk or NIC whose I/O
            // thread is stuck in a request is left open: closing could hand its descriptor number to
            // another file while that request still uses it.
            let ended = VirtioDeviceRunner.stop(diskRunners + nics.map(\.runner))
            if ended.contains(false) { stuck.store(true, ordering: .releasing) }
            if ownsHostDevices {
                for (disk, done) in zip(disks, ended.prefix(disks.count)) where done {
                    (disk.device.storage as? FileBlockStorage)?.close()
                }
                for (nic, done) in zip(nics, ended.dropFirst(disks.count)) where done {
                    nic.attachment.close()
                }
            } else {
                // Kept open for the next boot; what the guest wrote is on the host all the same.
                for disk in disks { try? (disk.device.storage as? FileBlockStorage)?.flush() }
            }
        }
        for runner in diskRunners { try runner.start() }
        for nic in nics { try nic.runner.start() }
        return try machine.run(timeLimit: configuration.timeLimit, paused: paused)
    }
}

/// The host side of a Linux VM's devices, which outlives a boot: its disk files and its NICs
/// backends (a tap, or passt). Opened before the machine is built, so that a missing or locked
/// disk, a missing tap, a missing passt or a taken port is reported before boot. A `VMInstance`
/// keeps them across resets, as a PC keeps its disks: nothing is opened again (which the seccomp
/// filter of a VM that can be rebuilt would not allow) and no write is between two files.
public final class LinuxHostDevices: @unchecked Sendable {
    // @unchecked: immutable after init; storages and attachments have their own rules.
    let storages: [FileBlockStorage]
    let attachments: [NetworkAttachment]

    public init(_ configuration: LinuxGuestConfiguration) throws(VMMError) {
        let virtioCount = configuration.disks.count + configuration.networkInterfaces.count
        guard virtioCount <= VirtioMMIOLayout.interrupts.count else {
            throw .configuration("at most \(VirtioMMIOLayout.interrupts.count) disks and network interfaces are supported, not \(virtioCount)")
        }
        var storages: [FileBlockStorage] = []
        for disk in configuration.disks {
            do { storages.append(try FileBlockStorage(path: disk.path, readOnly: disk.readOnly)) } catch {
                for storage in storages { storage.close() }
                throw .configuration(error.description)
            }
        }
        var attachments: [NetworkAttachment] = []
        for (index, interface) in configuration.networkInterfaces.enumerated() {
            do { attachments.append(try NetworkAttachment(interface, index: index)) } catch {
                for attachment in attachments { attachment.close() }
                for storage in storages { storage.close() }
                throw error
            }
        }
        self.storages = storages
        self.attachments = attachments
    }

    /// Syncs and closes the disks, ends passt and closes the NICs. Call once, when no boot uses them.
    public func close() {
        for storage in storages { storage.close() }
        for attachment in attachments { attachment.close() }
    }
}

/// Watches the console for Linux's panic line ("Kernel panic - not syncing: …") and keeps it.
final class PanicWatcher: @unchecked Sendable {
    // @unchecked: mutable state is in `state`, a Mutex.
    static let marker = Array("Kernel panic - not syncing: ".utf8)
    private let state = Mutex<(matched: Int, line: [UInt8], message: String?)>((0, [], nil))

    /// The text after the panic marker (up to the end of its line), once the marker was seen.
    var message: String? {
        state.withLock { state in
            state.message ?? (state.matched == Self.marker.count ? String(decoding: state.line, as: UTF8.self) : nil)
        }
    }

    func observe(_ byte: UInt8) {
        state.withLock { state in
            guard state.message == nil else { return }
            if state.matched == Self.marker.count {
                if byte == 0x0A || byte == 0x0D || state.line.count >= 512 {
                    state.message = String(decoding: state.line, as: UTF8.self)
                } else {
                    state.line.append(byte)
                }
                return
            }
            if byte == Self.marker[state.matched] {
                state.matched += 1
            } else {
                state.matched = byte == Self.marker[0] ? 1 : 0
            }
        }
    }
}

/// An interrupt controller input in KVM: KVM_IRQ_LINE on a GSI (below 16, both the PIC and the IOAPIC pin).
final class KVMInterruptLine: InterruptLine {
    let vm: VirtualMachine
    let gsi: UInt32

    init(vm: VirtualMachine, gsi: UInt32) {
        self.vm = vm
        self.gsi = gsi
    }

    func setLevel(_ high: Bool) {
        // KVM_IRQ_LINE fails only for a GSI the irqchip lacks, which the constants here rule out;
        // there is nobody to report to from inside a device, so a failure leaves the line as it was.
        try? vm.setInterruptLine(gsi, high: high)
    }
}

/// CLOCK_MONOTONIC, in nanoseconds, for devices.
final class MonotonicClock: GuestClock, @unchecked Sendable {
    var nanoseconds: UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

/// Drives an emulated PIT from the VMM's event loop: a timerfd armed at the PIT's own next
/// deadline, re-armed after each expiry and whenever the guest reprograms Counter 0 (the PIT's
/// `onDeadlineChange`, on the vCPU thread). No thread of its own, no polling sleeps.
final class PITTimer: PausableWorker, @unchecked Sendable {
    // @unchecked: `paused` is a Mutex that also orders expiries against pause(); the rest is immutable.
    let clock: MonotonicClock
    private let timer: TimerFD
    private let loop: EventLoop
    private let pit = Mutex<PIT8254?>(nil)
    private let paused = Mutex(false)

    init(clock: MonotonicClock, loop: EventLoop) throws(VMMError) {
        self.clock = clock
        self.loop = loop
        timer = try TimerFD()
        try loop.add(timer.descriptor) { [weak self] _ in self?.expired() }
    }

    deinit { loop.remove(timer.descriptor) }

    /// The PIT to drive (made after this timer: the PIT's `onDeadlineChange` calls `rearm`).
    func attach(_ device: PIT8254) {
        pit.withLock { $0 = device }
        rearm()
    }

    /// Arms the timer for the PIT's next deadline (or disarms it when there is none). Any thread.
    func rearm() {
        paused.withLock { isPaused in
            guard !isPaused, let device = pit.withLock({ $0 }) else { return }
            timer.arm(at: device.nextDeadline)
        }
    }

    private func expired() {
        timer.consume()
        paused.withLock { isPaused in
            guard !isPaused, let device = pit.withLock({ $0 }) else { return }
            device.advance(to: clock.nanoseconds)
            timer.arm(at: device.nextDeadline)
        }
    }

    /// Once this returns the PIT raises no more ticks: the guest's timer stands still with its vCPUs.
    func pause() {
        paused.withLock { isPaused in
            isPaused = true
            timer.arm(at: nil)
        }
    }

    func resume() {
        paused.withLock { $0 = false }
        rearm()
    }

    /// The run is over: no more expiries.
    func stop() {
        pause()
        loop.remove(timer.descriptor)
    }
}
