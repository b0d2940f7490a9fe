import Glibc
import KVM
import Synchronization
import VMMCore

/// `--trace`: one line per exit, written as the vCPU threads see them.
///
///     vcpu0 io out port=0x3f8 size=1 data=48 Serial16550 0x3f8-0x3ff
///     vcpu0 io in port=0x3fd size=1 data=60 Serial16550 0x3f8-0x3ff
///     vcpu0 mmio write addr=0xd0000070 size=4 data=01000000 VirtioMMIOTransport 0xd0000000-0xd0000fff
///     vcpu0 io out port=0x80 size=1 data=00 unclaimed
///     vcpu0 hlt
///
/// `data` is the bytes of the access in memory order (for a read, what the guest was given);
/// string I/O adds `count=`. The last field names the device that took the access. Lines go to a
/// file descriptor through a buffer (or, for tests, into memory). A machine without a trace pays
/// one nil check per exit.
public final class ExitTrace: @unchecked Sendable {
    // @unchecked: mutable state is in `state`, a Mutex.
    private enum Sink {
        case descriptor(Int32, owned: Bool)
        case memory
    }

    private let sink: Sink
    private let state: Mutex<(buffer: [UInt8], lines: BoundedTail<String>)>
    private static let flushThreshold = 64 << 10

    /// Writes to `descriptor` (e.g. STDERR_FILENO); the caller keeps it open.
    public init(descriptor: Int32) {
        sink = .descriptor(descriptor, owned: false)
        state = Mutex(([], BoundedTail(limit: 1)))
    }

    /// Creates (or truncates) `path` and writes there.
    public init(path: String) throws(VMMError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
        sink = .descriptor(fd, owned: true)
        state = Mutex(([], BoundedTail(limit: 1)))
    }

    private init(memoryLimit: Int) {
        sink = .memory
        state = Mutex(([], BoundedTail(limit: memoryLimit)))
    }

    /// The most lines an in-memory trace keeps by default.
    public static let defaultLineLimit = 100_000

    /// Keeps the lines in memory (`lines`), for tests: the last `lineLimit` of them, so a guest
    /// that runs long cannot exhaust host memory (`droppedLines` counts the rest).
    public static func inMemory(lineLimit: Int = ExitTrace.defaultLineLimit) -> ExitTrace { ExitTrace(memoryLimit: lineLimit) }

    deinit {
        flush()
        if case .descriptor(let fd, owned: true) = sink { close(fd) }
    }

    /// The lines recorded so far (in-memory traces only).
    public var lines: [String] { state.withLock { $0.lines.elements } }

    /// Lines an in-memory trace dropped from the front to stay within its limit.
    public var droppedLines: Int { state.withLock { $0.lines.dropped } }

    func record(_ line: String) {
        let pending: [UInt8]? = state.withLock { state in
            switch sink {
            case .memory:
                state.lines.append(line)
                return nil
            case .descriptor:
                state.buffer.append(contentsOf: line.utf8)
                state.buffer.append(0x0A)
                guard state.buffer.count >= Self.flushThreshold else { return nil }
                defer { state.buffer.removeAll(keepingCapacity: true) }
                return state.buffer
            }
        }
        if let pending { write(pending) }
    }

    /// Writes out what is buffered.
    public func flush() {
        let pending = state.withLock { state in
            defer { state.buffer.removeAll(keepingCapacity: true) }
            return state.buffer
        }
        write(pending)
    }

    private func write(_ bytes: [UInt8]) {
        guard case .descriptor(let fd, _) = sink, !bytes.isEmpty else { return }
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }  // a full disk or a closed pipe ends the trace, not the guest
            done += count
        }
    }

    /// The trace line for `exit` on vCPU `vcpu`; `device` names the device that took the access.
    public static func line(vcpu: Int, exit: VCPUExit, device: String?) -> String {
        let target = device ?? "unclaimed"
        switch exit {
        case .portIO(let io):
            let count = io.count > 1 ? " count=\(io.count)" : ""
            return "vcpu\(vcpu) io \(io.direction == .read ? "in" : "out") port=0x\(String(io.port, radix: 16)) size=\(io.size)\(count) data=\(hex(UnsafeRawBufferPointer(io.data))) \(target)"
        case .mmio(let access):
            return "vcpu\(vcpu) mmio \(access.direction == .read ? "read" : "write") addr=0x\(String(access.address, radix: 16)) size=\(access.data.count) data=\(hex(UnsafeRawBufferPointer(access.data))) \(target)"
        case .halt: return "vcpu\(vcpu) hlt"
        case .interrupted: return "vcpu\(vcpu) interrupted"
        case .shutdown: return "vcpu\(vcpu) shutdown"
        case .failedEntry(let reason, _): return "vcpu\(vcpu) fail-entry reason=0x\(String(reason, radix: 16))"
        case .internalError(let suberror, _): return "vcpu\(vcpu) internal-error suberror=\(suberror)"
        case .systemEvent(let type): return "vcpu\(vcpu) system-event type=\(type)"
        case .unhandled(let reason): return "vcpu\(vcpu) unhandled reason=\(reason)"
        }
    }

    static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}

/// When a boot reached each milestone, in nanoseconds of CLOCK_MONOTONIC. Each is recorded once,
/// the first time it happens, from whichever thread sees it.
public final class BootMilestones: @unchecked Sendable {
    // @unchecked: mutable state is in `times`, a Mutex.
    public enum Milestone: String, CaseIterable, Sendable {
        /// The VMM began setting the machine up (LinuxGuest's initializer, or Machine's).
        case vmmStart = "VMM start"
        /// vCPU 0 entered the guest for the first time.
        case guestEntry = "guest entry"
        /// The guest's first byte on the serial console.
        case firstConsoleByte = "first console byte"
        /// The guest wrote the milestone port (0xF6): its user space is ready.
        case userspaceReady = "userspace ready"
        /// The last vCPU left the guest.
        case end = "end"
    }

    private let times = Mutex<[Milestone: UInt64]>([:])

    public init() { record(.vmmStart) }

    public static var now: UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Records `milestone` now, unless it was recorded before.
    public func record(_ milestone: Milestone) {
        // Called for every console byte (first console byte): only the first call reads the clock.
        times.withLock { times in
            if times[milestone] == nil { times[milestone] = Self.now }
        }
    }

    /// How long after the VMM start each recorded milestone came, in order.
    public var sinceStart: [(milestone: Milestone, after: Duration)] {
        let recorded = times.withLock { $0 }
        guard let start = recorded[.vmmStart] else { return [] }
        return Milestone.allCases.compactMap { milestone in
            recorded[milestone].map { (milestone, .nanoseconds(Int64($0 &- start))) }
        }
    }
}

/// What one vCPU did during a run.
public struct VCPUReport: Sendable {
    public let index: Int
    public let statistics: ExitStatistics
    /// Time inside the KVM_RUN ioctl: the guest running (and KVM handling what needs no exit to us).
    public let timeInKVMRun: Duration
    /// Time in this process between KVM_RUN calls: dispatching exits, device emulation.
    public let timeInVMM: Duration
}

/// `--stats`: the table printed when a run ends.
public enum StatisticsTable {
    public static func render(_ report: RunReport, milestones: BootMilestones?, memory: ResidentMemory? = nil) -> String {
        render(duration: report.duration, statistics: report.statistics, vcpus: report.vcpus, milestones: milestones, memory: memory)
    }

    public static func render(
        duration: Duration, statistics: ExitStatistics, vcpus: [VCPUReport], milestones: BootMilestones?,
        memory: ResidentMemory? = nil
    ) -> String {
        let report = (duration: duration, statistics: statistics, vcpus: vcpus)
        var lines = ["swiftkvm statistics (\(seconds(report.duration)) s of guest run)"]
        lines.append(left("  exits by reason", 27) + report.vcpus.map { right("vcpu\($0.index)", 14) }.joined() + right("total", 14))
        let rows: [(String, (ExitStatistics) -> Int)] = [
            ("io in", \.portReads), ("io out", \.portWrites), ("mmio read", \.mmioReads), ("mmio write", \.mmioWrites),
            ("hlt", \.halts), ("interrupted", \.interruptions), ("other", \.other), ("total", \.total),
        ]
        for (name, value) in rows {
            lines.append(
                left("    " + name, 27) + report.vcpus.map { right(grouped(value($0.statistics)), 14) }.joined()
                    + right(grouped(value(report.statistics)), 14))
        }
        lines.append("  exits by device")
        let devices = report.statistics.deviceExits.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        let unclaimed = report.statistics.unclaimedPortAccesses + report.statistics.unclaimedMMIOAccesses
        for (device, count) in devices + [("(no device: unclaimed)", unclaimed)] {
            lines.append(left("    " + device, 55) + right(grouped(count), 14))
        }
        lines.append(left("  time per vCPU", 27) + right("in KVM_RUN", 14) + right("in the VMM", 14))
        for vcpu in report.vcpus {
            let total = vcpu.timeInKVMRun + vcpu.timeInVMM
            let share = total > .zero ? Int((vcpu.timeInKVMRun / total) * 100) : 0
            lines.append(
                left("    vcpu\(vcpu.index)", 27) + right("\(seconds(vcpu.timeInKVMRun)) s", 14)
                    + right("\(seconds(vcpu.timeInVMM)) s", 14) + "  (\(share)% in KVM_RUN)")
        }
        if let milestones {
            lines.append("  milestones (since the VMM start)")
            for (milestone, after) in milestones.sinceStart {
                lines.append(left("    " + milestone.rawValue, 27) + right("\(seconds(after)) s", 14))
            }
        }
        if let memory {
            func mebibytes(_ bytes: UInt64) -> String {
                let tenths = (bytes * 10 + (1 << 19)) >> 20
                return "\(tenths / 10).\(tenths % 10) MiB"
            }
            lines.append("  resident memory (last sample, /proc/self/smaps)")
            lines.append(left("    VMM (all but guest RAM)", 27) + right(mebibytes(memory.overhead), 14))
            if let peak = memory.peakOverhead { lines.append(left("    VMM, peak while running", 27) + right(mebibytes(peak), 14)) }
            lines.append(left("    VMM, anonymous", 27) + right(mebibytes(memory.anonymousOverhead), 14) + "  (the rest: pages of shared libraries)")
            lines.append(left("    guest RAM", 27) + right(mebibytes(memory.guest), 14))
            if let peak = memory.peakTotal { lines.append(left("    peak total (VmHWM)", 27) + right(mebibytes(peak), 14)) }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Seconds with three decimals.
    static func seconds(_ duration: Duration) -> String {
        let (whole, attoseconds) = duration.components
        let milliseconds = max(0, attoseconds / 1_000_000_000_000_000)
        let fraction = String(milliseconds)
        return "\(whole).\(String(repeating: "0", count: max(0, 3 - fraction.count)))\(fraction)"
    }

    /// 1234567 as "1,234,567".
    static func grouped(_ value: Int) -> String {
        let digits = Array(String(value))
        var result: [Character] = []
        for (index, digit) in digits.enumerated() {
            if index > 0 && digit != "-" && (digits.count - index) % 3 == 0 { result.append(",") }
            result.append(digit)
        }
        return String(result)
    }

    static func left(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }
    static func right(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - text.count)) + text }
}
