import FoundationEssentials
import Glibc
import VMConfig
import VMM
import VMStore

/// What the commands on kept VMs share: the store, errors worded for the command line, the
/// VMM's control socket, spawning a VMM, and waiting for one to end.
enum Kept {
    static var store: VMStore { VMStore.fromEnvironment() }

    /// A store error as the command line reports it: a bad name is bad input (2), the rest fail (1).
    static func cli(_ error: StoreError) -> Error {
        error.kind == .badName ? UsageError(error.description) : RuntimeFailure(error.description)
    }

    static func folder(_ name: String) throws -> VMFolder {
        do { return try store.existing(name) } catch { throw cli(error) }
    }

    /// The folder of a VM whose VMM runs now, or why not.
    static func running(_ name: String) throws -> (VMFolder, VMStatus) {
        let folder = try folder(name)
        let status = folder.status()
        guard status.isRunning else {
            let why = status.record.lastStop.map { " (last stop: \($0.detail))" } ?? ""
            throw RuntimeFailure("'\(name)' is not running\(why): 'swiftkvm start \(name)' starts it")
        }
        return (folder, status)
    }

    /// A request to the VM's control API; a refusal (4xx) is a failure with the API's message.
    @discardableResult
    static func request(_ folder: VMFolder, _ method: String, _ path: String, json: String? = nil) throws -> ControlClient.Response {
        let response: ControlClient.Response
        do { response = try ControlClient(socketPath: folder.controlSocketPath).request(method, path, json: json) } catch {
            throw RuntimeFailure("'\(folder.name)': its VMM does not answer on \(folder.controlSocketPath): \(error.description)")
        }
        return response
    }

    static func action(_ folder: VMFolder, _ action: String) throws -> ControlClient.Response {
        try request(folder, "PUT", "/actions", json: #"{"action_type": "\#(action)"}"#)
    }

    /// Waits until no VMM holds the VM's lock; false when `seconds` passed first.
    static func waitUntilStopped(_ folder: VMFolder, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while folder.isLocked {
            if Date() >= deadline { return false }
            usleep(50_000)
        }
        return true
    }

    /// The path of this swiftkvm binary (to spawn the VMM with the same one).
    static var executable: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Spawns `swiftkvm vmm NAME …` in a session of its own (it outlives this process), standard
    /// input from /dev/null, standard output and error into the VM's vmm.log, and the write end of
    /// a pipe as descriptor 3; returns its pid and the read end.
    static func spawnVMM(_ folder: VMFolder, arguments: [String]) throws -> (pid: pid_t, ready: Int32) {
        var pipeEnds: [Int32] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else { throw RuntimeFailure("pipe failed: \(String(cString: strerror(errno)))") }
        for end in pipeEnds { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        let log = open(folder.vmmLogPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            close(pipeEnds[1])
            if log >= 0 { close(log) }
            if null >= 0 { close(null) }
        }
        guard log >= 0, null >= 0 else {
            close(pipeEnds[0])
            throw RuntimeFailure("\(folder.vmmLogPath): cannot be opened: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, null, 0)
        posix_spawn_file_actions_adddup2(&actions, log, 1)
        posix_spawn_file_actions_adddup2(&actions, log, 2)
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 3)
        // Nothing else this process has open goes along: a caller's pipe held open by the VMM
        // would never see its end (a script reading `swiftkvm start`'s output would hang).
        // (posix_spawn_file_actions_addclosefrom_np is not in Swift's Glibc module.)
        markInheritedDescriptorsCloseOnExec()
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        // POSIX_SPAWN_SETSID (glibc's 0x80): a session of its own, away from this terminal.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | 0x80))
        let command = [executable, "vmm", folder.name, "--ready-fd", "3"] + arguments
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, command[0], &actions, &attributes, &argv, environ)
        guard result == 0 else {
            close(pipeEnds[0])
            throw RuntimeFailure("cannot start the VMM (\(command[0])): \(String(cString: strerror(result)))")
        }
        return (pid, pipeEnds[0])
    }

    /// SIGINT, SIGTERM and SIGHUP unblocked and at their default action, for the commands that run
    /// until interrupted (`--follow`, `console`, `wait`): a parent that started this process with
    /// them blocked (a test runner's thread) must still be able to end it.
    static func defaultSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            sigaddset(&set, signal)
            Glibc.signal(signal, SIG_DFL)
        }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// Sets FD_CLOEXEC on every descriptor above standard error that this process has open.
    static func markInheritedDescriptorsCloseOnExec() {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for entry in entries {
            guard let fd = Int32(entry), fd > 2 else { continue }
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0, flags & FD_CLOEXEC == 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    /// A line from `fd` within `seconds`; nil at EOF or when the time passed (`timedOut` says which).
    static func readLine(_ fd: Int32, seconds: Double) -> (line: String?, timedOut: Bool) {
        let deadline = Date().addingTimeInterval(seconds)
        var line: [UInt8] = []
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return (nil, true) }
            var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let polled = poll(&ready, 1, Int32(min(left * 1000, 1000) + 1))
            if polled < 0, errno == EINTR { continue }
            if polled <= 0 { continue }
            var byte: UInt8 = 0
            let count = read(fd, &byte, 1)
            if count < 0, errno == EINTR { continue }
            if count <= 0 { return (line.isEmpty ? nil : String(decoding: line, as: UTF8.self), false) }
            if byte == 0x0A { return (String(decoding: line, as: UTF8.self), false) }
            line.append(byte)
        }
    }

    /// The last `count` lines of a text.
    static func lastLines(_ bytes: [UInt8], _ count: Int) -> [String] {
        let text = String(decoding: bytes, as: UTF8.self)
        return text.split(separator: "\n", omittingEmptySubsequences: true).suffix(count).map(String.init)
    }

    static func describe(seconds: Double) -> String {
        let total = max(0, Int(seconds))
        if total < 60 { return "\(total)s" }
        if total < 3600 { return "\(total / 60)m\(total % 60)s" }
        if total < 86400 { return "\(total / 3600)h\(total % 3600 / 60)m" }
        return "\(total / 86400)d\(total % 86400 / 3600)h"
    }

    static func describe(bytes: Int) -> String { CommandLineValues.describe(size: bytes) }

    /// `bytes` written straight to standard output (unbuffered, as FileHandle.standardOutput wrote);
    /// stops quietly if the output went away.
    static func writeOut(_ bytes: [UInt8]) {
        var done = 0
        while done < bytes.count {
            let written = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress! + done, bytes.count - done) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { return }
            done += written
        }
    }

    /// `text` cut or padded with spaces to `length` characters (String.padding(toLength:withPad:startingAt:)).
    static func padded(_ text: String, to length: Int) -> String {
        let count = text.count
        if count >= length { return String(text.prefix(length)) }
        return text + String(repeating: " ", count: length - count)
    }

    /// `value` (dictionaries with String keys, arrays, strings, integers, doubles, booleans) as
    /// JSONSerialization wrote it with [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]:
    /// two-space indents, `"key" : value`, keys sorted; "{}" for what is not JSON.
    static func json(_ value: Any) -> String {
        var out = ""
        guard writeJSON(value, into: &out, indent: 0) else { return "{}" }
        return out
    }

    private static func writeJSON(_ value: Any, into out: inout String, indent: Int) -> Bool {
        func pad(_ level: Int) -> String { String(repeating: "  ", count: level) }
        switch value {
        case let text as String:
            out += jsonString(text)
        case let flag as Bool:
            out += flag ? "true" : "false"
        case let number as Int:
            out += String(number)
        case let number as Int32:
            out += String(number)
        case let number as UInt32:
            out += String(number)
        case let number as UInt64:
            out += String(number)
        case let number as Int64:
            out += String(number)
        case let number as UInt:
            out += String(number)
        case let number as Double:
            guard number.isFinite else { return false }
            var text = number.description
            if text.hasSuffix(".0") { text.removeLast(2) }
            out += text
        case let object as [String: Any]:
            out += "{\n"
            var first = true
            for key in object.keys.sorted() {
                if !first { out += ",\n" }
                first = false
                out += pad(indent + 1) + jsonString(key) + " : "
                guard writeJSON(object[key]!, into: &out, indent: indent + 1) else { return false }
            }
            out += "\n" + pad(indent) + "}"
        case let array as [Any]:
            out += "[\n"
            var first = true
            for element in array {
                if !first { out += ",\n" }
                first = false
                out += pad(indent + 1)
                guard writeJSON(element, into: &out, indent: indent + 1) else { return false }
            }
            out += "\n" + pad(indent) + "]"
        default:
            return false
        }
        return true
    }

    private static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{00}"..."\u{1F}":
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
