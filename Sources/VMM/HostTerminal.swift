import Glibc
import Synchronization

/// The user's terminal while a guest owns the console.
///
/// When standard input is a terminal it is put in raw mode — every key goes to the guest, Ctrl-C
/// included — and restored on every way out: a normal return, `restore()` from a signal path, or
/// process exit (`atexit`). Ctrl-A then `x` asks to quit; Ctrl-A Ctrl-A sends one Ctrl-A.
public final class HostTerminal: @unchecked Sendable {
    /// The escape key, Ctrl-A, as in QEMU and screen.
    public static let escape: UInt8 = 0x01

    private static let saved = Mutex<termios?>(nil)
    public let isTerminal: Bool

    public init(descriptor: Int32 = STDIN_FILENO) {
        isTerminal = isatty(descriptor) != 0
    }

    /// Switches the terminal to raw mode (no echo, no line editing, no signals from keys).
    public func enterRawMode() {
        guard isTerminal else { return }
        var original = termios()
        guard tcgetattr(STDIN_FILENO, &original) == 0 else { return }
        let first = Self.saved.withLock { saved -> Bool in
            guard saved == nil else { return false }
            saved = original
            return true
        }
        if first { atexit { HostTerminal.restore() } }
        var raw = original
        cfmakeraw(&raw)
        raw.c_oflag |= tcflag_t(OPOST | ONLCR)  // keep "\n" → "\r\n" on output, as the guest expects a terminal
        tcsetattr(STDIN_FILENO, TCSANOW, &raw)
    }

    /// Puts the terminal back as it was. Safe to call more than once, from any thread.
    public static func restore() {
        guard let original = saved.withLock({ $0 }) else { return }
        var settings = original
        tcsetattr(STDIN_FILENO, TCSANOW, &settings)
    }
}

/// Reads the host's standard input on a thread of its own and hands the bytes to the guest's
/// console, waiting while the guest's receive FIFO is full or its driver is not reading yet.
///
/// Piped input waits as long as it takes, so a script loses nothing. Typed input (a terminal)
/// waits at most `typingPatience`, then is dropped as a real UART's overrun would drop it: a
/// guest that never reads its console must not keep Ctrl-A x from working. On a terminal,
/// Ctrl-A x calls `onQuit`. At the end of a pipe or file the pump just stops reading: the guest
/// goes on until it ends itself.
public final class ConsoleInputPump: @unchecked Sendable {
    /// Offers bytes to the guest; returns how many it took.
    public typealias Sink = ([UInt8]) -> Int

    private let sink: Sink
    private let onQuit: () -> Void
    private let interpretEscape: Bool
    private let stopped = Atomic<Bool>(false)

    public init(interpretEscape: Bool, sink: @escaping Sink, onQuit: @escaping () -> Void) {
        self.sink = sink
        self.onQuit = onQuit
        self.interpretEscape = interpretEscape
    }

    /// Starts the reader thread. It ends at end of input, on a read error, or after `stop()` once
    /// input arrives (a blocked `read` cannot be interrupted portably; the thread is detached).
    public func start(descriptor: Int32 = STDIN_FILENO) throws(VMMError) {
        try OSThread.detached(name: "console-input") { [self] in pump(descriptor) }
    }

    public func stop() { stopped.store(true, ordering: .relaxed) }

    private func pump(_ descriptor: Int32) {
        var buffer = [UInt8](repeating: 0, count: 256)
        var sawEscape = false
        while !stopped.load(ordering: .relaxed) {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(count)
            for byte in buffer.prefix(count) {
                guard interpretEscape else { bytes.append(byte); continue }
                if sawEscape {
                    sawEscape = false
                    if byte == UInt8(ascii: "x") || byte == UInt8(ascii: "X") {
                        deliver(bytes)  // what was typed before the escape still reaches the guest
                        onQuit()
                        return
                    }
                    if byte != HostTerminal.escape { continue }  // unknown escape: swallow it
                } else if byte == HostTerminal.escape {
                    sawEscape = true
                    continue
                }
                bytes.append(byte)
            }
            deliver(bytes)
        }
    }

    /// How long typed bytes wait for a guest that does not take them.
    public static let typingPatience: Duration = .seconds(1)

    private func deliver(_ bytes: [UInt8]) {
        let clock = ContinuousClock()
        let deadline = interpretEscape ? clock.now + Self.typingPatience : nil
        Self.feed(bytes, to: sink, until: { stopped.load(ordering: .relaxed) || deadline.map { clock.now >= $0 } == true })
    }

    /// Hands all of `bytes` to `sink`, waiting 1 ms at a time while the guest's FIFO is full, until
    /// everything is taken or `giveUp` says so.
    static func feed(_ bytes: [UInt8], to sink: Sink, until giveUp: () -> Bool) {
        var rest = bytes[...]
        while !rest.isEmpty, !giveUp() {
            let taken = sink(Array(rest))
            rest = rest.dropFirst(max(0, min(taken, rest.count)))
            if !rest.isEmpty { usleep(1000) }
        }
    }
}
