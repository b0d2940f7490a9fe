import ControlAPI
import Foundation
import VMConfig

/// A `VMController` with no VM behind it: Firecracker's state machine (`Not started` → `Running` ⇄
/// `Paused`) kept in memory, and a record of what it was asked. The ControlAPI tests and the
/// `api-mock-server` executable (which `Tests/api/schemathesis.sh` drives) use it to exercise the
/// server without KVM. It is not a VMM: it starts nothing.
public final class MockVMController: VMController, @unchecked Sendable {
    private let lock = NSLock()
    private var state: VMState = .notStarted
    private var bootCount = 0
    private var startedAt: Date?
    private var current = ConfigurationDraft()
    private var running: VMConfiguration?
    private var calls: [String] = []
    private var failure: ControllerError?

    public let id: String

    /// NSLock.withLock rethrows untyped errors; this keeps `ControllerError`.
    private func locked(_ body: () throws(ControllerError) -> Void) throws(ControllerError) {
        lock.lock()
        defer { lock.unlock() }
        try body()
    }

    public init(id: String = "mock-vm", draft: ConfigurationDraft = ConfigurationDraft()) {
        self.id = id
        self.current = draft
    }

    /// What it was asked, in order: `start`, `pause`, `resume`, `setDraft` or an action's raw value.
    public var log: [String] { lock.withLock { calls } }

    /// Makes the next `start(_:)` throw this, as a VMM whose kernel file is missing would.
    public func failNextStart(with error: ControllerError) { lock.withLock { failure = error } }

    public func instanceInfo() -> InstanceInfo {
        lock.withLock { InstanceInfo(id: id, state: state, vmmVersion: "0.0.0-mock", bootCount: bootCount) }
    }

    public func runningConfiguration() -> VMConfiguration? { lock.withLock { running } }

    public func draft() -> ConfigurationDraft { lock.withLock { current } }

    public func setDraft(_ draft: ConfigurationDraft) throws(ControllerError) {
        try locked { () throws(ControllerError) in
            guard state == .notStarted else { throw .wrongState("changing the configuration", current: state, needs: [.notStarted]) }
            calls.append("setDraft")
            current = draft
        }
    }

    public func start(_ configuration: VMConfiguration) throws(ControllerError) {
        try locked { () throws(ControllerError) in
            guard state == .notStarted else { throw .wrongState("InstanceStart", current: state, needs: [.notStarted]) }
            if let failure {
                self.failure = nil
                throw failure
            }
            calls.append("start")
            running = configuration
            state = .running
            bootCount += 1
            startedAt = Date()
        }
    }

    public func pause() throws(ControllerError) {
        try locked { () throws(ControllerError) in
            guard state == .running else { throw .wrongState("pausing", current: state, needs: [.running]) }
            calls.append("pause")
            state = .paused
        }
    }

    public func resume() throws(ControllerError) {
        try locked { () throws(ControllerError) in
            guard state == .paused else { throw .wrongState("resuming", current: state, needs: [.paused]) }
            calls.append("resume")
            state = .running
        }
    }

    public func perform(_ action: VMAction) throws(ControllerError) {
        try locked { () throws(ControllerError) in
            guard state != .notStarted else { throw .wrongState(action.rawValue, current: state, needs: [.running, .paused]) }
            calls.append(action.rawValue)
            switch action {
            case .sendCtrlAltDel, .powerButton: break
            case .hardReset:
                bootCount += 1
                state = .running
            case .stop, .kill:
                // The VM has ended; the mock can be started again (a VMM would usually exit).
                state = .notStarted
                running = nil
                startedAt = nil
            }
        }
    }

    public func createSnapshot(_ request: SnapshotCreateRequest) throws(ControllerError) {
        try locked { () throws(ControllerError) in
            guard state == .paused else { throw .wrongState("PUT /snapshot/create", current: state, needs: [.paused]) }
        }
    }

    /// Loads nothing: the mock's VM is paused (or running with `resumeVM`) afterwards.
    public func loadSnapshot(_ request: SnapshotLoadRequest) throws(ControllerError) {
        try locked { () throws(ControllerError) in
            guard state == .notStarted else { throw .wrongState("PUT /snapshot/load", current: state, needs: [.notStarted]) }
            bootCount = 1
            state = request.resumeVM ? .running : .paused
        }
    }

    public func statistics() -> VMStatistics {
        lock.withLock {
            let uptime = startedAt.map { Date().timeIntervalSince($0) } ?? 0
            return VMStatistics(
                uptimeSeconds: uptime, bootCount: bootCount, exitsByReason: state == .notStarted ? [:] : ["io": 0],
                vcpus: (0..<(running?.cpus ?? 0)).map { VCPUStatistics(index: $0, exits: 0, secondsInKVMRun: 0, secondsInVMM: 0) })
        }
    }
}
