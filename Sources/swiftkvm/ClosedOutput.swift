import Glibc
import Synchronization

/// Guest console bytes to a file descriptor (standard output) that the reader may close: once a
/// write fails with EPIPE (`swiftkvm run … | head -c 5`; SIGPIPE is ignored, see `ignoreSIGPIPE`),
/// the bytes that follow are counted, not written, and the guest runs on to its normal end with
/// its disks synced. `droppedReport` is the one line to print at the end.
final class ClosingAwareOutput: Sendable {
    static let standardOutput = ClosingAwareOutput(descriptor: STDOUT_FILENO)

    let descriptor: Int32
    private let closed = Atomic<Bool>(false)
    private let dropped = Atomic<Int>(0)

    init(descriptor: Int32) { self.descriptor = descriptor }

    /// Writes `byte`, unless the reader has gone.
    func write(_ byte: UInt8) {
        guard !closed.load(ordering: .relaxed) else {
            dropped.add(1, ordering: .relaxed)
            return
        }
        var value = byte
        while Glibc.write(descriptor, &value, 1) < 0 {
            if errno == EINTR { continue }
            // EPIPE: nobody reads any more. Any other error (EIO on a hung-up terminal, ENOSPC on
            // a full disk) is not going to heal either: stop writing rather than retry per byte.
            closed.store(true, ordering: .relaxed)
            dropped.add(1, ordering: .relaxed)
            return
        }
    }

    /// How many console bytes were not written since the output closed.
    var droppedBytes: Int { dropped.load(ordering: .relaxed) }

    /// The line for standard error when bytes were dropped, else nil.
    var droppedReport: String? {
        guard closed.load(ordering: .relaxed) else { return nil }
        return "standard output was closed: \(droppedBytes) bytes of guest console output were not written"
    }

    /// A closed pipe must not kill the VMM (SIGPIPE's default action) before it syncs its disks and
    /// restores the terminal: the failed write returns EPIPE instead, which `write` handles.
    static func ignoreSIGPIPE() {
        Glibc.signal(SIGPIPE, SIG_IGN)
    }
}
