import CEvents
import Glibc
import KVM
import Synchronization

/// The VMM's event loop: one epoll set, served by one OS thread (`vmm-events`), for what is not a
/// vCPU and needs to wait: timers (a `timerfd` per timer, re-armed from a device's own deadline,
/// no polling sleeps) and signals (a `signalfd`). Handlers run on the loop's thread, one at a time;
/// `add`, `remove` and `stop` are safe from any thread.
///
/// What does not live here, and why: each virtio device's I/O has a worker thread of its own (a
/// disk request may block in the kernel for milliseconds; one slow disk must not delay the
/// others' notifications or the timer), the console's output has a writer thread (a blocking
/// write to a terminal cannot be made non-blocking without changing the shell's terminal too),
/// and the control API serves its socket on a thread of its own with its own poll set.
public final class EventLoop: @unchecked Sendable {
    // @unchecked: `handlers` is a Mutex; the descriptors are immutable.
    public typealias Handler = @Sendable (_ events: UInt32) -> Void

    private let epoll: Int32
    private let wake: EventFD
    private let handlers = Mutex<[Int32: Handler]>([:])
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<OSThread?>(nil)

    public init() throws(VMMError) {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw .system(call: "epoll_create1", errno: errno) }
        do { wake = try EventFD() } catch {
            close(epoll)
            throw .kvm(error)
        }
        try add(wake.descriptor) { [wake] _ in wake.consume() }
    }

    deinit {
        stop()
        close(epoll)
    }

    /// Calls `handler` on the loop's thread whenever `descriptor` is ready for `events` (EPOLLIN
    /// by default). The caller keeps the descriptor open until it `remove`s it.
    public func add(_ descriptor: Int32, events: UInt32 = cevents_epollin, handler: @escaping Handler) throws(VMMError) {
        handlers.withLock { $0[descriptor] = handler }
        var event = epoll_event(events: events, data: epoll_data_t(fd: descriptor))
        if epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) != 0 {
            let error = errno
            handlers.withLock { $0[descriptor] = nil }
            throw .system(call: "epoll_ctl(EPOLL_CTL_ADD)", errno: error)
        }
    }

    /// Stops watching `descriptor`; its handler is not called again once this returns on the loop
    /// thread (from another thread, at most one call already under way may finish).
    public func remove(_ descriptor: Int32) {
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, descriptor, nil)
        handlers.withLock { $0[descriptor] = nil }
    }

    /// Starts the loop's thread.
    public func start() throws(VMMError) {
        try thread.withLock { current throws(VMMError) in
            guard current == nil else { return }
            current = try OSThread(name: "vmm-events") { [self] in serve() }
        }
    }

    /// Ends the loop and waits for its thread. Harmless when it never started or already stopped.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        wake.signal()
        let running = thread.withLock { current -> OSThread? in
            defer { current = nil }
            return current
        }
        running?.join()
    }

    private func serve() {
        var ready = [epoll_event](repeating: epoll_event(), count: 16)
        while !stopping.load(ordering: .acquiring) {
            let count = ready.withUnsafeMutableBufferPointer { epoll_wait(epoll, $0.baseAddress, Int32($0.count), -1) }
            if count < 0 {
                if errno == EINTR { continue }
                break
            }
            for event in ready.prefix(Int(count)) {
                let descriptor = event.data.fd
                guard let handler = handlers.withLock({ $0[descriptor] }) else { continue }
                handler(event.events)
            }
        }
    }
}

/// A `timerfd` on CLOCK_MONOTONIC, armed for an absolute time in nanoseconds (the clock
/// `MonotonicClock` reads), for an `EventLoop`.
public final class TimerFD: @unchecked Sendable {
    // @unchecked: the descriptor is immutable; timerfd calls are thread-safe in the kernel.
    public let descriptor: Int32

    public init() throws(VMMError) {
        descriptor = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard descriptor >= 0 else { throw .system(call: "timerfd_create", errno: errno) }
    }

    deinit { close(descriptor) }

    /// Fires once at `deadline` (nanoseconds of CLOCK_MONOTONIC; a past time fires at once), or
    /// never when nil.
    public func arm(at deadline: UInt64?) {
        var setting = itimerspec()
        if let deadline {
            // 0 would disarm: a deadline at the clock's origin is long past, so 1 ns fires at once too.
            let value = max(deadline, 1)
            setting.it_value = timespec(tv_sec: Int(value / 1_000_000_000), tv_nsec: Int(value % 1_000_000_000))
        }
        _ = timerfd_settime(descriptor, Int32(TFD_TIMER_ABSTIME), &setting, nil)
    }

    /// Clears the expiry count after the timer fired.
    public func consume() {
        var expirations: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &expirations) { read(descriptor, $0.baseAddress, 8) }
    }
}

/// SIGINT and SIGTERM through a `signalfd`, on an `EventLoop`, instead of asynchronous handlers.
///
/// `blockInThisThread()` must run on the main thread before the process starts any other thread:
/// threads inherit the mask, so the signals then reach only the signalfd.
public final class SignalFD: @unchecked Sendable {
    // @unchecked: the descriptor is immutable.
    public static let watched: [Int32] = [SIGINT, SIGTERM]
    public let descriptor: Int32

    /// Blocks the watched signals for the calling thread (and the threads it starts afterwards).
    public static func blockInThisThread() {
        var set = sigset_t()
        sigemptyset(&set)
        for number in watched { sigaddset(&set, number) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    public init() throws(VMMError) {
        var set = sigset_t()
        sigemptyset(&set)
        for number in Self.watched { sigaddset(&set, number) }
        descriptor = signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        guard descriptor >= 0 else { throw .system(call: "signalfd", errno: errno) }
    }

    deinit { close(descriptor) }

    /// The signal numbers that arrived since the last call.
    public func consume() -> [Int32] {
        var numbers: [Int32] = []
        var information = signalfd_siginfo()
        while withUnsafeMutableBytes(of: &information, { read(descriptor, $0.baseAddress, $0.count) }) == MemoryLayout<signalfd_siginfo>.size {
            numbers.append(Int32(bitPattern: information.ssi_signo))
        }
        return numbers
    }
}
