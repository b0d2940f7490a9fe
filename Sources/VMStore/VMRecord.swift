import FoundationEssentials
import Glibc

/// The state file (`state.json`): what the VMM that holds the lock says about the VM, and why the
/// VM last stopped. Written only by the holder of the lock, atomically.
public struct VMRecord: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable, CaseIterable {
        case starting, running, paused, stopped
        /// Only ever shown, never stored: the VMM died and this look found it.
        case crashed
    }

    public var state: String
    public var pid: Int32?
    /// Seconds since 1970 when the VMM started this VM.
    public var startedAt: Double?
    public var bootCount: Int
    public var lastStop: StopRecord?

    public init(state: State = .stopped, pid: Int32? = nil, startedAt: Double? = nil, bootCount: Int = 0, lastStop: StopRecord? = nil) {
        self.state = state.rawValue
        self.pid = pid
        self.startedAt = startedAt
        self.bootCount = bootCount
        self.lastStop = lastStop
    }

    /// The file says a VMM runs the VM.
    public var isLive: Bool { state != State.stopped.rawValue && state != State.crashed.rawValue }

    enum CodingKeys: String, CodingKey {
        case state, pid
        case startedAt = "started_at"
        case bootCount = "boot_count"
        case lastStop = "last_stop"
    }
}

/// Why a VM's last run ended.
public struct StopRecord: Codable, Sendable, Equatable {
    public enum Reason: String, Codable, Sendable, CaseIterable {
        case poweredOff = "powered-off"
        case rebooted
        case panicked
        case tripleFault = "triple-fault"
        case killed
        case stopped
        case timedOut = "timed-out"
        case exited
        case halted
        case failed
        case vmmDied = "vmm-died"
    }

    public var reason: Reason
    /// The line that says it, e.g. "the guest kernel panicked: Kernel panic - not syncing: …".
    public var detail: String
    /// The exit status the VMM ended with (none when it died).
    public var status: Int32?
    /// Seconds since 1970.
    public var at: Double

    public init(reason: Reason, detail: String, status: Int32?, at: Double = Date().timeIntervalSince1970) {
        self.reason = reason
        self.detail = detail
        self.status = status
        self.at = at
    }
}

/// A VM's lock: `flock(2)` on a file in its runtime folder, held by its VMM for as long as it runs.
/// The kernel drops it when the process ends however it ends (even SIGKILL), so whoever can take
/// it knows no VMM runs the VM.
public final class VMLock: @unchecked Sendable {
    public let descriptor: Int32

    private init(descriptor: Int32) { self.descriptor = descriptor }

    /// The lock, exclusively, or nil when someone holds it (never waits).
    public static func acquire(_ path: String) -> VMLock? {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            close(fd)
            return nil
        }
        return VMLock(descriptor: fd)
    }

    /// Whether a process holds the lock now (a shared try that fails).
    public static func isHeld(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        while flock(fd, LOCK_SH | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            return errno == EWOULDBLOCK
        }
        return false
    }

    public func release() { close(descriptor) }
}
