import Devices
import Dispatch
import Glibc
import LinuxBoot
import Synchronization
import VMConfig

/// A VM that lives: one `VMConfiguration`, booted as often as its guest reboots (`on_reboot:
/// restart`), paused and resumed, pressed, reset and stopped from any thread — the object the
/// command line and the control API drive.
///
/// `run()` blocks its caller for the VM's whole life. Everything else is safe from any other
/// thread while it runs. On a reset the guest RAM is kept (as a PC keeps it) and the kernel or
/// program is loaded into it again; the vCPUs, the interrupt controllers and the devices are made
/// anew.
public final class VMInstance: @unchecked Sendable {
    // @unchecked: mutable state is in `state`, a Mutex.
    public let configuration: VMConfiguration
    public let policy: RunPolicy
    /// A name for the API's `id`: the configuration's name, or "anonymous".
    public let id: String
    /// The VMM's event loop (timers, signals): the caller's, or the instance's own, which `run` starts and stops.
    public let events: EventLoop
    private let ownsEvents: Bool
    private let console: @Sendable (UInt8) -> Void
    /// The snapshot the first boot restores instead of booting (`init(restoring:…)`).
    private let restoreSource: RestoreSource?

    /// A snapshot and its memory file, checked and mapped: what `init(restoring:…)` builds from.
    public struct RestoreSource: @unchecked Sendable {
        // @unchecked: GuestMemory is used by one machine at a time.
        public let snapshot: MachineSnapshot
        public let memory: GuestMemory
        /// Run at once after the restore (Firecracker's `resume_vm`), or stay paused.
        public let resume: Bool
    }

    /// Where the instance is in its life.
    public enum Phase: Equatable, Sendable {
        case notStarted
        /// Booted (boot `bootCount`); the machine says whether running or paused.
        case booted
        /// The guest ended with `outcome` and its action is `preserve`: kept, paused, for inspection.
        case preserved(GuestOutcome)
        case finished(GuestOutcome)
    }

    /// Why a request to a VM was refused.
    public enum RequestError: Error, Equatable, Sendable, CustomStringConvertible {
        /// The VM is not in a state the request applies to.
        case notApplicable(String)
        /// Pausing or resuming failed.
        case control(RunControlError)

        public var description: String {
            switch self {
            case .notApplicable(let text): text
            case .control(let error): error.description
            }
        }
    }

    private struct State {
        var phase: Phase = .notStarted
        var bootCount = 0
        var machine: Machine?
        var linux: LinuxGuest?
        /// A stop asked for between boots (or before the first).
        var stopRequest: GuestOutcome?
        /// The next end of a run is a reset whatever `on_reboot` says (the API's HardReset).
        var forceRestart = false
        /// Wakes a preserved VM's `run()` when it is stopped.
        var preservedRelease: DispatchSemaphore?
        var started: ContinuousClock.Instant?
        /// Why the restore of the first boot failed, if it did.
        var restoreFailure: String?
    }

    private let state = Mutex(State())
    /// Run once, right before the first boot's vCPUs start (see `beforeFirstBoot`).
    private let firstBootHook = Mutex<(@Sendable () -> Void)?>(nil)
    /// Run at each boot (see `onEachBoot`).
    private let bootHook = Mutex<(@Sendable (Int) -> Void)?>(nil)

    /// `console` receives every byte the guest writes to COM1, from a vCPU thread: it must not block.
    /// `events` is an event loop to share (the CLI watches its signals on it); `run` starts it.
    public init(
        _ configuration: VMConfiguration, policy: RunPolicy = RunPolicy(), events loop: EventLoop? = nil,
        console: @escaping @Sendable (UInt8) -> Void
    ) throws(VMMError) {
        switch configuration.boot {
        case .firmware:
            // The unit guest's checks first (they say how program, entry and memory fit), then the rest.
            _ = try UnitGuest(configuration, policy: policy)
        case .linux:
            try configuration.validateForHost()
        }
        self.configuration = configuration
        self.policy = policy
        self.console = console
        restoreSource = nil
        if let loop {
            events = loop
            ownsEvents = false
        } else {
            events = try EventLoop()
            ownsEvents = true
        }
        id = configuration.name ?? "anonymous"
    }

    /// A VM whose first boot is a restore of `snapshot` (its configuration decoded from the state
    /// file by the caller, which has JSON), with guest RAM mapped from `memoryPath`. Later boots
    /// (a guest reboot with `on_reboot: restart`) boot the configuration afresh. Without `resume`
    /// the restored VM starts paused, until `resume()`.
    public init(
        restoring snapshot: MachineSnapshot, configuration: VMConfiguration, memoryPath: String, resume resumeAfterRestore: Bool = true,
        policy: RunPolicy = RunPolicy(),
        events loop: EventLoop? = nil, console: @escaping @Sendable (UInt8) -> Void
    ) throws(SnapshotError) {
        do { try configuration.validateForHost() } catch { throw .format(.impossible("the saved configuration: \(error.description)")) }
        // The regions must be the ones this configuration's builder lays out: a state file cannot
        // place RAM anywhere else (over the MMIO windows, the APIC page).
        let layout: [(start: GuestAddress, size: Int)]
        switch configuration.boot {
        case .firmware: layout = [(GuestAddress(0), configuration.memoryBytes)]
        case .linux: layout = LinuxBootLayout.guestMemoryLayout(size: configuration.memoryBytes)
        }
        guard layout.map({ [$0.start.rawValue, UInt64($0.size)] }) == snapshot.memory.map({ [$0.guestAddress, $0.size] }) else {
            throw .format(.impossible("memory regions that are not the ones a VM of \(configuration.memoryBytes) bytes has"))
        }
        guard snapshot.vcpus.count == configuration.cpus else {
            throw .format(.impossible("\(snapshot.vcpus.count) vCPU states for a configuration of \(configuration.cpus) vCPUs"))
        }
        let total = snapshot.memory.reduce(UInt64(0)) { $0 &+ $1.size }
        guard total == UInt64(configuration.memoryBytes) else {
            throw .format(.impossible("\(total) bytes of memory regions for a configuration of \(configuration.memoryBytes) bytes"))
        }
        let memory = try GuestMemory.mapSnapshotFile(memoryPath, regions: snapshot.memory)
        self.configuration = configuration
        self.policy = policy
        self.console = console
        restoreSource = RestoreSource(snapshot: snapshot, memory: memory, resume: resumeAfterRestore)
        do {
            if let loop {
                events = loop
                ownsEvents = false
            } else {
                events = try EventLoop()
                ownsEvents = true
            }
        } catch {
            throw .vmm(error)
        }
        id = configuration.name ?? "anonymous"
    }

    // MARK: - Snapshots

    /// Writes a full snapshot of the paused VM: the state file at `statePath` (with
    /// `configurationJSON`, the configuration encoded by the caller) and guest RAM at `memoryPath`.
    /// The VM stays paused; resume it or stop it afterwards.
    public func snapshot(statePath: String, memoryPath: String, configurationJSON: [UInt8]) throws(SnapshotError) {
        let (phase, machine, linux) = state.withLock { ($0.phase, $0.machine, $0.linux) }
        guard case .booted = phase, let machine, machine.state == .paused else {
            throw .notApplicable("the VM is \(runState.description), it must be paused to snapshot")
        }
        let devices = try linux?.deviceStates() ?? []
        let kernel = try machine.captureKernelState()
        let regions = try machine.memory.writeSnapshotFile(to: memoryPath)
        let snapshot = MachineSnapshot(configuration: configurationJSON, memory: regions, vm: kernel.vm, vcpus: kernel.vcpus, devices: devices)
        try snapshot.write(to: statePath)
    }

    // MARK: - What the API reports

    public var phase: Phase { state.withLock { $0.phase } }
    /// Why restoring the snapshot failed (nil while it has not, or for a VM that boots).
    public var restoreFailure: String? { state.withLock { $0.restoreFailure } }
    /// Whether this VM's first boot restores a snapshot.
    public var isRestore: Bool { restoreSource != nil }
    /// How many times the guest has been booted (1 after the first boot, 2 after one restart).
    public var bootCount: Int { state.withLock { $0.bootCount } }
    /// The machine of the current boot (nil before the first and between boots).
    public var machine: Machine? { state.withLock { $0.machine } }
    /// The Linux guest of the current boot (nil for firmware, before the first boot and between boots).
    public var linuxGuest: LinuxGuest? { state.withLock { $0.linux } }
    /// Since the first boot began.
    public var uptime: Duration? { state.withLock { $0.started.map { ContinuousClock.now - $0 } } }

    /// `Not started`, `Running` or `Paused` (a preserved or ended VM is paused: it runs no more).
    public var runState: MachineState {
        let (phase, machine) = state.withLock { ($0.phase, $0.machine) }
        switch phase {
        case .notStarted: return .notStarted
        case .preserved: return .paused
        case .finished: return .finished
        case .booted:
            switch machine?.state {
            case .paused?: return .paused
            case .notStarted?, .running?, nil: return .running
            case .finished?: return .running  // between two boots
            }
        }
    }

    // MARK: - Running

    /// What the VM's whole life came to.
    public struct Report: Sendable {
        public let outcome: GuestOutcome
        public let boots: Int
        /// The last boot's run (statistics, per-vCPU time, registers), nil if none ran.
        public let lastRun: RunReport?
        /// The last boot's milestones.
        public let milestones: BootMilestones?
    }

    /// Boots the VM and runs it until it ends for good: its outcome's action is `destroy` (or a
    /// `preserve`d VM is stopped), a stop or kill is requested, or the time limit passes.
    public func run(paused: Bool = false) throws(VMMError) -> Report {
        let clock = ContinuousClock()
        let deadline = policy.timeLimit.map { clock.now + $0 }
        state.withLock { $0.started = clock.now }
        var memory: GuestMemory?
        // A Linux VM's disk files and NICs, opened once and kept across its boots.
        var hostDevices: LinuxHostDevices?
        var devicesStuck = false
        var lastRun: RunReport?
        var milestones: BootMilestones?
        var boots = 0
        try events.start()
        defer {
            state.withLock { $0.machine = nil; $0.linux = nil }
            // A disk whose I/O thread is stuck in a request stays open (its descriptor is in use).
            if !devicesStuck { hostDevices?.close() }
            if ownsEvents { events.stop() }
        }
        while true {
            let remaining = deadline.map { max(.milliseconds(1), $0 - clock.now) }
            if let request = state.withLock({ $0.stopRequest }) {
                return end(Report(outcome: request, boots: boots, lastRun: lastRun, milestones: milestones))
            }
            boots += 1
            let bootPolicy = RunPolicy(trace: policy.trace, timeLimit: remaining)
            let startPaused = (paused || restoreSource?.resume == false) && boots == 1
            let report: RunReport
            switch configuration.boot {
            case .linux:
                let restoring = boots == 1 ? restoreSource : nil
                let linuxConfiguration = try LinuxGuestConfiguration(configuration, policy: bootPolicy)
                if hostDevices == nil { hostDevices = try LinuxHostDevices(linuxConfiguration) }
                let guest: LinuxGuest
                do {
                    guest = try LinuxGuest(
                        linuxConfiguration, memory: restoring?.memory ?? memory, events: events, hostDevices: hostDevices,
                        console: console, restoring: restoring?.snapshot)
                } catch {
                    if restoring != nil { state.withLock { $0.restoreFailure = error.description } }
                    throw error
                }
                memory = guest.machine.memory
                milestones = guest.machine.milestones
                publish(machine: guest.machine, linux: guest, boot: boots)
                report = try guest.run(paused: startPaused)
                devicesStuck = guest.hostDevicesStuck
            case .firmware:
                let restoring = boots == 1 ? restoreSource : nil
                let guest = try restoring == nil ? UnitGuest(configuration, policy: bootPolicy) : UnitGuest(restoring: configuration, policy: bootPolicy)
                let run: GuestRun
                do {
                    run = try guest.run(
                        memory: restoring?.memory ?? memory, paused: startPaused, console: console,
                        started: { [self] machine in
                            milestones = machine.milestones
                            publish(machine: machine, linux: nil, boot: boots)
                        }, restoring: restoring?.snapshot)
                } catch let error as VMMError {
                    if restoring != nil { state.withLock { $0.restoreFailure = error.description } }
                    throw error
                } catch let error as SnapshotError {
                    state.withLock { $0.restoreFailure = error.description }
                    throw .configuration(error.description)
                } catch {
                    throw .configuration("\(error)")
                }
                memory = run.memory
                report = RunReport(
                    outcome: run.outcome, statistics: run.statistics, registers: run.registers,
                    specialRegisters: run.specialRegisters, duration: run.duration, vcpus: run.vcpus, stoppedBy: run.stoppedBy)
            }
            lastRun = report
            let forced = state.withLock { current -> Bool in
                current.machine = nil
                current.linux = nil
                defer { current.forceRestart = false }
                return current.forceRestart
            }
            var action = forced ? .restart : action(for: report.outcome)
            // A disk still busy with a request of the last boot cannot serve the next one.
            if devicesStuck, action == .restart { action = .destroy }
            switch action {
            case .restart?:
                continue
            case .preserve?:
                let release = DispatchSemaphore(value: 0)
                let stopped = state.withLock { current -> GuestOutcome? in
                    if let request = current.stopRequest { return request }
                    current.phase = .preserved(report.outcome)
                    current.preservedRelease = release
                    return nil
                }
                if stopped == nil {
                    if let deadline {
                        if release.wait(timeout: .after(deadline - clock.now)) == .timedOut {
                            return end(Report(outcome: .timedOut, boots: boots, lastRun: lastRun, milestones: milestones))
                        }
                    } else {
                        release.wait()
                    }
                }
                return end(Report(outcome: report.outcome, boots: boots, lastRun: lastRun, milestones: milestones))
            case .destroy?, nil:
                return end(Report(outcome: report.outcome, boots: boots, lastRun: lastRun, milestones: milestones))
            }
        }
    }

    /// The action the configuration names for how a boot ended; nil for endings that are not the
    /// guest's choice (a debug exit, a stop, the time limit, a VMM failure): those always end the VM.
    func action(for outcome: GuestOutcome) -> LifecycleAction? {
        switch outcome {
        case .poweredOff: configuration.onPowerOff
        case .rebooted, .shutdown: configuration.onReboot
        case .panicked: configuration.onCrash
        default: nil
        }
    }

    /// Runs `body` once, when the first boot's machine is built and right before its vCPUs start
    /// (on the thread that runs the VM): where `swiftkvm run` installs its seccomp filter.
    public func beforeFirstBoot(_ body: @escaping @Sendable () -> Void) {
        firstBootHook.withLock { $0 = body }
    }

    /// Runs `body` with the boot's number (1, 2, …) each time a boot's machine is built and
    /// published (`runState` and `bootCount` say so), right before its vCPUs start (on the thread
    /// that runs the VM): where a kept VM marks its console log and says it is ready.
    public func onEachBoot(_ body: @escaping @Sendable (Int) -> Void) {
        bootHook.withLock { $0 = body }
    }

    private func publish(machine: Machine, linux: LinuxGuest?, boot: Int) {
        if boot == 1, let hook = firstBootHook.withLock({ hook in defer { hook = nil }; return hook }) { hook() }
        let pending = state.withLock { current -> GuestOutcome? in
            current.machine = machine
            current.linux = linux
            current.bootCount = boot
            current.phase = .booted
            return current.stopRequest
        }
        // After the boot is published (the API says Running), before the vCPUs start: what the hook
        // announces can be acted on at once, and it comes before any of the boot's console output.
        if let hook = bootHook.withLock({ $0 }) { hook(boot) }
        if let pending { machine.requestStop(pending) }
    }

    private func end(_ report: Report) -> Report {
        state.withLock { $0.phase = .finished(report.outcome) }
        return report
    }

    // MARK: - Requests

    /// Parks every vCPU and quiets the devices; returns when they are.
    public func pause() throws(RequestError) {
        guard let machine = bootedMachine() else { throw .notApplicable("the VM is \(runState.description), it must be running to pause") }
        do { try machine.pause() } catch { throw .control(error) }
    }

    /// Lets a paused VM continue where it stopped.
    public func resume() throws(RequestError) {
        if case .preserved(let outcome) = phase {
            throw .notApplicable("the VM is kept for inspection after \(outcome.description); it cannot run on: stop it")
        }
        guard let machine = bootedMachine() else { throw .notApplicable("the VM is \(runState.description), it must be paused to resume") }
        do { try machine.resume() } catch { throw .control(error) }
    }

    /// Presses the ACPI power button: a guest that listens (Linux's button driver) shuts down. A
    /// press before the guest enabled the event is held until it does.
    public func pressPowerButton() throws(RequestError) {
        guard let linux = bootedLinux() else {
            throw .notApplicable("this VM has no ACPI power button (only Linux guests have one, and only while running)")
        }
        guard let events = linux.powerEvents else {
            throw .notApplicable("this VM's platform is hardware-reduced and has no fixed power button")
        }
        events.pressPowerButton()
    }

    /// Types Ctrl-Alt-Delete on the i8042 keyboard.
    public func sendCtrlAltDelete() throws(RequestError) {
        guard let linux = bootedLinux() else {
            throw .notApplicable("this VM has no keyboard controller (only Linux guests have one, and only while running)")
        }
        linux.keyboardController.type(I8042.ctrlAltDelete)
    }

    /// A hard reset: the current boot ends at once and the VM boots again, whatever `on_reboot` says.
    public func reset() throws(RequestError) {
        let machine = state.withLock { current -> Machine? in
            guard case .booted = current.phase else { return nil }
            current.forceRestart = true
            return current.machine
        }
        guard let machine else { throw .notApplicable("the VM is \(runState.description), it must be running to reset") }
        machine.requestStop(.rebooted)
    }

    /// Ends the VM with `outcome` (`.stopped` by default): the vCPUs stop, the disks are synced and
    /// closed, and `run()` returns. Safe at any time, also before the first boot and while preserved.
    public func stop(_ outcome: GuestOutcome = .stopped) {
        let (machine, release) = state.withLock { current -> (Machine?, DispatchSemaphore?) in
            if current.stopRequest == nil { current.stopRequest = outcome }
            current.forceRestart = false
            let release = current.preservedRelease
            current.preservedRelease = nil
            return (current.machine, release)
        }
        machine?.requestStop(outcome)
        release?.signal()
    }

    /// Bytes for the guest's console (COM1), taken only while its serial driver is reading and the
    /// VM runs; returns how many it took.
    public func typeIntoConsole(_ bytes: [UInt8]) -> Int {
        let (machine, linux) = state.withLock { ($0.machine, $0.linux) }
        guard let machine, let linux, machine.state == .running, linux.serial.isReceiving else { return 0 }
        return linux.serial.enqueueInput(bytes)
    }

    private func bootedMachine() -> Machine? {
        state.withLock { current in
            guard case .booted = current.phase else { return nil }
            return current.machine
        }
    }

    private func bootedLinux() -> LinuxGuest? {
        state.withLock { current in
            guard case .booted = current.phase else { return nil }
            return current.linux
        }
    }
}
