import ControlAPI
import Glibc
import Synchronization
import VMConfig
import VMM

/// The control API's view of a `VMInstance`: what `swiftkvm run --api-socket` and `swiftkvm
/// serve` answer with. Called on the API server's thread, one request at a time; it never blocks
/// longer than a pause takes.
final class InstanceController: VMController, @unchecked Sendable {
    // @unchecked: mutable state is in `state`, a Mutex.
    static let version = "0.4.0"

    private struct State {
        var draft: ConfigurationDraft
        var instance: VMInstance?
    }

    private let state: Mutex<State>
    private let output: ConsoleOutputBuffer?
    /// Builds the instance `InstanceStart` asks for (`serve`); nil when the VM exists from the start (`run`).
    private let makeInstance: ((VMConfiguration) throws(VMMError) -> VMInstance)?
    /// Hands a started instance to whoever runs it (`serve`'s main thread).
    private let onStart: (VMInstance) -> Void
    /// Builds the instance `PUT /snapshot/load` asks for (`serve`); nil when the VM exists from the start.
    private let makeRestoredInstance: RestoredInstanceMaker?

    typealias RestoredInstanceMaker = (_ snapshot: MachineSnapshot, _ configuration: VMConfiguration, _ memoryPath: String, _ resume: Bool)
        throws(SnapshotError) -> VMInstance
    /// How long `PUT /snapshot/load` waits for the restored machine to be built before it answers.
    static let restorePatience: Duration = .seconds(30)

    /// For `swiftkvm run --api-socket`: the VM exists and runs (or will at once).
    init(instance: VMInstance, output: ConsoleOutputBuffer?) {
        state = Mutex(State(draft: ConfigurationDraft(instance.configuration), instance: instance))
        self.output = output
        makeInstance = nil
        makeRestoredInstance = nil
        onStart = { _ in }
    }

    /// For `swiftkvm serve`: an empty VMM, configured through the API until `InstanceStart`.
    init(
        output: ConsoleOutputBuffer?, makeInstance: @escaping (VMConfiguration) throws(VMMError) -> VMInstance,
        makeRestoredInstance: RestoredInstanceMaker? = nil, onStart: @escaping (VMInstance) -> Void
    ) {
        state = Mutex(State(draft: ConfigurationDraft(), instance: nil))
        self.output = output
        self.makeInstance = makeInstance
        self.makeRestoredInstance = makeRestoredInstance
        self.onStart = onStart
    }

    private var instance: VMInstance? { state.withLock { $0.instance } }

    static func apiState(_ state: MachineState) -> VMState {
        switch state {
        case .notStarted: .notStarted
        case .running: .running
        // A preserved or ended VM runs no more: it is reported paused until the VMM exits.
        case .paused, .finished: .paused
        }
    }

    func instanceInfo() -> InstanceInfo {
        let (draft, instance) = state.withLock { ($0.draft, $0.instance) }
        guard let instance else {
            return InstanceInfo(id: draft.name ?? "anonymous", state: .notStarted, vmmVersion: Self.version, bootCount: 0)
        }
        return InstanceInfo(id: instance.id, state: Self.apiState(instance.runState), vmmVersion: Self.version, bootCount: instance.bootCount)
    }

    func runningConfiguration() -> VMConfiguration? { instance?.configuration }

    func draft() -> ConfigurationDraft { state.withLock { $0.draft } }

    func setDraft(_ draft: ConfigurationDraft) throws(ControllerError) {
        try state.withLock { current throws(ControllerError) in
            guard current.instance == nil else {
                throw .wrongState("the VM has started: its configuration cannot change any more")
            }
            current.draft = draft
        }
    }

    func start(_ configuration: VMConfiguration) throws(ControllerError) {
        guard let makeInstance else { throw .wrongState("InstanceStart: the VM has started already") }
        guard instance == nil else { throw .wrongState("InstanceStart: the VM has started already") }
        let made: VMInstance
        do { made = try makeInstance(configuration) } catch {
            switch error {
            case .kvm, .system: throw .internalFailure(error.description)
            case .configuration, .file, .memory, .bus, .snapshot: throw .invalid(error.description)
            }
        }
        state.withLock { $0.instance = made }
        onStart(made)
    }

    func pause() throws(ControllerError) {
        guard let instance, instance.runState == .running else {
            throw .wrongState("pausing needs the VM 'Running'; it is '\(instanceInfo().state.rawValue)'")
        }
        do { try instance.pause() } catch { throw Self.map(error) }
    }

    func resume() throws(ControllerError) {
        guard let instance, instance.runState == .paused else {
            throw .wrongState("resuming needs the VM 'Paused'; it is '\(instanceInfo().state.rawValue)'")
        }
        do { try instance.resume() } catch { throw Self.map(error) }
    }

    func perform(_ action: VMAction) throws(ControllerError) {
        guard let instance else { throw .wrongState("\(action.rawValue) needs a started VM; it is 'Not started'") }
        do {
            switch action {
            case .sendCtrlAltDel: try instance.sendCtrlAltDelete()
            case .powerButton: try instance.pressPowerButton()
            case .hardReset: try instance.reset()
            case .stop: instance.stop()
            case .kill: instance.stop(.killed)
            }
        } catch {
            throw Self.map(error)
        }
    }

    static func map(_ error: VMInstance.RequestError) -> ControllerError {
        switch error {
        case .notApplicable(let text): .wrongState(text)
        case .control(.wrongState): .wrongState(error.description)
        case .control(.timedOut): .internalFailure(error.description)
        }
    }

    func statistics() -> VMStatistics {
        guard let instance else { return VMStatistics() }
        let reports = instance.machine?.liveReports ?? []
        let total = reports.reduce(ExitStatistics()) { $0 + $1.statistics }
        let reasons: [String: Int] = [
            "io_in": total.portReads, "io_out": total.portWrites, "mmio_read": total.mmioReads, "mmio_write": total.mmioWrites,
            "hlt": total.halts, "interrupted": total.interruptions, "other": total.other,
        ]
        return VMStatistics(
            uptimeSeconds: instance.uptime.map(Self.seconds) ?? 0, bootCount: instance.bootCount,
            exitsByReason: reasons.mapValues { UInt64(max(0, $0)) }, exitsByDevice: total.deviceExits.mapValues { UInt64(max(0, $0)) },
            vcpus: reports.map { report in
                VCPUStatistics(
                    index: report.index, exits: UInt64(max(0, report.statistics.total)), secondsInKVMRun: Self.seconds(report.timeInKVMRun),
                    secondsInVMM: Self.seconds(report.timeInVMM))
            },
            console: ConsoleStatistics(
                bytesWritten: UInt64(max(0, output?.writtenBytes ?? 0)), bytesDropped: UInt64(max(0, output?.droppedBytes ?? 0))))
    }

    // MARK: - Snapshots

    func createSnapshot(_ request: SnapshotCreateRequest) throws(ControllerError) {
        guard let instance, instance.runState == .paused, case .booted = instance.phase else {
            throw .wrongState("PUT /snapshot/create", current: instanceInfo().state, needs: [.paused])
        }
        let json: [UInt8]
        do { json = Array(try ConfigurationFile.encode(instance.configuration).utf8) } catch {
            throw .internalFailure("the configuration could not be encoded: \(error)")
        }
        do {
            try instance.snapshot(statePath: request.snapshotPath, memoryPath: request.memFilePath, configurationJSON: json)
        } catch {
            throw Self.map(error)
        }
    }

    func loadSnapshot(_ request: SnapshotLoadRequest) throws(ControllerError) {
        guard let makeRestoredInstance else { throw .wrongState("PUT /snapshot/load: this VMM runs a VM already; start one with 'swiftkvm serve'") }
        guard instance == nil else { throw .wrongState("PUT /snapshot/load", current: instanceInfo().state, needs: [.notStarted]) }
        let made: VMInstance
        do throws(SnapshotError) {
            let snapshot = try MachineSnapshot(contentsOf: request.snapshotPath)
            let configuration: VMConfiguration
            do { configuration = try ConfigurationFile.decode(snapshot.configuration) } catch {
                throw SnapshotError.format(.impossible("the saved configuration: \(error.description)"))
            }
            made = try makeRestoredInstance(snapshot, configuration, request.memoryPath, request.resumeVM)
        } catch {
            throw Self.map(error)
        }
        state.withLock { $0.instance = made }
        onStart(made)
        // The machine is built on the thread that runs it: wait until it runs (or is parked, without
        // resume_vm) or its restore was refused, so the answer says which.
        let deadline = ContinuousClock.now + Self.restorePatience
        while ContinuousClock.now < deadline {
            if let failure = made.restoreFailure { throw .invalid(failure) }
            if case .finished(let outcome) = made.phase { throw .internalFailure("the restored VM ended at once: \(outcome.description)") }
            if case .booted = made.phase, made.machine?.state != .notStarted { return }
            usleep(200)
        }
        throw .internalFailure("the restored VM was not running after \(Self.restorePatience)")
    }

    static func map(_ error: SnapshotError) -> ControllerError {
        switch error {
        case .format, .incompatibleHost, .file: .invalid(error.description)
        case .notApplicable(let text): text.contains("must be paused") ? .wrongState(text) : .invalid(text)
        case .vmm(let inner):
            switch inner {
            case .kvm, .system: .internalFailure(error.description)
            case .configuration, .file, .memory, .bus, .snapshot: .invalid(error.description)
            }
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
