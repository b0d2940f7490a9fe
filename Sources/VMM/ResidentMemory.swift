import Dispatch
import Glibc
import Synchronization
import VMMCore

/// How much memory this process keeps resident, and how much of that is the VMM's own rather
/// than guest RAM: from /proc/self/smaps (proc(5)), the `Rss:` of every mapping, with the
/// mappings that hold guest RAM counted apart; and the peak resident size (`VmHWM:` in
/// /proc/self/status), which includes guest RAM.
public struct ResidentMemory: Equatable, Sendable {
    /// Resident bytes of every mapping.
    public let total: UInt64
    /// Resident bytes of the guest-RAM mappings.
    public let guest: UInt64
    /// The highest total resident size so far (VmHWM), guest RAM included; nil if unknown.
    public let peakTotal: UInt64?
    /// The highest `overhead` a `ResidentMemorySampler` saw over a run; nil for a single measurement.
    public let peakOverhead: UInt64?
    /// Anonymous bytes of every mapping but guest RAM (`Anonymous:`): the heap, the stacks, the
    /// libraries' written data — what one more VMM process adds. The rest of `overhead` is pages
    /// of the binary and its shared libraries, read from their files and shared by every process
    /// that maps them.
    public let anonymousOverhead: UInt64

    /// What the VMM itself keeps resident: everything but guest RAM.
    public var overhead: UInt64 { total >= guest ? total - guest : 0 }

    public init(total: UInt64, guest: UInt64, peakTotal: UInt64?, peakOverhead: UInt64? = nil, anonymousOverhead: UInt64 = 0) {
        self.total = total
        self.guest = guest
        self.peakTotal = peakTotal
        self.peakOverhead = peakOverhead
        self.anonymousOverhead = anonymousOverhead
    }

    /// Measures this process now, counting the mappings that overlap `memory`'s regions as guest RAM.
    /// Nil if /proc/self/smaps cannot be read.
    public static func measure(guestMemory memory: GuestMemory) -> ResidentMemory? {
        guard let smaps = readProcFile("/proc/self/smaps") else { return nil }
        return parse(smaps: smaps, status: readProcFile("/proc/self/status"), guestRanges: guestRanges(of: memory))
    }

    /// The host address ranges of `memory`'s regions.
    static func guestRanges(of memory: GuestMemory) -> [Range<UInt64>] {
        memory.regions.map { region -> Range<UInt64> in
            let start = UInt64(UInt(bitPattern: region.host))
            return start..<start + UInt64(region.size)
        }
    }

    /// The figures in `smaps` (and `status`, for the peak), with mappings overlapping `guestRanges`
    /// (host addresses) counted as guest RAM.
    public static func parse(smaps: String, status: String?, guestRanges: [Range<UInt64>]) -> ResidentMemory {
        var total: UInt64 = 0
        var guest: UInt64 = 0
        var anonymous: UInt64 = 0
        var inGuestMapping = false
        for line in smaps.split(separator: "\n", omittingEmptySubsequences: true) {
            if let range = mappingRange(line) {
                inGuestMapping = guestRanges.contains { $0.overlaps(range) }
            } else if line.hasPrefix("Rss:"), let bytes = kilobytes(line) {
                total &+= bytes
                if inGuestMapping { guest &+= bytes }
            } else if line.hasPrefix("Anonymous:"), !inGuestMapping, let bytes = kilobytes(line) {
                anonymous &+= bytes
            }
        }
        let peak = status?.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }.flatMap(kilobytes)
        return ResidentMemory(total: total, guest: guest, peakTotal: peak, anonymousOverhead: anonymous)
    }

    /// A mapping's header line, `start-end perms offset dev inode [path]`: its address range.
    static func mappingRange(_ line: Substring) -> Range<UInt64>? {
        guard let space = line.firstIndex(of: " "), let dash = line[..<space].firstIndex(of: "-") else { return nil }
        guard let start = UInt64(line[..<dash], radix: 16), let end = UInt64(line[line.index(after: dash)..<space], radix: 16),
            start <= end
        else { return nil }
        return start..<end
    }

    /// `Name:   123 kB` in bytes.
    static func kilobytes(_ line: Substring) -> UInt64? {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        guard words.count >= 3, words[2] == "kB", let value = UInt64(words[1]) else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: 1024)
        return overflow ? nil : bytes
    }

    /// A /proc file's text (they report size 0, so read until the end), at most 64 MiB.
    static func readProcFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return readProcFile(descriptor: fd)
    }

    /// A /proc file's text from an open descriptor, read again from its start (procfs makes the
    /// text anew on each read from offset 0), so a sampler opens it once, before the seccomp filter
    /// forbids opening files.
    static func readProcFile(descriptor fd: Int32) -> String? {
        guard lseek(fd, 0, SEEK_SET) == 0 else { return nil }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count < 64 << 20 {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Samples `ResidentMemory` on a thread of its own while a VM runs and keeps the highest VMM
/// overhead seen (the guest's mappings of whichever boot is current counted apart), for `--stats`.
public final class ResidentMemorySampler: @unchecked Sendable {
    // @unchecked: mutable state is in `state` (a Mutex) and `running` (an Atomic).
    private let guestMemory: @Sendable () -> GuestMemory?
    private let interval: Duration
    private let running = Atomic<Bool>(true)
    private let finished = DispatchSemaphore(value: 0)
    private let state = Mutex<(last: ResidentMemory?, peakOverhead: UInt64)>((nil, 0))
    /// /proc/self/smaps and /proc/self/status, opened once here (-1 if they could not be).
    private let smaps: Int32
    private let status: Int32

    /// `guestMemory` names the current guest RAM (nil between boots, when nothing is sampled).
    public init(every interval: Duration = .milliseconds(500), guestMemory: @escaping @Sendable () -> GuestMemory?) {
        self.interval = interval
        self.guestMemory = guestMemory
        smaps = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC)
        status = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
    }

    deinit {
        if smaps >= 0 { close(smaps) }
        if status >= 0 { close(status) }
    }

    public func start() throws(VMMError) {
        try OSThread.detached(name: "rss-sampler") { [self] in
            while running.load(ordering: .relaxed) {
                sample()
                var pause = timespec(tv_sec: Int(interval.components.seconds), tv_nsec: Int(interval.components.attoseconds / 1_000_000_000))
                nanosleep(&pause, nil)
            }
            finished.signal()
        }
    }

    /// Takes one sample now (if a guest is running).
    public func sample() {
        guard smaps >= 0, let memory = guestMemory(), let text = ResidentMemory.readProcFile(descriptor: smaps) else { return }
        let measured = ResidentMemory.parse(
            smaps: text, status: status >= 0 ? ResidentMemory.readProcFile(descriptor: status) : nil,
            guestRanges: ResidentMemory.guestRanges(of: memory))
        state.withLock { state in
            state.last = measured
            state.peakOverhead = max(state.peakOverhead, measured.overhead)
        }
    }

    /// Stops the thread; the last sample with the peak overhead, or nil if none was taken.
    public func stop() -> ResidentMemory? {
        running.store(false, ordering: .relaxed)
        finished.wait()
        return state.withLock { state in
            state.last.map {
                ResidentMemory(
                    total: $0.total, guest: $0.guest, peakTotal: $0.peakTotal, peakOverhead: state.peakOverhead,
                    anonymousOverhead: $0.anonymousOverhead)
            }
        }
    }
}
