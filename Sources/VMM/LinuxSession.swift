import Dispatch
import Glibc
import Synchronization

/// A Linux guest driven through its serial console, for tests: boot it, wait for text on the
/// console (always with a deadline), type lines, collect the output, and see how it ended.
///
/// ```swift
/// let session = try LinuxSession(LinuxGuestConfiguration(kernelPath: kernel, initrdPath: initrd))
/// try session.waitFor("Run /init as init process", timeout: .seconds(600))
/// try session.send("uname -r")
/// let reply = try session.waitFor("\n# ", timeout: .seconds(60))
/// let report = try session.waitForEnd(timeout: .seconds(60))
/// ```
public final class LinuxSession: @unchecked Sendable {
    /// Why waiting on the console failed.
    public enum WaitError: Error, CustomStringConvertible {
        /// The text did not appear in time; `output` is everything the guest printed so far.
        case timedOut(waitingFor: String, output: String)
        /// The guest ended before the text appeared.
        case guestEnded(GuestOutcome, waitingFor: String, output: String)

        public var description: String {
            switch self {
            case .timedOut(let text, let output):
                "'\(text)' did not appear on the console in time; the last output was: \(output.suffix(2000))"
            case .guestEnded(let outcome, let text, let output):
                "\(outcome) before '\(text)' appeared; the last output was: \(output.suffix(2000))"
            }
        }
    }

    public let guest: LinuxGuest
    private let state = Mutex<(output: [UInt8], searchFrom: Int, report: RunReport?, error: VMMError?)>(([], 0, nil, nil))
    private let ended = DispatchSemaphore(value: 0)

    /// Builds the guest and starts it on a thread of its own.
    public init(_ configuration: LinuxGuestConfiguration) throws(VMMError) {
        var sink: ((UInt8) -> Void)?
        guest = try LinuxGuest(configuration) { byte in sink?(byte) }
        sink = { [unowned self] byte in self.state.withLock { $0.output.append(byte) } }
        try OSThread.detached(name: "linux-session") { [self] in
            let result = Result { () throws(VMMError) -> RunReport in try guest.run() }
            state.withLock { current in
                switch result {
                case .success(let report): current.report = report
                case .failure(let error): current.error = error
                }
            }
            ended.signal()
        }
    }

    /// Everything the guest printed so far.
    public var output: String { String(decoding: state.withLock { $0.output }, as: UTF8.self) }

    /// Waits until `text` appears in the output after the previous match, and returns the output
    /// from the previous match up to and including it. Throws if the deadline passes or the guest
    /// ends first.
    @discardableResult
    public func waitFor(_ text: String, timeout: Duration) throws -> String {
        let needle = Array(text.utf8)
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            let (found, ending) = state.withLock { current -> (String?, GuestOutcome?) in
                if let range = Self.find(needle, in: current.output, from: current.searchFrom) {
                    let piece = String(decoding: current.output[current.searchFrom..<range.upperBound], as: UTF8.self)
                    current.searchFrom = range.upperBound
                    return (piece, nil)
                }
                if let error = current.error { return (nil, .vmmError(error.description)) }
                return (nil, current.report?.outcome)
            }
            if let found { return found }
            if let ending { throw WaitError.guestEnded(ending, waitingFor: text, output: output) }
            if clock.now >= deadline { throw WaitError.timedOut(waitingFor: text, output: output) }
            usleep(10_000)
        }
    }

    /// Types `line` and a carriage return into the guest's console, waiting while its FIFO is full
    /// or its driver is not reading the port yet.
    public func send(_ line: String, newline: Bool = true) {
        var bytes = Array(line.utf8)
        if newline { bytes.append(0x0D) }
        ConsoleInputPump.feed(bytes, to: { [guest] in guest.machine.state == .running && guest.serial.isReceiving ? guest.serial.enqueueInput($0) : 0 }, until: {
            state.withLock { $0.report != nil || $0.error != nil }
        })
    }

    /// Waits for the guest to end and returns its report; on timeout the guest is stopped.
    public func waitForEnd(timeout: Duration) throws(VMMError) -> RunReport {
        if ended.wait(timeout: .after(timeout)) == .timedOut {
            guest.machine.requestStop(.timedOut)
            ended.wait()
        }
        ended.signal()  // later calls return at once
        let (report, error) = state.withLock { ($0.report, $0.error) }
        if let error { throw error }
        guard let report else { throw .configuration("the guest thread ended without a report") }
        return report
    }

    /// Stops the guest (if it still runs) and waits for it.
    public func stop() {
        guest.machine.requestStop(.stopped)
        _ = try? waitForEnd(timeout: .seconds(30))
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Range<Int>? {
        guard !needle.isEmpty, haystack.count - start >= needle.count else { return nil }
        var index = start
        while index + needle.count <= haystack.count {
            if haystack[index] == needle[0], haystack[index..<index + needle.count].elementsEqual(needle) {
                return index..<index + needle.count
            }
            index += 1
        }
        return nil
    }
}
