import Glibc
import Synchronization

/// Guest console bytes on their way to a host file descriptor (the terminal, a pipe, a file),
/// through a bounded buffer and a writer thread of their own.
///
/// A vCPU that prints never waits for the host: `append` copies the byte and returns. When the
/// reader stops reading (a stalled pipe, a terminal on hold) the buffer fills and further bytes are
/// dropped and counted — never silently: `droppedBytes` and the line `finish` returns say so. A
/// reader that has gone (EPIPE) ends the writing the same way; the guest runs on.
public final class ConsoleOutputBuffer: @unchecked Sendable {
    // @unchecked: the ring and the counters are guarded by `mutex`.
    public static let defaultCapacity = 1 << 20

    private let descriptor: Int32
    private let capacity: Int
    private var ring: [UInt8]
    private var head = 0
    private var count = 0
    private var dropped = 0
    private var written = 0
    private var closing = false
    private var failed: Int32?
    private var writerDone = false
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private let tee: (@Sendable (UInt8) -> Void)?

    /// Starts the writer thread for `descriptor`; `tee` (e.g. a console log) sees every byte too.
    public init(descriptor: Int32, capacity: Int = ConsoleOutputBuffer.defaultCapacity, tee: (@Sendable (UInt8) -> Void)? = nil) throws(VMMError) {
        self.descriptor = descriptor
        self.capacity = max(1, capacity)
        self.tee = tee
        ring = [UInt8](repeating: 0, count: max(1, capacity))
        pthread_mutex_init(&mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&condition, &attributes)
        pthread_condattr_destroy(&attributes)
        try OSThread.detached(name: "console-out") { [self] in writeLoop() }
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    /// Queues one byte; never blocks on the host. A full buffer (or a gone reader) drops it.
    public func append(_ byte: UInt8) {
        tee?(byte)
        pthread_mutex_lock(&mutex)
        if closing || failed != nil || count == capacity {
            dropped &+= 1
        } else {
            ring[(head + count) % capacity] = byte
            count += 1
            if count == 1 { pthread_cond_signal(&condition) }
        }
        pthread_mutex_unlock(&mutex)
    }

    /// Bytes dropped so far because the reader did not keep up or had gone.
    public var droppedBytes: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return dropped
    }

    /// Bytes the host has taken so far.
    public var writtenBytes: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return written
    }

    /// Writes out what is queued (waiting at most `timeout` for a slow reader), stops the writer,
    /// and returns a line saying what was dropped, or nil when nothing was.
    @discardableResult
    public func finish(timeout: Duration = .seconds(2)) -> String? {
        pthread_mutex_lock(&mutex)
        closing = true
        pthread_cond_broadcast(&condition)
        var deadline = RunControlClock.deadline(after: timeout)
        while !writerDone, count > 0, failed == nil {
            if pthread_cond_timedwait(&condition, &mutex, &deadline) == ETIMEDOUT { break }
        }
        // Whatever the reader did not take in time is dropped too.
        dropped &+= count
        count = 0
        let (lost, error) = (dropped, failed)
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
        guard lost > 0 else { return nil }
        let why = error == EPIPE ? "the reader of standard output went away" : error.map { String(cString: strerror($0)) } ?? "standard output did not keep up"
        return "\(lost) console byte\(lost == 1 ? " was" : "s were") dropped: \(why)"
    }

    private func writeLoop() {
        var chunk = [UInt8](repeating: 0, count: 4096)
        pthread_mutex_lock(&mutex)
        while true {
            while count == 0, !closing { pthread_cond_wait(&condition, &mutex) }
            if count == 0 { break }
            let length = min(count, chunk.count, capacity - head)
            for index in 0..<length { chunk[index] = ring[head + index] }
            pthread_mutex_unlock(&mutex)
            let result = chunk.withUnsafeBytes { Self.writeAll(descriptor, $0.baseAddress!, length) }
            pthread_mutex_lock(&mutex)
            head = (head + length) % capacity
            count -= length
            if let error = result {
                failed = error
                dropped &+= count
                count = 0
                break
            }
            written &+= length
            pthread_cond_broadcast(&condition)
        }
        writerDone = true
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }

    /// write(2) until done; nil, or the errno that ended it (EPIPE when the reader has gone).
    private static func writeAll(_ descriptor: Int32, _ base: UnsafeRawPointer, _ length: Int) -> Int32? {
        var done = 0
        while done < length {
            let result = write(descriptor, base + done, length - done)
            if result < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN {
                    // A non-blocking descriptor (the shell's, shared): wait until it takes more.
                    var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&ready, 1, 1000)
                    continue
                }
                return errno
            }
            done += result
        }
        return nil
    }
}

/// CLOCK_MONOTONIC deadlines for `pthread_cond_timedwait` (conditions made with that clock).
enum RunControlClock {
    static func deadline(after duration: Duration) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let (seconds, attoseconds) = duration.components
        let nanoseconds = Int64(now.tv_nsec) + attoseconds / 1_000_000_000
        let wholeSeconds = Int64(now.tv_sec) + min(max(seconds, 0), 1 << 32) + nanoseconds / 1_000_000_000
        return timespec(tv_sec: Int(wholeSeconds), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }
}
