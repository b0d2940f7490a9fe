import Synchronization

/// How a guest run ended.
public enum GuestOutcome: Equatable, Sendable, CustomStringConvertible {
    /// HLT with nothing left to wake the vCPU (no in-kernel interrupt controller).
    case halted
    /// The guest wrote `status` to the debug-exit port.
    case exited(status: UInt8)
    /// A triple fault (or another reset): KVM_EXIT_SHUTDOWN.
    case shutdown
    /// The guest asked for a reset through the i8042 (Linux's `reboot=k`).
    case rebooted
    /// The guest asked to be switched off: the ACPI S5 sleep state (Linux's `poweroff`).
    case poweredOff
    /// The guest kernel panicked: it said so through the pvpanic device, or it printed a panic
    /// message and then reset (`panic=N` without pvpanic). `message` is the panic line, if seen.
    case panicked(message: String?)
    /// The time limit passed and the vCPUs were kicked out of KVM_RUN.
    case timedOut
    /// An exception reached the unit-guest exception stub (64-bit modes).
    case exception(vector: UInt8, errorCode: UInt64, rip: UInt64)
    /// KVM refused to enter the guest: its state was invalid (KVM_EXIT_FAIL_ENTRY).
    case failedEntry(hardwareReason: UInt64)
    /// KVM could not handle an exit, e.g. an instruction its emulator lacks (KVM_EXIT_INTERNAL_ERROR).
    case internalError(suberror: UInt32)
    /// An exit reason this VMM does not handle.
    case unhandledExit(reason: UInt32)
    /// The host asked the VM to stop (a signal, or the API's `stop`).
    case stopped
    /// The host asked the VM to be killed (the API's `Kill`): ended at once, like a stop, disks
    /// still synced, but reported as a kill.
    case killed
    /// The VMM itself failed while the guest ran (an ioctl error); the text says which.
    case vmmError(String)

    public var description: String {
        switch self {
        case .halted: "the guest halted"
        case .exited(let status): "the guest exited with status \(status)"
        case .shutdown: "the guest shut down (triple fault or reset)"
        case .rebooted: "the guest rebooted (reset through the i8042 keyboard controller)"
        case .poweredOff: "the guest powered off (ACPI S5)"
        case .panicked(let message): "the guest kernel panicked" + (message.map { ": \($0)" } ?? "")
        case .timedOut: "the guest ran past its time limit"
        case .exception(let vector, let errorCode, let rip):
            "the guest took exception \(vector) (\(Self.exceptionName(vector))), error code 0x\(String(errorCode, radix: 16)), at rip 0x\(String(rip, radix: 16))"
        case .failedEntry(let reason): "KVM could not enter the guest (hardware reason 0x\(String(reason, radix: 16)))"
        case .internalError(let suberror):
            "KVM hit an internal error (suberror \(suberror)); the guest may use an instruction KVM cannot emulate"
        case .unhandledExit(let reason): "the guest caused unhandled KVM exit \(reason)"
        case .stopped: "the VM was stopped"
        case .killed: "the VM was killed"
        case .vmmError(let text): "the VMM failed: \(text)"
        }
    }

    static func exceptionName(_ vector: UInt8) -> String {
        let names = [
            "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
            "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
            "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
            "#PF page fault", "reserved", "#MF x87 error", "#AC alignment check", "#MC machine check",
            "#XM SIMD error", "#VE virtualization", "#CP control protection",
        ]
        return Int(vector) < names.count ? names[Int(vector)] : "vector \(vector)"
    }
}

/// The one place a run's end is decided: the first request wins, later ones are ignored.
///
/// Devices (on a vCPU thread), the deadline and signal handlers (on other threads) all request
/// through it; vCPU loops poll `isRequested` after each exit, which is a single atomic load.
public final class StopSignal: Sendable {
    private let outcome = Mutex<GuestOutcome?>(nil)
    private let requested = Atomic<Bool>(false)

    public init() {}

    /// Records `reason` if nothing was recorded before. Returns whether this call decided the outcome.
    @discardableResult
    public func request(_ reason: GuestOutcome) -> Bool {
        let decided = outcome.withLock { current -> Bool in
            guard current == nil else { return false }
            current = reason
            return true
        }
        requested.store(true, ordering: .releasing)
        return decided
    }

    @inline(__always)
    public var isRequested: Bool { requested.load(ordering: .acquiring) }

    public var reason: GuestOutcome? { outcome.withLock { $0 } }
}
