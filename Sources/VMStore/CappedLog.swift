import FoundationEssentials
import Glibc

/// An append-only log file capped in size: when the next write would pass `capacity` bytes the
/// file becomes `PATH.1` (replacing the one before) and a new one begins, so at most twice the
/// capacity is ever on disk. Reading gives `PATH.1` then `PATH`.
public final class CappedLog: @unchecked Sendable {
    // @unchecked: `descriptor` and `size` are only touched under `lock`.
    public let path: String
    public let capacity: Int
    private var descriptor: Int32 = -1
    private var size = 0
    private let lock = PlainLock()

    public static let defaultCapacity = 1 << 20

    public init(path: String, capacity: Int = CappedLog.defaultCapacity) {
        self.path = path
        self.capacity = max(256, capacity)
    }

    deinit { if descriptor >= 0 { close(descriptor) } }

    /// Appends `bytes` (rotating first if they would not fit). Errors are swallowed: a log that
    /// cannot be written must not stop the VM.
    public func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        lock.lock()
        defer { lock.unlock() }
        if descriptor < 0 { openFile() }
        if size > 0, size + bytes.count > capacity {
            close(descriptor)
            descriptor = -1
            rename(path, path + ".1")
            openFile()
        }
        guard descriptor >= 0 else { return }
        // A single chunk larger than the whole capacity keeps only its end.
        let kept = bytes.count > capacity ? Array(bytes.suffix(capacity)) : bytes
        var done = 0
        while done < kept.count {
            let result = kept.withUnsafeBytes { write(descriptor, $0.baseAddress! + done, kept.count - done) }
            if result < 0, errno == EINTR { continue }
            guard result > 0 else { break }
            done += result
        }
        size += done
    }

    private func openFile() {
        descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        var info = stat()
        size = descriptor >= 0 && fstat(descriptor, &info) == 0 ? Int(info.st_size) : 0
    }

    /// The whole log, older part first (at most about twice the capacity).
    public static func contents(_ path: String, limit: Int = 64 << 20) -> [UInt8] {
        (VMStore.read(path + ".1", limit: limit) ?? []) + (VMStore.read(path, limit: limit) ?? [])
    }

    /// The last `count` bytes of the log.
    public static func tail(_ path: String, bytes count: Int) -> [UInt8] {
        let all = contents(path)
        return Array(all.suffix(max(0, count)))
    }
}

/// The event log (`events.log`): one JSON object a line — time, event, detail — appended by the
/// VMM (and by a client that finds the VMM dead). Each line is one `write` to an `O_APPEND` file,
/// so writers in several processes never interleave inside a line.
public struct EventLog: Sendable {
    public let path: String

    public struct Event: Codable, Sendable, Equatable {
        /// ISO 8601, UTC, milliseconds.
        public var time: String
        public var event: String
        public var detail: String
    }

    public static let capacity = 1 << 20

    public init(path: String) { self.path = path }

    public func append(_ event: String, _ detail: String = "") {
        let line = Event(time: Self.timestamp(Date()), event: event, detail: detail)
        guard var bytes = try? JSONEncoder().encode(line) else { return }
        bytes.append(0x0A)
        var info = stat()
        if stat(path, &info) == 0, Int(info.st_size) + bytes.count > Self.capacity { rename(path, path + ".1") }
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
        close(fd)
    }

    /// The events so far, oldest first (lines that do not parse are skipped).
    public func events() -> [Event] {
        Self.parse(CappedLog.contents(path))
    }

    public static func parse(_ bytes: [UInt8]) -> [Event] {
        bytes.split(separator: 0x0A).compactMap { try? JSONDecoder().decode(Event.self, from: Data($0)) }
    }

    public static func timestamp(_ date: Date) -> String {
        // What ISO8601DateFormatter gave with [.withInternetDateTime, .withFractionalSeconds] in
        // UTC: "2026-12-08T00:25:13.724Z" (milliseconds, truncated).
        let interval = date.timeIntervalSince1970
        let seconds = interval.rounded(.down)
        var milliseconds = Int(((interval - seconds) * 1000).rounded(.down))
        milliseconds = min(max(milliseconds, 0), 999)
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func digits(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return digits(parts.tm_year + 1900, 4) + "-" + digits(parts.tm_mon + 1, 2) + "-" + digits(parts.tm_mday, 2)
            + "T" + digits(parts.tm_hour, 2) + ":" + digits(parts.tm_min, 2) + ":" + digits(parts.tm_sec, 2)
            + "." + digits(Int32(milliseconds), 3) + "Z"
    }
}
