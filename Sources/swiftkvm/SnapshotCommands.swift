import ArgumentParser
import ControlAPI
import FoundationEssentials
import Glibc
import VMConfig
import VMM

/// The two files of a snapshot folder: `DIR/state` and `DIR/memory`.
enum SnapshotFolder {
    static func statePath(_ directory: String) -> String { "\(directory)/state" }
    static func memoryPath(_ directory: String) -> String { "\(directory)/memory" }
}

/// `swiftkvm snapshot --api-socket PATH DIR`: a full snapshot of the VM behind a control socket.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Write a full snapshot of a running VM (through its control socket) into a folder.",
        discussion: """
            Pauses the VM (PATCH /vm), writes DIR/state and DIR/memory (PUT /snapshot/create), \
            and resumes it, unless it was paused already or --leave-paused is given. Restore with \
            'swiftkvm restore DIR' or PUT /snapshot/load on 'swiftkvm serve'. See docs/snapshots.md.

            Example:
              swiftkvm run --firmware Firmware/build/counter-user.bin --mode user --api-socket /tmp/vm.sock &
              swiftkvm snapshot --api-socket /tmp/vm.sock /tmp/snap
              swiftkvm restore /tmp/snap
            """)

    @Option(name: .long, help: ArgumentHelp("The VM's control API socket (swiftkvm run/serve --api-socket).", valueName: "path"))
    var apiSocket: String

    @Flag(name: .long, help: "Leave the VM paused after the snapshot.")
    var leavePaused = false

    @Argument(help: ArgumentHelp("The folder to write (created if missing).", valueName: "DIR"))
    var directory: String

    func run() throws {
        let folder = absolutePath(directory)
        if mkdir(folder, 0o700) != 0, errno != EEXIST { throw RuntimeFailure("\(folder): \(String(cString: strerror(errno)))") }
        let client = UnixHTTPClient(path: apiSocket)
        let info = try client.request("GET", "/")
        guard info.status == 200 else { throw RuntimeFailure("GET /: \(info.fault)") }
        let wasRunning = info.body.contains(#""state":"Running""#)
        if wasRunning {
            let paused = try client.request("PATCH", "/vm", body: #"{"state":"Paused"}"#)
            guard paused.status == 204 else { throw RuntimeFailure("pausing: \(paused.fault)") }
        }
        struct Create: Encodable { let snapshot_type: String, snapshot_path: String, mem_file_path: String }
        let body = try JSONEncoder().encode(
            Create(snapshot_type: "Full", snapshot_path: SnapshotFolder.statePath(folder), mem_file_path: SnapshotFolder.memoryPath(folder)))
        let created = try client.request("PUT", "/snapshot/create", body: String(decoding: body, as: UTF8.self))
        if wasRunning, !leavePaused { _ = try? client.request("PATCH", "/vm", body: #"{"state":"Resumed"}"#) }
        guard created.status == 204 else { throw RuntimeFailure("the snapshot failed: \(created.fault)") }
    }
}

/// `swiftkvm restore DIR`: restores a snapshot and runs the VM in the foreground, as `swiftkvm
/// run` does (the console is this terminal; the exit status is the guest's).
struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a snapshot (DIR/state, DIR/memory) and run the VM in the foreground.",
        discussion: """
            The guest continues exactly where it was paused. The memory file is mapped MAP_PRIVATE: \
            pages load when the guest touches them and the file is never changed, so one snapshot \
            can be restored many times. A state file that is damaged, of another version, or from a \
            host with other CPU features or another TSC frequency is refused with one line.
            """)

    @Argument(help: ArgumentHelp("The folder 'swiftkvm snapshot' wrote.", valueName: "DIR"))
    var directory: String

    @Option(name: .long, help: ArgumentHelp("Answer the control API on this Unix socket while the VM runs.", valueName: "path"))
    var apiSocket: String?

    @Flag(name: .long, help: "Leave the restored VM paused until the API resumes it.")
    var paused = false

    @Option(name: .long, help: ArgumentHelp("Stop the guest this many seconds after the restore (default: no limit).", valueName: "seconds"))
    var timeLimit: Double?

    @Flag(name: .long, help: "At the end, print exits by reason and by device and time per vCPU on standard error.")
    var stats = false

    @Option(name: .long, help: ArgumentHelp("The seccomp filter, as for 'swiftkvm run': on (the default) once the restored machine is built (with --api-socket, the VMM's own threads may also write snapshot files; its vCPU and device threads get the strict list), or off, for debugging.", valueName: "on|off"))
    var seccomp: String = "on"

    func run() throws {
        Glibc.signal(SIGPIPE, SIG_IGN)
        _ = try SharedOptions.seccomp(seccomp)
        let limit = try SharedOptions.timeLimit(timeLimit)
        let folder = absolutePath(directory)
        let snapshot: MachineSnapshot
        let configuration: VMConfiguration
        do {
            snapshot = try MachineSnapshot(contentsOf: SnapshotFolder.statePath(folder))
            configuration = try ConfigurationFile.decode(snapshot.configuration)
        } catch let error as SnapshotError {
            throw UsageError(error.description)
        } catch {
            throw UsageError("\(SnapshotFolder.statePath(folder)): the saved configuration: \(error)")
        }
        let output: ConsoleOutputBuffer
        let events: EventLoop
        let stopper: SignalStopper
        do {
            events = try EventLoop()
            stopper = try SignalStopper(loop: events)
            output = try ConsoleOutputBuffer(descriptor: STDOUT_FILENO)
            try events.start()
        } catch {
            throw RuntimeFailure(error.description)
        }
        let instance: VMInstance
        do {
            instance = try VMInstance(
                restoring: snapshot, configuration: configuration, memoryPath: SnapshotFolder.memoryPath(folder), resume: !paused,
                policy: RunPolicy(timeLimit: limit), events: events
            ) { output.append($0) }
        } catch {
            throw UsageError(error.description)
        }
        // The filter goes on once the machine is built from the snapshot (the memory file mapped,
        // the disks opened, KVM's state written), right before its vCPUs start.
        try Run.run(instance, apiSocket: apiSocket, seccomp: seccomp == "on", output: output, stopper: stopper, paused: false, stats: stats)
    }
}

/// Just enough HTTP/1.1 over a Unix socket for `swiftkvm snapshot`: one request per connection.
struct UnixHTTPClient {
    let path: String

    struct Response {
        let status: Int
        let body: String
        /// The server's `fault_message`, or the body.
        var fault: String {
            struct Fault: Decodable { let fault_message: String? }
            if let message = (try? JSONDecoder().decode(Fault.self, from: Data(body.utf8)))?.fault_message {
                return message
            }
            return body.isEmpty ? "status \(status)" : body
        }
    }

    func request(_ method: String, _ target: String, body: String? = nil) throws -> Response {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RuntimeFailure("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw UsageError("--api-socket \(path): the path is too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw RuntimeFailure("--api-socket \(path): \(String(cString: strerror(errno)))") }
        let payload = Array((body ?? "").utf8)
        var text = "\(method) \(target) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: \(payload.count)\r\n"
        if body != nil { text += "Content-Type: application/json\r\n" }
        let message = Array((text + "\r\n").utf8) + payload
        var sent = 0
        while sent < message.count {
            let count = message.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { throw RuntimeFailure("--api-socket \(path): \(String(cString: strerror(errno)))") }
            sent += count
        }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received.count < 1 << 20 {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            received += buffer[0..<count]
        }
        let response = String(decoding: received, as: UTF8.self)
        // The head ends at the first blank line; everything after it is the body.
        let separator = response.firstRange(of: "\r\n\r\n")
        let head = separator.map { response[..<$0.lowerBound] } ?? response[...]
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let fields = statusLine.split(separator: " ")
        guard fields.count >= 2, let status = Int(fields[1]) else { throw RuntimeFailure("--api-socket \(path): no HTTP response") }
        return Response(status: status, body: separator.map { String(response[$0.upperBound...]) } ?? "")
    }
}
