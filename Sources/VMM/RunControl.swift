import Dispatch
import Glibc
import Synchronization

/// Where a machine is in its life, as the control API reports it.
public enum MachineState: String, Sendable, Equatable {
    /// Built, no vCPU has run yet.
    case notStarted
    /// The vCPUs are running (or about to: a resume has been asked for).
    case running
    /// Every vCPU is parked outside KVM_RUN and every device worker is quiet.
    case paused
    /// The run has ended; `Machine.run` has returned or is returning.
    case finished
}

/// A device-side worker the machine quiets while it is paused: a virtio I/O thread, the emulated
/// PIT's timer. `pause()` returns only once the worker no longer touches guest memory or raises
/// interrupts; `resume()` lets it go on.
public protocol PausableWorker: AnyObject, Sendable {
    func pause()
    func resume()
}

/// Why pausing or resuming was refused.
public enum RunControlError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The machine is not in a state the request applies to.
    case wrongState(MachineState, wanted: String)
    /// The vCPUs did not all park in time (one is stuck in KVM_RUN).
    case timedOut(parked: Int, of: Int)

    public var description: String {
        switch self {
        case .wrongState(let state, let wanted): "the VM is \(state.description), it must be \(wanted)"
        case .timedOut(let parked, let count): "only \(parked) of \(count) vCPUs left KVM_RUN in time"
        }
    }
}

extension MachineState: CustomStringConvertible {
    public var description: String {
        switch self {
        case .notStarted: "not started"
        case .running: "running"
        case .paused: "paused"
        case .finished: "finished"
        }
    }
}

/// The messages between the controller (any thread: the API, a test) and the vCPU threads: what
/// the vCPUs should be doing, and how many are parked. Each vCPU thread changes its own state
/// only when it sees a message after a kick, so a vCPU is only ever touched by its own thread.
///
/// The order that makes it race-free: the controller sets `pauseRequested` and then kicks
/// (`immediate_exit`, then the signal); a vCPU clears `immediate_exit`, then reads
/// `pauseRequested`, then enters KVM_RUN. Whichever way they interleave, a vCPU either sees the
/// request before entering or is kicked out at once.
final class RunControl: @unchecked Sendable {
    // @unchecked: `mutex` and `condition` guard the fields below them; `pauseRequested` is atomic.
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    /// Read by every vCPU after every exit: one relaxed-enough atomic load on the hot path.
    let pauseRequested = Atomic<Bool>(false)
    private var wantPaused = false
    private var parked = 0
    /// vCPU threads that started and have not finished.
    private var live = 0
    private var stopping = false
    private(set) var state: MachineState = .notStarted

    init() {
        pthread_mutex_init(&mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    private func locked<T>(_ body: () throws(RunControlError) -> T) throws(RunControlError) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }

    private func lockedValue<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }

    var currentState: MachineState { lockedValue { state } }

    /// A new run begins with `count` vCPU threads about to start.
    func begin(vcpus count: Int, paused: Bool) {
        lockedValue {
            live = count
            parked = 0
            stopping = false
            wantPaused = paused
            pauseRequested.store(paused, ordering: .sequentiallyConsistent)
            state = paused ? .paused : .running
        }
    }

    /// A vCPU thread ends.
    func vcpuFinished() {
        lockedValue {
            live -= 1
            pthread_cond_broadcast(&condition)
        }
    }

    /// The run is over: parked vCPUs wake and leave, waiters give up.
    func finish() {
        lockedValue {
            stopping = true
            state = .finished
            pthread_cond_broadcast(&condition)
        }
    }

    /// A stop was requested: parked vCPUs must wake to see it.
    func wakeForStop() {
        lockedValue {
            stopping = true
            pthread_cond_broadcast(&condition)
        }
    }

    /// Called by a vCPU thread that saw `pauseRequested`: waits, parked, until a resume or a stop.
    func park() {
        lockedValue {
            guard wantPaused, !stopping else { return }
            parked += 1
            pthread_cond_broadcast(&condition)
            while wantPaused, !stopping { pthread_cond_wait(&condition, &mutex) }
            parked -= 1
            pthread_cond_broadcast(&condition)
        }
    }

    /// Asks the vCPUs to park; `kick` interrupts each one. Returns once every live vCPU is parked.
    func pause(timeout: Duration, kick: () -> Void) throws(RunControlError) {
        try locked { () throws(RunControlError) in
            guard state == .running else { throw .wrongState(state, wanted: "running to pause") }
            wantPaused = true
            pauseRequested.store(true, ordering: .sequentiallyConsistent)
        }
        kick()
        try locked { () throws(RunControlError) in
            let deadline = RunControlClock.deadline(after: timeout)
            var remaining = deadline
            while parked < live, !stopping {
                if pthread_cond_timedwait(&condition, &mutex, &remaining) == ETIMEDOUT {
                    // Undo, so the vCPUs that did park run on: a half-paused VM helps nobody.
                    let count = (parked, live)
                    wantPaused = false
                    pauseRequested.store(false, ordering: .sequentiallyConsistent)
                    pthread_cond_broadcast(&condition)
                    throw .timedOut(parked: count.0, of: count.1)
                }
                remaining = deadline
            }
            if stopping { throw .wrongState(.finished, wanted: "running to pause") }
            state = .paused
        }
    }

    /// Lets parked vCPUs run again; returns once none is parked.
    func resume(timeout: Duration) throws(RunControlError) {
        try locked { () throws(RunControlError) in
            guard state == .paused else { throw .wrongState(state, wanted: "paused to resume") }
            wantPaused = false
            pauseRequested.store(false, ordering: .sequentiallyConsistent)
            state = .running
            pthread_cond_broadcast(&condition)
            let deadline = RunControlClock.deadline(after: timeout)
            var remaining = deadline
            while parked > 0, !stopping {
                if pthread_cond_timedwait(&condition, &mutex, &remaining) == ETIMEDOUT { break }
                remaining = deadline
            }
        }
    }
}

/// The pause handshake of one device worker thread: the controller asks and waits until the
/// worker is parked; the worker parks at a point of its choosing (between requests, never inside
/// one) and waits for the release.
final class PauseGate: @unchecked Sendable {
    // @unchecked: `state` is a Mutex; the semaphores are thread-safe.
    private let requested = Atomic<Bool>(false)
    private let state = Mutex<(parked: Bool, ended: Bool)>((false, false))
    private let acknowledged = DispatchSemaphore(value: 0)
    private let released = DispatchSemaphore(value: 0)

    /// Worker side, cheap when nothing is asked: parks while a pause is requested.
    func parkIfRequested() {
        guard requested.load(ordering: .acquiring) else { return }
        state.withLock { $0.parked = true }
        acknowledged.signal()
        released.wait()
        state.withLock { $0.parked = false }
    }

    /// Worker side: the worker has ended; a pause need not wait for it.
    func workerEnded() {
        let wasRequested = state.withLock { state -> Bool in
            state.ended = true
            return requested.load(ordering: .acquiring) && !state.parked
        }
        if wasRequested { acknowledged.signal() }
    }

    /// Controller side: asks for a pause, wakes the worker with `wake`, waits until it parked.
    func pause(wake: () -> Void) {
        guard !state.withLock({ $0.ended }) else { return }
        requested.store(true, ordering: .releasing)
        wake()
        acknowledged.wait()
    }

    /// Controller side: lets a parked worker go on. Harmless when it is not parked.
    func resume() {
        let wasRequested = requested.exchange(false, ordering: .acquiringAndReleasing)
        let parked = state.withLock { $0.parked }
        if wasRequested, parked { released.signal() }
    }
}
