import ArgumentParser
import ControlAPI
import Dispatch
import Glibc
import Synchronization
import VMConfig
import VMM

/// `swiftkvm serve`: a VMM started empty, configured and started through its control API, as
/// Firecracker is (`PUT /boot-source`, `/machine-config`, `/drives/{id}`, then `InstanceStart`).
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start an empty VMM that is configured and started through its control API.",
        discussion: """
            Listens on --api-socket (HTTP/1.1 + JSON; see docs/api.md and docs/openapi.yaml). PUT \
            /boot-source, /machine-config and /drives/{drive_id} describe the VM; PUT /actions \
            {"action_type": "InstanceStart"} boots it; or PUT /snapshot/load restores a snapshot \
            instead (see docs/snapshots.md). The guest's console is this terminal. The VMM \
            exits when the VM ends, with the status 'swiftkvm run' would give; SIGINT or SIGTERM \
            before the start exits at once.

            Example:
              swiftkvm serve --api-socket /tmp/vm.sock &
              curl --unix-socket /tmp/vm.sock -X PUT http://localhost/boot-source \\
                   -d '{"kernel_image_path": "bzImage", "boot_args": "console=ttyS0"}'
              curl --unix-socket /tmp/vm.sock -X PUT http://localhost/actions -d '{"action_type": "InstanceStart"}'
            """)

    @Option(name: .long, help: ArgumentHelp("The control API's Unix socket (created mode 0600, removed on exit).", valueName: "path"))
    var apiSocket: String

    @Option(name: .long, help: ArgumentHelp("Stop the guest this many seconds after it starts (default: no limit).", valueName: "seconds"))
    var timeLimit: Double?

    @Flag(name: .long, help: "At the end, print exits by reason and by device and time per vCPU on standard error.")
    var stats = false

    @Option(name: .long, help: ArgumentHelp("The seccomp filter once the guest runs: on (the default; the VMM's own threads may still read files and rebuild the VM after a reset, its vCPU and device threads get the strict list) or off, for debugging.", valueName: "on|off"))
    var seccomp: String = "on"

    func run() throws {
        Glibc.signal(SIGPIPE, SIG_IGN)
        _ = try SharedOptions.seccomp(seccomp)
        let limit = try SharedOptions.timeLimit(timeLimit)
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
        let handoff = Handoff()
        let policy = RunPolicy(timeLimit: limit)
        let controller = InstanceController(
            output: output,
            makeInstance: { [seccomp] configuration throws(VMMError) in
                let instance = try VMInstance(configuration, policy: policy, events: events) { output.append($0) }
                if seccomp == "on" { instance.beforeFirstBoot { SeccompSetup.install(.controlled) } }
                return instance
            },
            makeRestoredInstance: { [seccomp] snapshot, configuration, memoryPath, resume throws(SnapshotError) in
                let instance = try VMInstance(
                    restoring: snapshot, configuration: configuration, memoryPath: memoryPath, resume: resume, policy: policy, events: events
                ) { output.append($0) }
                if seccomp == "on" { instance.beforeFirstBoot { SeccompSetup.install(.controlled) } }
                return instance
            },
            onStart: { handoff.give($0) })
        let server = ControlServer(path: apiSocket, controller: controller)
        do { try server.start() } catch { throw UsageError("--api-socket \(error)") }
        defer { server.stop() }
        // Before the start a signal ends the VMM at once; after it, it stops the VM cleanly.
        stopper.watch { handoff.cancel() }
        guard let instance = handoff.wait() else {
            throw ExitCode(128 + (stopper.signal ?? SIGTERM))
        }
        try Run.run(instance, output: output, stopper: stopper, paused: false, stats: stats)
    }
}

/// The started instance, from the API thread to the main thread (or a cancellation by signal).
final class Handoff: Sendable {
    private let state = Mutex<(instance: VMInstance?, cancelled: Bool)>((nil, false))
    private let ready = DispatchSemaphore(value: 0)

    func give(_ instance: VMInstance) {
        state.withLock { $0.instance = instance }
        ready.signal()
    }

    func cancel() {
        state.withLock { $0.cancelled = true }
        ready.signal()
    }

    /// The instance, or nil when cancelled first.
    func wait() -> VMInstance? {
        ready.wait()
        return state.withLock { $0.cancelled && $0.instance == nil ? nil : $0.instance }
    }
}
