import ArgumentParser
import FoundationEssentials
import Glibc
import VMConfig
import VMM
import VMStore

// The commands on kept VMs: a folder per VM (see VMStore), one `swiftkvm vmm` process per
// running VM, and these commands talking to it through its sockets — never signals to a pid.

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Define a VM to keep, under a name, from the options of 'swiftkvm run'.",
        discussion: """
            Takes the options of 'swiftkvm run' that describe a VM (--kernel, --initrd, --cmdline, \
            --disk, --firmware, --mode, --memory, --cpus, …, or --config FILE) and saves the \
            configuration as the VM's definition. Names: 1 to 63 of a-z, 0-9, '.', '_', '-', \
            starting with a letter or digit. Nothing runs until 'swiftkvm start NAME'.

            Exit status: 0 defined; 1 the name is taken or the folder cannot be written; 2 bad input.

            Example:
              swiftkvm create web --kernel bzImage --initrd initrd.img --disk root.img --memory 512M
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("Options of 'swiftkvm run' that describe the VM.", valueName: "run-options"))
    var options: [String] = []

    func run() throws {
        if let problem = VMName.problem(with: name) { throw UsageError(problem) }
        let configuration = try KeptDefinition.configuration(from: options, command: "create")
        do { try Kept.store.create(name, configuration: configuration) } catch { throw Kept.cli(error) }
        let folder = try Kept.folder(name)
        EventLog(path: folder.eventLogPath).append("created")
        print("created \(name) (\(folder.dataPath))")
    }
}

/// A VM definition from `run` options (for `create` and `run --name`).
enum KeptDefinition {
    static func configuration(from options: [String], command: String) throws -> VMConfiguration {
        let parsed: Run
        do { parsed = try Run.parse(options) } catch {
            throw UsageError(Run.message(for: error) + " (see 'swiftkvm run --help' for the options)")
        }
        return try configuration(of: parsed, command: command)
    }

    static func configuration(of parsed: Run, command: String) throws -> VMConfiguration {
        let runPolicy: [(String, Bool)] = [
            ("--api-socket", parsed.apiSocket != nil), ("--trace", parsed.trace), ("--trace-file", parsed.traceFile != nil),
            ("--stats", parsed.stats), ("--print-config", parsed.printConfig),
        ]
        let given = runPolicy.filter(\.1).map(\.0)
        if !given.isEmpty {
            throw UsageError("\(command): \(given.joined(separator: ", ")) \(given.count == 1 ? "is" : "are") not for kept VMs (their control socket is in their folder)")
        }
        if let config = parsed.config {
            try parsed.checkNoVMOptions()
            return try Run.loadConfiguration(config)
        }
        return try parsed.configurationFromOptions()
    }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Forget a kept VM: its definition, state and logs (never its disk images).",
        discussion: "Refused while the VM runs. Exit status: 0 removed; 1 no such VM or it is running; 2 bad name.")

    @Argument(help: "The VM's name.")
    var name: String

    func run() throws {
        _ = try Kept.folder(name).status()  // a dead VMM's leftovers are recorded (and then removed)
        do { try Kept.store.remove(name) } catch { throw Kept.cli(error) }
        let unit = Autostart.unitPath(name)
        if access(unit, F_OK) == 0 { printError("note: its autostart unit \(unit) remains: 'swiftkvm autostart \(name) --disable' removes it") }
        print("removed \(name)")
    }
}

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a kept VM in the background; returns once its guest has been entered.",
        discussion: """
            Spawns the VM's VMM ('swiftkvm vmm NAME', in a session of its own) and waits until the \
            guest has been entered, or says why it could not be (the VMM's words, the console's \
            last lines). Two starts of one VM at once: exactly one wins, the other exits 3.

            Exit status: 0 started; 1 it failed to start; 3 it was running already; 2 bad input. \
            With --attach: as 'swiftkvm console', then the VM's exit status if it ended while attached.
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Flag(name: .long, help: "Then attach this terminal to its console (Ctrl-A d detaches).")
    var attach = false

    @Flag(name: .long, help: "Start it with the vCPUs paused ('swiftkvm resume NAME' lets them run).")
    var paused = false

    @Option(name: .long, help: ArgumentHelp("Stop the guest after this many seconds (default: no limit).", valueName: "seconds"))
    var timeLimit: Double?

    @Option(name: .long, help: ArgumentHelp("How long to wait for the guest to be entered (default: 300).", valueName: "seconds"))
    var timeout: Double = 300

    func run() throws {
        _ = try SharedOptions.timeLimit(timeLimit)
        guard timeout > 0, timeout < 1e9 else { throw UsageError("--timeout must be a positive number of seconds") }
        Kept.defaultSignals()
        let folder = try Kept.folder(name)
        try Self.start(folder, paused: paused, timeLimit: timeLimit, timeout: timeout, announce: !attach)
        if attach { try KeptAttach.attachUntilEnd(folder) }
    }

    static func start(_ folder: VMFolder, paused: Bool, timeLimit: Double?, timeout: Double, announce: Bool = true) throws {
        let status = folder.status()
        if status.isRunning {
            printError("'\(folder.name)' is running already" + (status.record.pid.map { " (pid \($0))" } ?? ""))
            throw ExitCode(3)
        }
        do { try VMStore.makeDirectories(folder.runtimePath) } catch { throw Kept.cli(error) }
        var arguments: [String] = []
        if paused { arguments.append("--paused") }
        if let timeLimit { arguments += ["--time-limit", String(timeLimit)] }
        let (pid, ready) = try Kept.spawnVMM(folder, arguments: arguments)
        defer { close(ready) }
        let (line, timedOut) = Kept.readLine(ready, seconds: timeout)
        if let line, line.hasPrefix("ok") {
            if announce { print("started \(folder.name) (pid \(pid))") }
            var reaped: Int32 = 0
            _ = waitpid(pid, &reaped, WNOHANG)
            return
        }
        if let line, line.hasPrefix("busy ") {
            var reaped: Int32 = 0
            _ = waitpid(pid, &reaped, 0)
            printError(String(line.dropFirst(5)))
            throw ExitCode(3)
        }
        if timedOut {
            throw RuntimeFailure("'\(folder.name)' did not enter its guest within \(Int(timeout)) s; it goes on starting ('swiftkvm info \(folder.name)', 'swiftkvm logs \(folder.name)')")
        }
        // It failed: the VMM's words, its stop, the console's last lines.
        var reaped: Int32 = 0
        _ = waitpid(pid, &reaped, 0)
        var why = line.map { $0.hasPrefix("error ") ? String($0.dropFirst(6)) : $0 } ?? "the VMM ended without a word"
        if line == nil, let stop = (try? folder.readRecord())?.lastStop { why = stop.detail }
        printError("'\(folder.name)' did not start: \(why)")
        let console = Kept.lastLines(CappedLog.tail(folder.consoleLogPath, bytes: 4096), 5)
        if !console.isEmpty { fputs("console (last lines):\n" + console.map { "  \($0)\n" }.joined(), stderr) }
        let vmm = Kept.lastLines(VMStore.read(folder.vmmLogPath) ?? [], 5).filter { !why.contains($0.replacingAll("swiftkvm: ", with: "")) }
        if !vmm.isEmpty { fputs("VMM (\(folder.vmmLogPath)):\n" + vmm.map { "  \($0)\n" }.joined(), stderr) }
        throw ExitCode(1)
    }
}

/// `start --attach` and `run --name`: the console until the VM ends (its exit status) or the user detaches (0).
enum KeptAttach {
    static func attachUntilEnd(_ folder: VMFolder) throws {
        let end: KeptConsole.End
        do { end = try KeptConsole.attach(folder, replay: .run, readOnly: false) } catch {
            // It ended before we attached (a guest that exits at once; its VMM may still be writing
            // down its stop): its run from the log.
            guard Kept.waitUntilStopped(folder, seconds: 10) else { throw error }
            Kept.writeOut(lastRun(CappedLog.contents(folder.consoleLogPath), name: folder.name))
            end = .ended
        }
        switch end {
        case .outputClosed:
            return
        case .detached:
            printError("detached from \(folder.name); it goes on running ('swiftkvm console \(folder.name)' attaches again)")
        case .ended:
            _ = Kept.waitUntilStopped(folder, seconds: 30)
            let record = (try? folder.readRecord()) ?? VMRecord()
            if let stop = record.lastStop {
                printError("\(folder.name): \(stop.detail)")
                throw ExitCode(stop.status ?? 1)
            }
        }
    }
}

extension KeptAttach {
    /// The log from the last first-boot mark on.
    static func lastRun(_ log: [UInt8], name: String) -> [UInt8] {
        let mark = Array("[swiftkvm] \(name): boot 1 at".utf8)
        guard log.count >= mark.count else { return log }
        var index = log.count - mark.count
        while index >= 0 {
            if log[index] == mark[0], Array(log[index..<index + mark.count]) == mark { return Array(log[index...]) }
            index -= 1
        }
        return log
    }
}

/// `swiftkvm run --name NAME [options]`: defines NAME from the options if given, then runs it
/// with its console on this terminal (a detached VMM underneath, so Ctrl-A d leaves it running).
enum KeptRun {
    static func run(_ options: Run, name: String) throws {
        Kept.defaultSignals()
        if let problem = VMName.problem(with: name) { throw UsageError(problem) }
        let defines = options.kernel != nil || options.firmware != nil || options.config != nil
        let store = Kept.store
        let exists = (try? store.existing(name)) != nil
        if defines {
            if exists {
                throw UsageError("a VM named '\(name)' exists already: 'swiftkvm run --name \(name)' without VM options runs its definition, or 'swiftkvm rm \(name)' first")
            }
            let configuration = try KeptDefinition.configuration(of: options, command: "run --name")
            do { try store.create(name, configuration: configuration) } catch { throw Kept.cli(error) }
            EventLog(path: try Kept.folder(name).eventLogPath).append("created")
        } else {
            guard exists else {
                throw UsageError("there is no VM named '\(name)': give --kernel or --firmware (and the other options) to define it")
            }
            try options.checkNoVMOptions()
        }
        let folder = try Kept.folder(name)
        try Start.start(folder, paused: options.paused, timeLimit: options.timeLimit, timeout: 300, announce: false)
        try KeptAttach.attachUntilEnd(folder)
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the running kept VMs (--all: every defined one).",
        discussion: "Columns: name, state (running, paused, starting, stopped, or crashed the first time a dead VMM is seen), pid, vCPUs, memory, uptime. Exit status 0.")

    @Flag(name: .long, help: "Also the VMs that are not running.")
    var all = false

    @Flag(name: .long, help: "Print JSON: an array of objects.")
    var json = false

    func run() throws {
        let store = Kept.store
        var rows: [[String: Any]] = []
        for name in store.names() {
            guard let folder = try? store.folder(name) else { continue }
            let status = folder.status()
            guard all || status.isRunning || status.state == .crashed else { continue }
            let definition = try? folder.definition()
            var row: [String: Any] = ["name": name, "state": status.state.rawValue, "boot_count": status.record.bootCount]
            if status.isRunning, let pid = status.record.pid { row["pid"] = Int(pid) }
            if let definition {
                row["cpus"] = definition.cpus
                row["memory_bytes"] = definition.memoryBytes
            }
            if status.isRunning, let started = status.record.startedAt { row["uptime_seconds"] = max(0, Date().timeIntervalSince1970 - started) }
            if let stop = status.record.lastStop { row["last_stop"] = stop.reason.rawValue }
            rows.append(row)
        }
        if json {
            print(Kept.json(rows))
            return
        }
        let header = ["NAME", "STATE", "PID", "CPUS", "MEMORY", "UPTIME"]
        let table = rows.map { row -> [String] in
            [
                row["name"] as? String ?? "", row["state"] as? String ?? "", (row["pid"] as? Int).map(String.init) ?? "-",
                (row["cpus"] as? Int).map(String.init) ?? "-", (row["memory_bytes"] as? Int).map(Kept.describe(bytes:)) ?? "-",
                (row["uptime_seconds"] as? Double).map(Kept.describe(seconds:)) ?? "-",
            ]
        }
        let widths = header.indices.map { column in ([header] + table).map { $0[column].count }.max() ?? 0 }
        for line in [header] + table {
            print(line.enumerated().map { Kept.padded($0.element, to: widths[$0.offset]) }.joined(separator: "  ")
                .trimmingWhitespace())
        }
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a kept VM: its state, why it last stopped, its definition and its files.",
        discussion: "Last stop reasons: powered-off, rebooted, panicked (with the panic line), triple-fault, killed, stopped, timed-out, exited, halted, failed, vmm-died. Exit status: 0; 1 no such VM; 2 bad name.")

    @Argument(help: "The VM's name.")
    var name: String

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() throws {
        let folder = try Kept.folder(name)
        let status = folder.status()
        let definition = try? folder.definition()
        var info: [String: Any] = ["name": name, "state": status.state.rawValue, "boot_count": status.record.bootCount]
        if status.isRunning {
            if let pid = status.record.pid { info["pid"] = Int(pid) }
            if let started = status.record.startedAt {
                info["started_at"] = EventLog.timestamp(Date(timeIntervalSince1970: started))
                info["uptime_seconds"] = max(0, Date().timeIntervalSince1970 - started)
            }
            // The VMM's own view, when it answers.
            if let answer = try? ControlClient(socketPath: folder.controlSocketPath, timeout: 5).request("GET", "/"),
                answer.status == 200
            {
                struct Boots: Decodable { let boot_count: Int? }
                struct State: Decodable { let state: String? }
                if let boots = (try? JSONDecoder().decode(Boots.self, from: Data(answer.body)))?.boot_count { info["boot_count"] = boots }
                if let state = (try? JSONDecoder().decode(State.self, from: Data(answer.body)))?.state { info["vmm_state"] = state }
            }
        }
        if let stop = status.record.lastStop {
            info["last_stop"] = [
                "reason": stop.reason.rawValue, "detail": stop.detail, "at": EventLog.timestamp(Date(timeIntervalSince1970: stop.at)),
            ].merging(stop.status.map { ["status": Int($0)] } ?? [:]) { a, _ in a }
        }
        if let definition {
            info["cpus"] = definition.cpus
            info["memory_bytes"] = definition.memoryBytes
            switch definition.boot {
            case .linux(let linux): info["boot"] = ["kernel": linux.kernel, "initrd": linux.initrd ?? "", "cmdline": linux.commandLine]
            case .firmware(let firmware): info["boot"] = ["firmware": firmware.path, "mode": firmware.mode]
            }
            info["disks"] = definition.disks.map { ["path": $0.path, "read_only": $0.readOnly, "shareable": $0.shareable] }
            info["on_poweroff"] = definition.onPowerOff.rawValue
            info["on_reboot"] = definition.onReboot.rawValue
            info["on_crash"] = definition.onCrash.rawValue
        }
        info["folder"] = folder.dataPath
        info["control_socket"] = folder.controlSocketPath
        info["console_socket"] = folder.consoleSocketPath
        info["autostart"] = access(Autostart.unitPath(name), F_OK) == 0
        if json {
            print(Kept.json(info))
            return
        }
        var lines: [(String, String)] = [("name", name), ("state", status.state.rawValue)]
        if let pid = info["pid"] as? Int { lines.append(("pid", String(pid))) }
        if let started = info["started_at"] as? String {
            lines.append(("started", "\(started) (up \(Kept.describe(seconds: info["uptime_seconds"] as? Double ?? 0)))"))
        }
        lines.append(("boots", String(info["boot_count"] as? Int ?? 0)))
        if let stop = status.record.lastStop {
            lines.append(("last stop", "\(stop.reason.rawValue): \(stop.detail) (\(EventLog.timestamp(Date(timeIntervalSince1970: stop.at))))"))
        }
        if let definition {
            switch definition.boot {
            case .linux(let linux): lines.append(("boot", "linux \(linux.kernel)" + (linux.initrd.map { " initrd \($0)" } ?? "")))
            case .firmware(let firmware): lines.append(("boot", "firmware \(firmware.path) (\(firmware.mode) mode)"))
            }
            lines.append(("cpus", String(definition.cpus)))
            lines.append(("memory", Kept.describe(bytes: definition.memoryBytes)))
            for disk in definition.disks {
                lines.append(("disk", disk.path + (disk.readOnly ? " (read-only)" : " (read-write)") + (disk.shareable ? " shareable" : "")))
            }
            lines.append(("on", "poweroff \(definition.onPowerOff.rawValue), reboot \(definition.onReboot.rawValue), crash \(definition.onCrash.rawValue)"))
        }
        lines.append(("folder", folder.dataPath))
        lines.append(("autostart", (info["autostart"] as? Bool) == true ? Autostart.unitPath(name) : "no"))
        for (key, value) in lines { print(Kept.padded(key + ":", to: 11) + value) }
    }
}

struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to a running kept VM's console: its history first, then live.",
        discussion: """
            Several consoles can be attached at once; one of them is the writer (what you type goes \
            to the guest), the others are --read-only. Ctrl-A d detaches (on a terminal); Ctrl-A \
            Ctrl-A sends one Ctrl-A. A console that stops reading loses output (counted by the VMM) \
            but never slows the guest.

            Exit status: 0 when detached or when the VM ended; 1 not running, or the writer's place is taken.
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Option(name: .long, help: ArgumentHelp("How much of the history to show first: all (every boot in the log), run (since this start), or a number of bytes (default: 16384).", valueName: "all|run|bytes"))
    var replay: String = "16384"

    @Flag(name: .long, help: "Only watch: type nothing into the guest (any number of these may attach).")
    var readOnly = false

    func run() throws {
        Kept.defaultSignals()
        let amount = try Self.parseReplay(replay)
        let (folder, _) = try Kept.running(name)
        let end = try KeptConsole.attach(folder, replay: amount, readOnly: readOnly)
        if end == .ended, Kept.waitUntilStopped(folder, seconds: 10), let stop = (try? folder.readRecord())?.lastStop {
            printError("\(name): \(stop.detail)")
        }
    }

    static func parseReplay(_ text: String) throws -> ConsoleHub.Replay {
        if text == "all" { return .all }
        if text == "run" { return .run }
        guard let bytes = Int(text), bytes >= 0 else { throw UsageError("--replay must be all, run or a number of bytes, not '\(text)'") }
        return .bytes(bytes)
    }
}

/// Reads a growing log file (rotated into PATH.1 when full) from `offset`, for --follow.
struct LogFollower {
    let path: String
    var offset: Int = 0
    var inode: UInt = 0

    /// New bytes since the last call.
    mutating func next() -> [UInt8] {
        var info = stat()
        guard stat(path, &info) == 0 else { return [] }
        if UInt(info.st_ino) != inode || Int(info.st_size) < offset {
            inode = UInt(info.st_ino)
            offset = 0
        }
        guard Int(info.st_size) > offset, let bytes = VMStore.read(path, limit: 64 << 20), bytes.count > offset else { return [] }
        defer { offset = bytes.count }
        return Array(bytes[offset...])
    }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a kept VM's console log (every boot, marked), running or not.",
        discussion: "The log is capped (1 MiB, then the older half is dropped); each boot starts with a '[swiftkvm] NAME: boot N' line. --follow goes on printing until interrupted. Exit status: 0; 1 no such VM.")

    @Argument(help: "The VM's name.")
    var name: String

    @Flag(name: .shortAndLong, help: "Keep printing what the guest writes.")
    var follow = false

    func run() throws {
        Kept.defaultSignals()
        let folder = try Kept.folder(name)
        Kept.writeOut(VMStore.read(folder.consoleLogPath + ".1", limit: 64 << 20) ?? [])
        var follower = LogFollower(path: folder.consoleLogPath)
        Kept.writeOut(follower.next())
        while follow {
            usleep(100_000)
            let more = follower.next()
            if !more.isEmpty { Kept.writeOut(more) }
        }
    }
}

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a kept VM's events: created, starting, started, booted, paused, resumed, power-button, stopped, crashed, …",
        discussion: "One line each: time (UTC), event, detail. --follow goes on printing until interrupted. Exit status: 0; 1 no such VM.")

    @Argument(help: "The VM's name.")
    var name: String

    @Flag(name: .shortAndLong, help: "Keep printing new events.")
    var follow = false

    @Flag(name: .long, help: "Print each event as a JSON object, one a line.")
    var json = false

    func run() throws {
        Kept.defaultSignals()
        let folder = try Kept.folder(name)
        _ = folder.status()
        let show = { (bytes: [UInt8]) in
            for event in EventLog.parse(bytes) {
                if json {
                    print(Kept.json(["time": event.time, "event": event.event, "detail": event.detail]).replacingAll("\n", with: "").replacingAll("  ", with: " "))
                } else {
                    print("\(event.time)  \(Kept.padded(event.event, to: 14))  \(event.detail)".trimmingWhitespace())
                }
            }
            fflush(stdout)
        }
        show(VMStore.read(folder.eventLogPath + ".1", limit: 64 << 20) ?? [])
        var follower = LogFollower(path: folder.eventLogPath)
        var partial: [UInt8] = []
        func complete(_ bytes: [UInt8]) -> [UInt8] {
            partial += bytes
            guard let last = partial.lastIndex(of: 0x0A) else { return [] }
            defer { partial = Array(partial[(last + 1)...]) }
            return Array(partial[...last])
        }
        show(complete(follower.next()))
        while follow {
            usleep(100_000)
            let more = follower.next()
            if !more.isEmpty { show(complete(more)) }
        }
    }
}
