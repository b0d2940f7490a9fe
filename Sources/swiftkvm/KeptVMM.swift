import ArgumentParser
import ControlAPI
import Dispatch
import FoundationEssentials
import Glibc
import Synchronization
import VMConfig
import VMM
import VMStore

/// `swiftkvm vmm NAME`: the process that runs a kept VM (what `swiftkvm start` spawns, and what
/// the autostart unit runs). It holds the VM's lock for its whole life, answers the control API
/// on the VM's control socket, shares its console on the console socket and in the console log,
/// and keeps the state file and the event log.
struct KeptVMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmm",
        abstract: "Run a kept VM in this process (what 'swiftkvm start' spawns; for service managers).",
        discussion: """
            Holds the VM's lock while it runs, answers the control API on its control socket, shares \
            its console on its console socket and in its console log. Standard output and error get \
            only what the VMM itself says. SIGTERM or SIGINT stop the VM (not gracefully: use \
            'swiftkvm stop' for that).

            Exit status: what 'swiftkvm run' would exit with for the guest's end; 3 when the VM is \
            running already; 1 when it could not start; 2 for bad input.
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Flag(name: .long, help: "Start with the vCPUs paused, until 'swiftkvm resume NAME'.")
    var paused = false

    @Option(name: .long, help: ArgumentHelp("Stop the guest after this many seconds (default: no limit).", valueName: "seconds"))
    var timeLimit: Double?

    @Option(name: .long, help: ArgumentHelp("The seccomp filter once the guest runs: on (the default: the VMM's own threads may read and write files, for its logs, state and snapshots, and rebuild the VM after a reset; its vCPU and device threads get the strict list) or off, for debugging.", valueName: "on|off"))
    var seccomp: String = "on"

    @Option(name: .customLong("ready-fd"), help: ArgumentHelp("A descriptor to write one line to once the guest has been entered ('ok PID') or could not be ('error TEXT').", valueName: "fd"))
    var readyFD: Int32?

    func run() throws {
        let limit = try SharedOptions.timeLimit(timeLimit)
        let filter = try SharedOptions.seccomp(seccomp)
        try KeptVMM(name: name, paused: paused, timeLimit: limit, ready: ReadyChannel(descriptor: readyFD), seccomp: filter).run()
    }
}

/// One line to the `start` that spawned the VMM, at most once.
final class ReadyChannel: Sendable {
    private let descriptor: Mutex<Int32?>

    init(descriptor: Int32?) {
        if let descriptor { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        self.descriptor = Mutex(descriptor)
    }

    func send(_ line: String) {
        guard let fd = descriptor.withLock({ current -> Int32? in defer { current = nil }; return current }) else { return }
        let bytes = Array((line.replacingAll("\n", with: " ") + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        close(fd)
    }
}

/// The state file, changed from several threads (the VM's, the API's) and written on each change.
final class RecordKeeper: Sendable {
    private let record: Mutex<VMRecord>
    let folder: VMFolder

    init(folder: VMFolder, record: VMRecord) {
        self.folder = folder
        self.record = Mutex(record)
    }

    func update(_ change: (inout VMRecord) -> Void) {
        record.withLock { current in
            change(&current)
            try? folder.writeRecord(current)
        }
    }

    var current: VMRecord { record.withLock { $0 } }
}

/// Pours what the console's writer types into the guest's COM1 as its driver takes it.
final class ConsoleFeeder: @unchecked Sendable {
    // @unchecked: `pending` and `started` are guarded by `lock`.
    private let lock = PlainLock()
    private var pending: [UInt8] = []
    private var started = false
    private let wake = DispatchSemaphore(value: 0)
    private let sink: @Sendable ([UInt8]) -> Int
    static let capacity = 64 << 10

    init(sink: @escaping @Sendable ([UInt8]) -> Int) { self.sink = sink }

    func add(_ bytes: [UInt8]) {
        lock.lock()
        pending += bytes.prefix(max(0, Self.capacity - pending.count))
        let start = !started
        started = true
        lock.unlock()
        if start {
            DetachedThread.start(stackSize: 256 << 10) { [self] in loop() }
        }
        wake.signal()
    }

    private func loop() {
        while true {
            lock.lock()
            let chunk = pending
            lock.unlock()
            if chunk.isEmpty {
                _ = wake.wait(timeout: .now() + .seconds(1))
                continue
            }
            let taken = sink(chunk)
            lock.lock()
            pending.removeFirst(min(max(0, taken), pending.count))
            lock.unlock()
            if taken < chunk.count { usleep(5_000) }
        }
    }
}

/// The control API of a kept VM: the instance's, with each request recorded in the event log
/// and the state file.
final class KeptController: VMController, @unchecked Sendable {
    let base: InstanceController
    let keeper: RecordKeeper
    let events: EventLog

    init(base: InstanceController, keeper: RecordKeeper, events: EventLog) {
        self.base = base
        self.keeper = keeper
        self.events = events
    }

    func instanceInfo() -> InstanceInfo { base.instanceInfo() }
    func runningConfiguration() -> VMConfiguration? { base.runningConfiguration() }
    func draft() -> ConfigurationDraft { base.draft() }
    func setDraft(_ draft: ConfigurationDraft) throws(ControllerError) { try base.setDraft(draft) }
    func start(_ configuration: VMConfiguration) throws(ControllerError) { try base.start(configuration) }
    func statistics() -> VMStatistics { base.statistics() }

    func pause() throws(ControllerError) {
        try base.pause()
        keeper.update { $0.state = VMRecord.State.paused.rawValue }
        events.append("paused")
    }

    func resume() throws(ControllerError) {
        try base.resume()
        keeper.update { $0.state = VMRecord.State.running.rawValue }
        events.append("resumed")
    }

    func perform(_ action: VMAction) throws(ControllerError) {
        try base.perform(action)
        let name: String =
            switch action {
            case .powerButton: "power-button"
            case .sendCtrlAltDel: "ctrl-alt-del"
            case .hardReset: "reset"
            case .stop: "stop-requested"
            case .kill: "kill-requested"
            }
        events.append(name)
    }
}

/// A kept VM's VMM, from taking the lock to writing why the VM stopped.
struct KeptVMM {
    let name: String
    let paused: Bool
    let timeLimit: Duration?
    let ready: ReadyChannel
    /// `--seccomp on`: the filter goes on right before the first boot's vCPUs start.
    var seccomp = true

    func run() throws {
        // A `start` that went away must not kill the VMM when it says it is ready (EPIPE instead).
        Glibc.signal(SIGPIPE, SIG_IGN)
        let store = VMStore.fromEnvironment()
        let folder: VMFolder
        do {
            folder = try store.existing(name)
            try VMStore.makeDirectories(folder.runtimePath)
        } catch {
            ready.send("error \(error.description)")
            throw error.kind == .badName ? UsageError(error.description) : RuntimeFailure(error.description)
        }
        guard let lock = VMLock.acquire(folder.lockPath) else {
            let pid = (try? folder.readRecord())?.pid.map { " (pid \($0))" } ?? ""
            let text = "'\(name)' is running already\(pid)"
            ready.send("busy \(text)")
            printError(text)
            throw ExitCode(3)
        }
        defer { withExtendedLifetime(lock) {} }
        let eventLog = EventLog(path: folder.eventLogPath)
        var previous = (try? folder.readRecord()) ?? VMRecord()
        if previous.isLive {
            let pid = previous.pid.map { " (pid \($0))" } ?? ""
            eventLog.append("crashed", "the VMM\(pid) died without stopping the VM")
            previous.lastStop = StopRecord(reason: .vmmDied, detail: "the VMM\(pid) died without stopping the VM", status: nil)
        }
        folder.removeStaleSockets()
        let keeper = RecordKeeper(
            folder: folder,
            record: VMRecord(state: .starting, pid: getpid(), startedAt: Date().timeIntervalSince1970, bootCount: 0, lastStop: previous.lastStop))
        keeper.update { _ in }
        eventLog.append("starting", "pid \(getpid())")

        func failed(_ text: String, status: Int32 = 1) -> Error {
            keeper.update {
                $0.state = VMRecord.State.stopped.rawValue
                $0.pid = nil
                $0.lastStop = StopRecord(reason: .failed, detail: text, status: status)
            }
            eventLog.append("failed", text)
            ready.send("error \(text)")
            return RuntimeFailure(text)
        }

        let configuration: VMConfiguration
        let disks: DiskLocks
        do {
            configuration = try folder.definition()
            disks = try DiskLocks.acquire(for: configuration, name: name, store: store)
        } catch {
            throw failed(error.description)
        }
        defer { withExtendedLifetime(disks) {} }

        let instance: VMInstance
        let hub: ConsoleHub
        let stopper: SignalStopper
        let feeder = Mutex<ConsoleFeeder?>(nil)
        do {
            let loop = try EventLoop()
            stopper = try SignalStopper(loop: loop)
            hub = ConsoleHub(socketPath: folder.consoleSocketPath, log: CappedLog(path: folder.consoleLogPath)) { bytes in
                feeder.withLock { $0 }?.add(bytes)
            }
            hub.preload(CappedLog.tail(folder.consoleLogPath, bytes: ConsoleHub.defaultHistory))
            let made = try VMInstance(configuration, policy: RunPolicy(timeLimit: timeLimit), events: loop) { [hub] byte in hub.append(byte) }
            instance = made
            feeder.withLock { $0 = ConsoleFeeder { [made] bytes in made.typeIntoConsole(bytes) } }
            try loop.start()
        } catch {
            throw failed(error.description)
        }
        do { try hub.start() } catch { throw failed("console socket: \(error.description)") }
        let controller = KeptController(base: InstanceController(instance: instance, output: nil), keeper: keeper, events: eventLog)
        let server = ControlServer(path: folder.controlSocketPath, controller: controller)
        do { try server.start() } catch {
            hub.stop()
            throw failed("control socket: \(error)")
        }
        let name = self.name
        let startPaused = paused
        instance.onEachBoot { [ready] boot in
            let last = hub.recent(1)
            hub.mark((last.isEmpty || last == [0x0A] ? "" : "\n") + "[swiftkvm] \(name): boot \(boot) at \(EventLog.timestamp(Date()))\n")
            keeper.update { record in
                record.bootCount = boot
                if boot == 1 { record.state = (startPaused ? VMRecord.State.paused : .running).rawValue }
            }
            eventLog.append(boot == 1 ? "started" : "booted", "boot \(boot)" + (boot == 1 && startPaused ? ", paused" : ""))
            // The hook runs once the boot is published, so a `pause` right after `start` finds it Running.
            if boot == 1 { ready.send("ok \(getpid())") }
        }
        stopper.watch { instance.stop() }
        // A kept VM has a control API: the filter for a VMM that may rebuild its machine and write
        // files (its console log, state and event files, snapshots).
        if seccomp { instance.beforeFirstBoot { SeccompSetup.install(.controlled) } }

        let outcome: GuestOutcome
        do {
            outcome = try instance.run(paused: paused).outcome
        } catch {
            server.stop()
            hub.stop()
            throw failed(error.description)
        }
        server.stop()
        hub.stop()
        let (status, line) = Run.exitStatus(for: outcome, signal: stopper.signal)
        var detail = outcome.description
        if case .stopped = outcome, let signal = stopper.signal { detail = "the VM was stopped by signal \(signal)" }
        let stop = StopRecord(reason: Self.reason(for: outcome), detail: detail, status: status)
        keeper.update { record in
            record.state = VMRecord.State.stopped.rawValue
            record.pid = nil
            record.lastStop = stop
        }
        eventLog.append("stopped", detail)
        // A guest that ended before it was entered (it cannot, but say so rather than hang `start`).
        ready.send("error the VM ended before its guest was entered: \(detail)")
        if let line { printError(line) }
        throw ExitCode(status)
    }

    static func reason(for outcome: GuestOutcome) -> StopRecord.Reason {
        switch outcome {
        case .poweredOff: .poweredOff
        case .rebooted: .rebooted
        case .shutdown: .tripleFault
        case .panicked: .panicked
        case .killed: .killed
        case .stopped: .stopped
        case .timedOut: .timedOut
        case .exited: .exited
        case .halted: .halted
        case .exception, .failedEntry, .internalError, .unhandledExit, .vmmError: .failed
        }
    }
}
