import VMConfig

/// What the control API asks of a VM. The VMM implements it against a real machine; the tests and
/// `api-mock-server` implement it with a state machine of their own.
///
/// **Threading.** `ControlServer` calls every method from its one server thread (an OS thread of
/// its own, never Swift's cooperative pool), one call at a time and never re-entrantly. Calls
/// should return promptly: while one runs, no other client is served. A method that has to wait
/// for the VM (pause: every vCPU parked outside `KVM_RUN`) may block for as long as that takes,
/// bounded by the implementation. `Sendable` because the server thread is not the thread that made
/// the controller.
///
/// **States** (`VMState`, Firecracker's three): `notStarted` until `start(_:)` succeeds, then
/// `running`; `pause()` makes it `paused` and `resume()` `running` again. A VM whose guest has ended
/// (power-off, `VMAction.stop`, `VMAction.kill`) is reported as the implementation decides — the
/// VMM usually exits then, and the socket goes away with it.
///
/// **Errors.** Every throwing method throws `ControllerError`; the server maps `.invalid` to 400,
/// `.notFound` to 404, `.wrongState` to 409 and `.internalFailure` to 500, with the message as
/// the `fault_message`. Use `.internalFailure` only for a real failure of the VMM (an ioctl that
/// failed), never for something the client asked wrongly.
public protocol VMController: AnyObject, Sendable {
    /// `GET /`: the VM's identity and state.
    func instanceInfo() -> InstanceInfo

    /// The configuration the VM was started with (`GET /vm/config` after start); nil before start.
    func runningConfiguration() -> VMConfiguration?

    /// The configuration being prepared before start: `PUT /boot-source`, `/machine-config`,
    /// `/drives/{id}` and `/network-interfaces/{id}` read it, change it and give it back through
    /// `setDraft(_:)`. A VMM started with a whole configuration (`swiftkvm run --api-socket`) gives
    /// `ConfigurationDraft(configuration)` of it.
    func draft() -> ConfigurationDraft

    /// Replaces the draft. The server has already checked the new draft (`ConfigurationDraft.validate()`).
    /// Throws `.wrongState` once the VM has started: a running VM's configuration cannot change.
    func setDraft(_ draft: ConfigurationDraft) throws(ControllerError)

    /// `PUT /actions {"action_type": "InstanceStart"}`: builds the machine from `configuration`
    /// (complete and validated: `ConfigurationDraft.makeConfiguration()`) and starts its vCPUs.
    /// Throws `.wrongState` when it has started already, `.invalid` when a host fact fails (a kernel
    /// file that does not exist, more vCPUs than KVM allows), `.internalFailure` when KVM fails.
    /// It must not block for the VM's life: run the VM on threads of its own (e.g. `VMInstance.run`
    /// on an OS thread) and return once the vCPUs run, so the server goes on answering.
    func start(_ configuration: VMConfiguration) throws(ControllerError)

    /// `PATCH /vm {"state": "Paused"}`: returns once every vCPU is parked outside `KVM_RUN` and every
    /// device worker is quiet. Throws `.wrongState` unless the VM is running.
    func pause() throws(ControllerError)

    /// `PATCH /vm {"state": "Resumed"}`: continues exactly where the pause stopped. Throws
    /// `.wrongState` unless the VM is paused.
    func resume() throws(ControllerError)

    /// `PUT /actions` with any other action. Each needs a started VM (running or paused) and
    /// throws `.wrongState` before start. See `VMAction` for what each does.
    func perform(_ action: VMAction) throws(ControllerError)

    /// `GET /stats`: the figures of `swiftkvm run --stats`, live. Cheap: it may be polled.
    func statistics() -> VMStatistics

    /// `PUT /snapshot/create`: writes a full snapshot of the paused VM (state file and memory
    /// file); the VM stays paused. Throws `.wrongState` unless the VM is paused, `.invalid` when
    /// a file cannot be written or this kind of VM cannot be snapshotted.
    func createSnapshot(_ request: SnapshotCreateRequest) throws(ControllerError)

    /// `PUT /snapshot/load`: on a VMM started empty, builds the VM from a snapshot and (with
    /// `resumeVM`) runs it; otherwise it is left paused. Throws `.wrongState` once a VM exists,
    /// `.invalid` for a state file that is refused (damaged, another version, another host).
    func loadSnapshot(_ request: SnapshotLoadRequest) throws(ControllerError)
}

extension VMController {
    public func createSnapshot(_ request: SnapshotCreateRequest) throws(ControllerError) {
        throw .invalid("this VMM does not take snapshots")
    }

    public func loadSnapshot(_ request: SnapshotLoadRequest) throws(ControllerError) {
        throw .invalid("this VMM does not load snapshots")
    }
}

/// Why a controller refused: the server's status code follows from the case.
public enum ControllerError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What was asked cannot work (400): a missing file, a value the host cannot give.
    case invalid(String)
    /// What was named does not exist (404).
    case notFound(String)
    /// Not in this state (409): pause when not running, a configuration change after start.
    case wrongState(String)
    /// The VMM itself failed (500).
    case internalFailure(String)

    public var description: String {
        switch self {
        case .invalid(let text), .notFound(let text), .wrongState(let text), .internalFailure(let text): text
        }
    }

    public var status: HTTPStatus {
        switch self {
        case .invalid: .badRequest
        case .notFound: .notFound
        case .wrongState: .conflict
        case .internalFailure: .internalServerError
        }
    }

    /// The usual 409: `operation` needs one of `states`, and the VM is in `current`.
    public static func wrongState(_ operation: String, current: VMState, needs states: [VMState]) -> ControllerError {
        .wrongState("\(operation) needs the VM \(states.map { "'\($0.rawValue)'" }.joined(separator: " or ")); it is '\(current.rawValue)'")
    }
}

/// The VM's state, with exactly Firecracker's strings (`InstanceInfo.state` in its API).
public enum VMState: String, Codable, Sendable, CaseIterable {
    case notStarted = "Not started"
    case running = "Running"
    case paused = "Paused"
}

/// `GET /`: Firecracker's InstanceInfo, plus `boot_count`.
public struct InstanceInfo: Codable, Sendable, Equatable {
    /// The VM's name (`VMConfiguration.name`), or one the VMM made up.
    public var id: String
    public var state: VMState
    public var vmmVersion: String
    /// Always `swiftkvm`.
    public var appName: String
    /// How many times the guest has booted in this process: 0 before start, 1 after, one more for
    /// each reboot done in place (`on_reboot: restart`) or `VMAction.hardReset`.
    public var bootCount: Int

    public static let applicationName = "swiftkvm"

    public init(id: String, state: VMState, vmmVersion: String, bootCount: Int) {
        self.id = id
        self.state = state
        self.vmmVersion = vmmVersion
        self.appName = Self.applicationName
        self.bootCount = bootCount
    }

    enum CodingKeys: String, CodingKey {
        case id, state
        case vmmVersion = "vmm_version"
        case appName = "app_name"
        case bootCount = "boot_count"
    }
}

/// What `PUT /actions` asks for besides `InstanceStart`, as its `action_type` string.
public enum VMAction: String, Codable, Sendable, CaseIterable {
    /// Firecracker's: the i8042 sends Ctrl-Alt-Del's scancodes, so a Linux guest reboots cleanly.
    case sendCtrlAltDel = "SendCtrlAltDel"
    /// An ACPI fixed-hardware power-button press (ACPI 6.5 §4.8.3.1: PWRBTN_STS set in PM1 status,
    /// an SCI when PWRBTN_EN is set); an ACPI guest powers off cleanly.
    case powerButton = "PowerButton"
    /// A reset of the whole machine (devices and vCPUs) that boots the guest again, as a reset
    /// button does; no guest cooperation.
    case hardReset = "HardReset"
    /// A clean stop of the VMM: vCPUs stopped, disks synced and closed, the outcome reported.
    case stop = "Stop"
    /// Ends the VM at once, without syncing its disks.
    case kill = "Kill"
}

/// `GET /stats`: what `swiftkvm run --stats` prints, while the VM runs.
public struct VMStatistics: Codable, Sendable, Equatable {
    /// Seconds since the VM started (0 before start).
    public var uptimeSeconds: Double
    public var bootCount: Int
    /// Exits by reason (`io`, `mmio`, `hlt`, …), all vCPUs together.
    public var exitsByReason: [String: UInt64]
    /// Port and MMIO exits by the device that took them (`COM1`, `virtio-blk0`, …).
    public var exitsByDevice: [String: UInt64]
    public var vcpus: [VCPUStatistics]
    public var console: ConsoleStatistics

    public init(
        uptimeSeconds: Double = 0, bootCount: Int = 0, exitsByReason: [String: UInt64] = [:], exitsByDevice: [String: UInt64] = [:],
        vcpus: [VCPUStatistics] = [], console: ConsoleStatistics = ConsoleStatistics()
    ) {
        self.uptimeSeconds = uptimeSeconds
        self.bootCount = bootCount
        self.exitsByReason = exitsByReason
        self.exitsByDevice = exitsByDevice
        self.vcpus = vcpus
        self.console = console
    }

    enum CodingKeys: String, CodingKey {
        case uptimeSeconds = "uptime_seconds"
        case bootCount = "boot_count"
        case exitsByReason = "exits_by_reason"
        case exitsByDevice = "exits_by_device"
        case vcpus, console
    }
}

/// One vCPU's share of the time: inside `KVM_RUN` (the guest, or KVM for it) against in the VMM
/// handling its exits.
public struct VCPUStatistics: Codable, Sendable, Equatable {
    public var index: Int
    public var exits: UInt64
    public var secondsInKVMRun: Double
    public var secondsInVMM: Double

    public init(index: Int, exits: UInt64, secondsInKVMRun: Double, secondsInVMM: Double) {
        self.index = index
        self.exits = exits
        self.secondsInKVMRun = secondsInKVMRun
        self.secondsInVMM = secondsInVMM
    }

    enum CodingKeys: String, CodingKey {
        case index, exits
        case secondsInKVMRun = "kvm_run_seconds"
        case secondsInVMM = "vmm_seconds"
    }
}

/// The serial console's output: bytes the guest wrote, and how many were dropped because the
/// reader did not keep up (the output buffer is bounded, so a stalled reader never blocks a vCPU).
public struct ConsoleStatistics: Codable, Sendable, Equatable {
    public var bytesWritten: UInt64
    public var bytesDropped: UInt64

    public init(bytesWritten: UInt64 = 0, bytesDropped: UInt64 = 0) {
        self.bytesWritten = bytesWritten
        self.bytesDropped = bytesDropped
    }

    enum CodingKeys: String, CodingKey {
        case bytesWritten = "bytes_written"
        case bytesDropped = "bytes_dropped"
    }
}
