import ArgumentParser
import Dispatch
import Glibc
import Synchronization
import ControlAPI
import VMConfig
import VMM

/// `swiftkvm`: runs guests on /dev/kvm.
struct SwiftKVM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftkvm",
        abstract: "A KVM hypervisor written in Swift.",
        discussion: """
            Boots a Linux bzImage with its serial console on your terminal, or runs a flat firmware \
            binary in real, protected, long or user mode. See 'swiftkvm run --help'.
            """,
        subcommands: [
            Run.self, Serve.self, Import.self, Export.self, SnapshotCommand.self, RestoreCommand.self,
            // VMs you keep (Kept*.swift): a folder per VM, one `swiftkvm vmm` process per running VM.
            Create.self, Remove.self, Start.self, List.self, Info.self, Console.self, Logs.self, Events.self, Stop.self, Kill.self,
            Reboot.self, Pause.self, Resume.self, Wait.self, Autostart.self, KeptVMMCommand.self,
        ])
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a guest: a Linux kernel (--kernel) or a flat firmware binary (--firmware).",
        discussion: """
            Linux: the serial console (COM1) is your terminal. When standard input is a terminal it is \
            put in raw mode; press Ctrl-A then x to quit. When it is a pipe or a file, its bytes are \
            typed into the guest's console. Each --disk becomes a virtio-blk device on virtio-mmio, \
            announced to the kernel with virtio_mmio.device= on its command line.

            Firmware: bytes written to COM1 appear on standard output; a byte written to port 0xF4 ends \
            the guest and becomes the exit status; HLT ends it with status 0.

            Exit status: the firmware's debug-exit byte; 0 after a guest reboot, power-off, HLT or triple \
            fault (the reason is printed on standard error); 124 when --time-limit passes; 130/143 after \
            SIGINT/SIGTERM; 1 when the guest kernel panics or the guest or the VMM fails; 2 for bad input.

            Examples:
              swiftkvm run --kernel bzImage --initrd initrd.img --cmdline "console=ttyS0"
              swiftkvm run --kernel bzImage --disk rootfs.ext4 --cmdline "console=ttyS0 root=/dev/vda"
              swiftkvm run --firmware Firmware/build/hello-long.bin --mode long
            """)

    @Option(name: .long, help: ArgumentHelp("A Linux kernel to boot: a bzImage, or an uncompressed ELF vmlinux.", valueName: "file"))
    var kernel: String?

    @Option(name: .long, help: ArgumentHelp("An initramfs for the kernel.", valueName: "file"))
    var initrd: String?

    @Option(name: .long, help: ArgumentHelp("The kernel command line (default: \(LinuxBootSource.defaultCommandLine)).", valueName: "text"))
    var cmdline: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A disk image file for the guest, as virtio-blk: /dev/vda, then /dev/vdb, … (repeatable). Add ,readonly to keep the file unchanged; ,shareable lets other kept VMs open it too (they are refused otherwise).",
            valueName: "file[,readonly][,shareable]"))
    var disk: [String] = []

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A virtio-net interface (repeatable): tap=NAME on a host tap, or user for user-mode networking through passt, with hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT to forward host ports in. Add ,mac=MAC to choose its address.",
            valueName: "tap=NAME|user[,hostfwd=...][,mac=MAC]"))
    var net: [String] = []

    @Option(
        name: .long,
        help: "Number of vCPUs (default: 1). Linux starts the others itself (INIT/SIPI); --firmware starts on every one at its entry point.")
    var cpus: Int?

    @Option(name: .long, help: ArgumentHelp("Which 8254 PIT Linux gets: kvm (in-kernel, the default) or emulated.", valueName: "kvm|emulated"))
    var pit: String?

    @Option(name: .long, help: ArgumentHelp("Which entry Linux is started at: direct (the default: a bzImage is decompressed here and started like its vmlinux, in long mode), pvh (an ELF kernel's PVH entry, 32-bit), or a bzImage's own 64 (long mode) or 32 (code32_start) entry, where it decompresses itself.", valueName: "direct|pvh|64|32"))
    var bootEntry: String?

    // .unconditional: the value itself starts with '-', which must not read as another option.
    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("CPU features to hide from the guest, e.g. -xsave,-cx16.", valueName: "list"))
    var cpuFeatures: String?

    @Option(name: .long, help: ArgumentHelp("A flat binary to run instead of a kernel.", valueName: "file"))
    var firmware: String?

    @Option(name: .long, help: "Firmware: the CPU mode the guest starts in: real, protected, long (the default) or user.")
    var mode: String?

    @Option(name: .long, help: ArgumentHelp("Guest RAM, e.g. 256M, 1G (default: 256M for Linux, 2M for firmware).", valueName: "size"))
    var memory: String?

    @Option(name: .long, help: ArgumentHelp("Firmware: guest address the binary is copied to (default: 0).", valueName: "address"))
    var load: String?

    @Option(name: .long, help: ArgumentHelp("Firmware: guest address of the first instruction (default: the load address).", valueName: "address"))
    var entry: String?

    @Flag(name: .customLong("no-acpi"), help: "Give a Linux guest no ACPI tables (the MP table and virtio_mmio.device= words remain, for kernels built without ACPI).")
    var noACPI = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Run the VM a JSON file describes (as --print-config writes it), instead of the options above that describe a VM.",
            valueName: "file"))
    var config: String?

    @Flag(name: .long, help: "Print the VM's configuration as JSON on standard output and exit without running it.")
    var printConfig = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Answer the control API (HTTP/1.1 + JSON, docs/api.md) on this Unix socket while the VM runs; created mode 0600, removed on exit.",
            valueName: "path"))
    var apiSocket: String?

    @Flag(name: .long, help: "Start with the vCPUs paused, until the API resumes them (PATCH /vm {\"state\": \"Resumed\"}).")
    var paused = false

    @Option(name: .long, help: ArgumentHelp("Stop the guest after this many seconds (default: no limit).", valueName: "seconds"))
    var timeLimit: Double?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Keep the VM under this name: define it from the options (unless they are left out: then run its definition) and run it detached, with this terminal attached to its console (Ctrl-A d detaches; see 'swiftkvm create').",
            valueName: "name"))
    var name: String?

    @Flag(name: .long, help: "Print every exit, one line each (vCPU, reason, port or address, size, data, device), on standard error.")
    var trace = false

    @Option(name: .long, help: ArgumentHelp("Write the --trace lines to this file instead (implies --trace).", valueName: "file"))
    var traceFile: String?

    @Flag(name: .long, help: "At the end, print exits by reason and by device, time in KVM_RUN and in the VMM per vCPU, and boot milestones, on standard error.")
    var stats = false

    @Option(name: .long, help: ArgumentHelp("The seccomp filter: on (the default) allows the VMM only the system calls it needs once the guest runs; off is for debugging. A VM that can be rebuilt after a reset (an on_* action of restart, or --api-socket) may also read files and make a new KVM VM on the VMM's own threads; its vCPU and device threads get the strict list.", valueName: "on|off"))
    var seccomp: String = "on"

    func run() throws {
        if let name, !printConfig { return try KeptRun.run(self, name: name) }
        _ = try SharedOptions.seccomp(seccomp)
        let configuration = try config.map(Self.loadConfiguration) ?? configurationFromOptions()
        if config != nil { try checkNoVMOptions() }
        if printConfig {
            print(try ConfigurationFile.encode(configuration))
            return
        }
        let policy = RunPolicy(trace: try exitTrace(), timeLimit: try parsedTimeLimit())
        try runInstance(configuration, policy: policy)
    }

    /// The VM the options describe, with each bad option worded as the option.
    func configurationFromOptions() throws -> VMConfiguration {
        let boot: BootSource
        switch (kernel, firmware) {
        case (nil, nil): throw UsageError("nothing to run: give --kernel BZIMAGE (Linux) or --firmware FILE (a flat binary), or --config FILE")
        case (.some, .some): throw UsageError("give either --kernel or --firmware, not both")
        case (let kernel?, nil):
            if let entry = bootEntry, !LinuxBootSource.entries.contains(entry) {
                throw UsageError("--boot-entry must be direct, pvh, 64 or 32, not '\(entry)'")
            }
            boot = .linux(
                LinuxBootSource(
                    kernel: absolutePath(kernel), initrd: initrd.map(absolutePath), commandLine: cmdline ?? LinuxBootSource.defaultCommandLine,
                    entry: bootEntry ?? LinuxBootSource.defaultEntry))
        case (nil, let firmware?):
            let mode = mode ?? "long"
            guard FirmwareBootSource.modes.contains(mode) else {
                throw UsageError("--mode must be real, protected, long or user, not '\(mode)'")
            }
            let load = load ?? "0"
            guard let loadAddress = CommandLineValues.address(load) else {
                throw UsageError("--load '\(load)' is not an address: write it like 0x7c00 or 31744")
            }
            var entryAddress: UInt64?
            if let entry {
                guard let parsed = CommandLineValues.address(entry) else {
                    throw UsageError("--entry '\(entry)' is not an address: write it like 0x7c00 or 31744")
                }
                entryAddress = parsed
            }
            boot = .firmware(FirmwareBootSource(path: absolutePath(firmware), mode: mode, loadAddress: loadAddress, entry: entryAddress))
        }
        var configuration = VMConfiguration(boot: boot)
        if let size = try memorySize() { configuration.memoryBytes = size }
        if case .linux = boot, configuration.memoryBytes % 4096 != 0 { throw UsageError("--memory must be a multiple of 4 KiB") }
        if let cpus {
            guard cpus >= 1 else { throw UsageError("--cpus must be at least 1") }
            guard cpus <= VMConfiguration.maximumCPUs else {
                throw UsageError("--cpus \(cpus) is more than the \(VMConfiguration.maximumCPUs) vCPUs swiftkvm can describe to a guest")
            }
            configuration.cpus = cpus
        }
        if let pit {
            guard let model = PITModel(rawValue: pit) else { throw UsageError("--pit must be kvm or emulated, not '\(pit)'") }
            configuration.pit = model
        }
        if let cpuFeatures {
            do { _ = try CPUIDPolicy(parsing: cpuFeatures) } catch { throw UsageError("\(error)") }
            configuration.cpuFeatures = cpuFeatures.split(separator: ",").map { String($0.filter { $0 != " " }).lowercased() }
                .filter { !$0.isEmpty }
        }
        configuration.acpi = !noACPI
        guard disk.count <= VMConfiguration.maximumVirtioDevices else {
            throw UsageError("at most \(VMConfiguration.maximumVirtioDevices) disks are supported, not \(disk.count)")
        }
        do {
            configuration.disks = try disk.map { argument throws(VMMError) in
                let parsed = try DiskConfiguration(argument: argument)
                return DiskConfig(path: absolutePath(parsed.path), readOnly: parsed.readOnly, shareable: parsed.shareable)
            }
        } catch {
            throw UsageError(error.description)
        }
        if case .firmware = boot, !configuration.disks.isEmpty { throw UsageError("--disk is for Linux guests (--kernel)") }
        for argument in net {
            do { configuration.networkInterfaces.append(try NetworkInterfaceConfig(argument: argument)) } catch {
                throw UsageError("--net \(argument): \(error.description)")
            }
        }
        if case .firmware = boot, !configuration.networkInterfaces.isEmpty { throw UsageError("--net is for Linux guests (--kernel)") }
        return configuration
    }

    /// --config replaces the options that describe a VM: giving both is ambiguous.
    func checkNoVMOptions() throws {
        let given: [(String, Bool)] = [
            ("--kernel", kernel != nil), ("--initrd", initrd != nil), ("--cmdline", cmdline != nil), ("--disk", !disk.isEmpty), ("--net", !net.isEmpty),
            ("--cpus", cpus != nil), ("--pit", pit != nil), ("--boot-entry", bootEntry != nil), ("--cpu-features", cpuFeatures != nil),
            ("--firmware", firmware != nil), ("--mode", mode != nil), ("--memory", memory != nil), ("--load", load != nil),
            ("--entry", entry != nil), ("--no-acpi", noACPI),
        ]
        let clashing = given.filter(\.1).map(\.0)
        if !clashing.isEmpty {
            throw UsageError("--config describes the whole VM: drop \(clashing.joined(separator: ", ")) (or edit the file)")
        }
    }

    static func loadConfiguration(_ path: String) throws -> VMConfiguration {
        let bytes: [UInt8]
        do { bytes = try readHostFile(path, limit: ConfigurationFile.maximumSize) } catch { throw UsageError(error.description) }
        let configuration: VMConfiguration
        do { configuration = try ConfigurationFile.decode(bytes) } catch { throw UsageError("\(path): \(error)") }
        do { try configuration.validate() } catch { throw UsageError("\(path): \(error)") }
        return configuration
    }

    /// --memory, checked against the host's RAM; nil when not given.
    func memorySize() throws -> Int? {
        guard let memory else { return nil }
        guard let size = CommandLineValues.size(memory), size > 0 else {
            throw UsageError("--memory '\(memory)' is not a size: write it like 256M, 64K or 1G")
        }
        let hostMemory = Int(sysconf(Int32(_SC_PHYS_PAGES))) &* Int(sysconf(Int32(_SC_PAGESIZE)))
        if hostMemory > 0, size > hostMemory {
            throw UsageError(
                "--memory \(memory) is more than this host's \(CommandLineValues.describe(size: hostMemory)) of RAM: give less")
        }
        return size
    }

    /// The exit trace --trace or --trace-file asks for.
    func exitTrace() throws -> ExitTrace? {
        if let traceFile {
            do { return try ExitTrace(path: traceFile) } catch { throw UsageError("--trace-file: \(error)") }
        }
        return trace ? ExitTrace(descriptor: STDERR_FILENO) : nil
    }

    func parsedTimeLimit() throws -> Duration? {
        try SharedOptions.timeLimit(timeLimit)
    }

    /// Runs the VM until it ends for good (reboots that its configuration restarts included), with
    /// its console on this terminal: output through a bounded buffer, so a stalled reader never
    /// stops the guest, and input typed into COM1 once the guest's driver reads it.
    func runInstance(_ vm: VMConfiguration, policy: RunPolicy) throws {
        if paused, apiSocket == nil { throw UsageError("--paused needs --api-socket: nothing else could resume the VM") }
        // A reader that goes away (`| head`) must not kill the VMM before it synced the disks: its
        // writes then fail with EPIPE, and the console buffer counts what it could not deliver.
        Glibc.signal(SIGPIPE, SIG_IGN)
        let instance: VMInstance
        let output: ConsoleOutputBuffer
        let stopper: SignalStopper
        do {
            // Signals first: blocked here before any thread starts, so they reach only the loop.
            let events = try EventLoop()
            stopper = try SignalStopper(loop: events)
            output = try ConsoleOutputBuffer(descriptor: STDOUT_FILENO)
            instance = try VMInstance(vm, policy: policy, events: events) { output.append($0) }
            try events.start()
        } catch {
            throw UsageError(error.description)
        }
        try Self.run(instance, apiSocket: apiSocket, seccomp: seccomp == "on", output: output, stopper: stopper, paused: paused, stats: stats)
    }

    /// `run` with what `swiftkvm run` and `swiftkvm restore` add around it: the seccomp filter
    /// (unless `seccomp` is off) right before the first boot's vCPUs start, and the control API on
    /// `apiSocket` while the VM runs.
    static func run(
        _ instance: VMInstance, apiSocket: String?, seccomp: Bool, output: ConsoleOutputBuffer, stopper: SignalStopper, paused: Bool,
        stats: Bool
    ) throws -> Never {
        if seccomp {
            let mode = SeccompSetup.mode(for: instance.configuration, apiSocket: apiSocket)
            instance.beforeFirstBoot { SeccompSetup.install(mode) }
        }
        var server: ControlServer?
        if let apiSocket {
            let started = ControlServer(path: apiSocket, controller: InstanceController(instance: instance, output: output))
            do { try started.start() } catch { throw UsageError("--api-socket \(error)") }
            server = started
        }
        defer { server?.stop() }
        try run(instance, output: output, stopper: stopper, paused: paused, stats: stats)
    }

    /// Runs `instance` to its end with the console on this terminal, then exits with its outcome's status.
    static func run(_ instance: VMInstance, output: ConsoleOutputBuffer, stopper: SignalStopper, paused: Bool, stats: Bool) throws -> Never {
        let vm = instance.configuration
        stopper.watch { instance.stop() }
        let isLinux = if case .linux = vm.boot { true } else { false }
        if case .linux(let linux) = vm.boot, let entry = LinuxBootEntry(rawValue: linux.entry),
            let note = BootKernel.fallbackNote(kernelPath: linux.kernel, entry: entry)
        {
            printError(note)  // the payload cannot be decompressed here: the guest decompresses it
        }
        let sampler = stats ? ResidentMemorySampler { [instance] in instance.machine?.memory } : nil
        try? sampler?.start()
        let terminal = HostTerminal()
        var input: ConsoleInputPump?
        if isLinux {
            terminal.enterRawMode()
            // Held back until the guest's driver reads the port (and while the VM is paused): a
            // script piped in at once would otherwise land in a FIFO the kernel clears while it boots.
            let pump = ConsoleInputPump(
                interpretEscape: terminal.isTerminal, sink: { instance.typeIntoConsole($0) }, onQuit: { instance.stop() })
            do { try pump.start() } catch {
                HostTerminal.restore()
                throw RuntimeFailure("\(error)")
            }
            input = pump
        }
        let report: VMInstance.Report
        do {
            report = try instance.run(paused: paused)
        } catch {
            _ = sampler?.stop()
            input?.stop()
            HostTerminal.restore()
            output.finish()
            switch error {
            case .kvm, .system: throw RuntimeFailure(error.description)
            case .configuration, .file, .memory, .bus, .snapshot: throw UsageError(error.description)
            }
        }
        input?.stop()
        HostTerminal.restore()
        let dropped = output.finish()
        let memory = sampler?.stop()
        if stats, let run = report.lastRun {
            fputs(
                StatisticsTable.render(
                    duration: run.duration, statistics: run.statistics, vcpus: run.vcpus, milestones: report.milestones, memory: memory),
                stderr)
        }
        if let dropped { printError(dropped) }
        try finish(report.outcome, signal: stopper.signal, stoppedBy: vm.cpus > 1 ? report.lastRun?.stoppedBy : nil)
    }

    /// The API socket's file goes with the process, whichever way `run` ends it.
    static func finish(_ outcome: GuestOutcome, signal: Int32?, stoppedBy vcpu: Int?) throws -> Never {
        let (status, reason) = exitStatus(for: outcome, signal: signal)
        if let reason { printError(vcpu.map { "\(reason), on vcpu\($0)" } ?? reason) }
        throw ExitCode(status)
    }

    /// The process exit status for an outcome, and the line to print about it (if any).
    static func exitStatus(for outcome: GuestOutcome, signal: Int32?) -> (Int32, String?) {
        switch outcome {
        case .exited(let status): return (Int32(status), nil)
        case .halted: return (0, nil)
        case .shutdown, .rebooted, .poweredOff: return (0, outcome.description)
        case .panicked: return (1, outcome.description)
        case .timedOut: return (124, outcome.description)
        case .killed: return (137, outcome.description)
        case .stopped:
            guard let signal else { return (0, "stopped (Ctrl-A x or the control API)") }
            return (128 + signal, "stopped by signal \(signal)")
        case .exception, .failedEntry, .internalError, .unhandledExit, .vmmError: return (1, outcome.description)
        }
    }
}

/// Bad input: printed as one line, exit status 2.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The VMM failed while running: printed as one line, exit status 1.
struct RuntimeFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Turns SIGINT and SIGTERM into a clean stop of the running VM, through a signalfd on the VMM's
/// event loop (the signals are blocked in every thread, so they arrive nowhere else).
final class SignalStopper: @unchecked Sendable {
    private let state = Mutex<(stop: (@Sendable () -> Void)?, signal: Int32?)>((nil, nil))
    private let signals: SignalFD

    /// Call on the main thread before any other thread is started.
    init(loop: EventLoop) throws(VMMError) {
        SignalFD.blockInThisThread()
        signals = try SignalFD()
        try loop.add(signals.descriptor) { [weak self] _ in
            guard let self else { return }
            for number in signals.consume() { stop(signal: number) }
        }
    }

    var signal: Int32? { state.withLock { $0.signal } }

    /// `stop` is called on the first signal (at once if one came already).
    func watch(_ stop: @escaping @Sendable () -> Void) {
        let pending = state.withLock { current -> Int32? in
            current.stop = stop
            return current.signal
        }
        if pending != nil { stop() }
    }

    private func stop(signal number: Int32) {
        let stop = state.withLock { current -> (@Sendable () -> Void)? in
            if current.signal == nil { current.signal = number }
            return current.stop
        }
        stop?()
    }
}

/// `path` from the current directory, so a printed configuration works from anywhere.
func absolutePath(_ path: String) -> String {
    guard !path.isEmpty, !path.hasPrefix("/") else { return path }
    guard let directory = getcwd(nil, 0) else { return path }
    defer { free(directory) }
    let base = String(cString: directory)
    return (base == "/" ? "" : base) + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
}

func printError(_ line: String) {
    fputs("swiftkvm: \(line)\n", stderr)
}

// Parse and run by hand so every failure is one line and a chosen exit status, never a trap.
SeccompSetup.runSelfTestIfAsked()
do {
    var command = try SwiftKVM.parseAsRoot()
    try command.run()
} catch let error as UsageError {
    printError(error.description)
    exit(2)
} catch let error as RuntimeFailure {
    printError(error.description)
    exit(1)
} catch let code as ExitCode {
    exit(code.rawValue)
} catch {
    let status = SwiftKVM.exitCode(for: error)
    if status == .success {
        SwiftKVM.exit(withError: error)  // --help, --version
    }
    printError(SwiftKVM.message(for: error) + " (see 'swiftkvm run --help')")
    exit(2)
}
