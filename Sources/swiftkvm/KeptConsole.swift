import FoundationEssentials
import Glibc
import VMM
import VMStore

/// A terminal (or a pipe) attached to a kept VM's console socket.
enum KeptConsole {
    enum End {
        case detached
        /// The VM's console stream ended: the VM stopped.
        case ended
        /// Standard output went away (`| head`).
        case outputClosed
    }

    /// Copies the console to standard output until the VM ends or the user detaches (Ctrl-A d on
    /// a terminal). A writer types standard input into the guest.
    static func attach(_ folder: VMFolder, replay: ConsoleHub.Replay, readOnly: Bool) throws -> End {
        let fd: Int32
        do { fd = try ConsoleClient.attach(folder.consoleSocketPath, replay: replay, writer: !readOnly) } catch {
            throw RuntimeFailure("'\(folder.name)' console: \(error.description)")
        }
        defer { close(fd) }
        Glibc.signal(SIGPIPE, SIG_IGN)
        let terminal = HostTerminal()
        let detached = DetachFlag()
        if terminal.isTerminal {
            fputs("swiftkvm: attached to \(folder.name)'s console\(readOnly ? " (read-only)" : ""); Ctrl-A d detaches\r\n", stderr)
            terminal.enterRawMode()
        }
        if terminal.isTerminal || !readOnly {
            let interactive = terminal.isTerminal
            DetachedThread.start(stackSize: 256 << 10) {
                pumpInput(into: fd, interpretEscape: interactive, forward: !readOnly, detached: detached)
            }
        }
        var buffer = [UInt8](repeating: 0, count: 16384)
        var outputClosed = false
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            var done = 0
            while done < count {
                let written = buffer.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress! + done, count - done) }
                if written < 0, errno == EINTR { continue }
                guard written > 0 else { break }
                done += written
            }
            if done < count {
                outputClosed = true
                break
            }
        }
        HostTerminal.restore()
        if terminal.isTerminal { fputs("\r\n", stderr) }
        return detached.isSet ? .detached : outputClosed ? .outputClosed : .ended
    }

    final class DetachFlag: @unchecked Sendable {
        private let lock = PlainLock()
        private var value = false
        var isSet: Bool {
            lock.lock()
            defer { lock.unlock() }
            return value
        }
        func set() {
            lock.lock()
            value = true
            lock.unlock()
        }
    }

    /// Standard input to the socket; on a terminal Ctrl-A d detaches and Ctrl-A Ctrl-A sends one Ctrl-A.
    static func pumpInput(into fd: Int32, interpretEscape: Bool, forward: Bool, detached: DetachFlag) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var escaped = false
        while true {
            let count = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { return }
            var out: [UInt8] = []
            for byte in buffer[0..<count] {
                guard interpretEscape else {
                    out.append(byte)
                    continue
                }
                if escaped {
                    escaped = false
                    switch byte {
                    case UInt8(ascii: "d"), UInt8(ascii: "D"), 0x04:
                        detached.set()
                        if forward, !out.isEmpty { UnixSockets.writeAll(fd, out) }
                        shutdown(fd, Int32(SHUT_RDWR))
                        return
                    case HostTerminal.escape: out.append(byte)
                    default: break
                    }
                } else if byte == HostTerminal.escape {
                    escaped = true
                } else {
                    out.append(byte)
                }
            }
            if forward, !out.isEmpty, !UnixSockets.writeAll(fd, out) { return }
        }
    }
}
