import Foundation
import Testing

/// A `SWIFTKVM_HOME` of its own for one test: runs `swiftkvm` with it and, at the end, kills what
/// still runs there (through `swiftkvm kill`) and removes the folder.
final class KeptHome: @unchecked Sendable {
    let root: String
    let home: String

    init(deep: Bool = false) throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-kept-\(UUID().uuidString)").path
        var path = root
        if deep { for level in 0..<3 { path += "/a-folder-deep-enough-for-sun-path-\(level)" } }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        home = path
    }

    deinit {
        if let list = try? run(["list", "--json"]), let rows = Self.array(list.stdout) {
            for row in rows { if let name = row["name"] as? String { _ = try? run(["kill", name]) } }
        }
        try? FileManager.default.removeItem(atPath: root)
    }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }
    }

    var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFTKVM_HOME"] = home
        return environment
    }

    /// Runs `swiftkvm arguments` to its end (killed after `seconds`).
    func run(_ arguments: [String], seconds: Double = 120, input: String? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SwiftKVMProcess.executable)
        process.arguments = arguments
        process.environment = environment
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        let stdin = Pipe()
        process.standardInput = input == nil ? FileHandle.nullDevice : stdin
        try process.run()
        if let input {
            stdin.fileHandleForWriting.write(Data(input.utf8))
            try? stdin.fileHandleForWriting.close()
        }
        let watchdog = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds, execute: watchdog)
        let stdoutData = output.fileHandleForReading.readDataToEndOfFile()
        let stderrData = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        return Result(
            status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self), stderr: String(decoding: stderrData, as: UTF8.self))
    }

    /// `swiftkvm arguments` in the background (a console reader), its output collected.
    func background(_ arguments: [String], withInput: Bool = false) throws -> ControlAPICommandTests.Background {
        try ControlAPICommandTests.Background(arguments, environment: environment, withInput: withInput)
    }

    /// `swiftkvm arguments` on a pseudo-terminal (util-linux `script`), standard input a pipe into it.
    func onTerminal(_ arguments: [String]) throws -> ControlAPICommandTests.Background {
        let command = ([SwiftKVMProcess.executable] + arguments).map { "'\($0)'" }.joined(separator: " ")
        return try ControlAPICommandTests.Background(
            ["-qfec", command, "/dev/null"], environment: environment, executable: "/usr/bin/script", withInput: true)
    }

    static func array(_ text: String) -> [[String: Any]]? {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [[String: Any]]
    }

    static func object(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    func info(_ name: String) throws -> [String: Any] { Self.object(try run(["info", name, "--json"]).stdout) }

    func list(all: Bool = true) throws -> [[String: Any]] { Self.array(try run(["list", "--json"] + (all ? ["--all"] : [])).stdout) ?? [] }

    func events(_ name: String) throws -> [String] {
        try run(["events", name, "--json"]).stdout.split(separator: "\n").compactMap { Self.object(String($0))["event"] as? String }
    }

    func consoleLog(_ name: String) -> String { (try? String(contentsOfFile: "\(home)/\(name)/console.log", encoding: .utf8)) ?? "" }
}

/// Kept VMs end to end with firmware guests: the built `swiftkvm` driven as a user would, each
/// test in a `SWIFTKVM_HOME` of its own.
@Suite(.enabled(if: KVM.shouldRun, KVM.skipReason), .timeLimit(.minutes(45)))
struct KeptVMTests {
    static let counter = ["--firmware", Paths.firmware("counter-user"), "--mode", "user"]
    static func acpi(_ action: String) -> [String] {
        ["--kernel", Paths.firmware("acpi-power"), "--memory", "64M", "--cmdline", "console=ttyS0 action=\(action)"]
    }

    static func waitFor(seconds: Double = 30, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            usleep(20_000)
        }
        return false
    }

    /// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
    static func hasEnded(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
        return stat.contains(") Z ")
    }

    /// The last number a counter-user console printed.
    static func lastCount(_ text: String) -> Int? {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        lines.removeLast()  // empty after a final newline, else a line still being printed
        return lines.reversed().lazy.compactMap { Int($0) }.first
    }

    @Test func theWholeCycle() throws {
        let home = try KeptHome()
        let created = try home.run(["create", "c"] + Self.counter)
        #expect(created.status == 0, "\(created.stderr)")
        #expect(try home.list(all: false).isEmpty, "list without --all shows running VMs only")
        #expect(try home.list().map { $0["name"] as? String } == ["c"])

        let started = try home.run(["start", "c"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(started.stdout.hasPrefix("started c (pid "))
        let listed = try #require(try home.list(all: false).first)
        #expect(listed["state"] as? String == "running")
        #expect(listed["cpus"] as? Int == 1)
        #expect(listed["memory_bytes"] as? Int == 2 << 20)
        let pid = try #require(listed["pid"] as? Int)
        #expect(kill(pid_t(pid), 0) == 0, "the VMM runs")
        let table = try home.run(["list"]).stdout.split(separator: "\n")
        #expect(table.first?.split(separator: " ", omittingEmptySubsequences: true) == ["NAME", "STATE", "PID", "CPUS", "MEMORY", "UPTIME"])
        #expect(table.count == 2 && table[1].hasPrefix("c  "))

        // wait, then the console from the start of the history, live.
        let waited = try home.run(["wait", "c", "--for", "console=\\n20\\n", "--timeout", "60"])
        #expect(waited.status == 0, "\(waited.stderr)")
        let reader = try home.background(["console", "c", "--replay", "all", "--read-only"])
        #expect(Self.waitFor { reader.stdout.contains("\n100\n") }, "\(reader.stdout.suffix(200))")
        #expect(reader.stdout.hasPrefix("[swiftkvm] c: boot 1 at "), "\(reader.stdout.prefix(80))")
        #expect(reader.stdout.contains("\n0\n1\n2\n3\n"), "the replay starts at the guest's first line")

        #expect(try home.run(["pause", "c"]).status == 0)
        #expect(try home.info("c")["state"] as? String == "paused")
        usleep(300_000)  // what the guest printed before the pause is still on its way to the reader
        let atPause = reader.stdout.utf8.count
        usleep(500_000)
        #expect(reader.stdout.utf8.count == atPause, "the console moved while paused")
        #expect(try home.run(["pause", "c"]).status == 1, "pausing a paused VM")
        #expect(try home.run(["resume", "c"]).status == 0)
        #expect(Self.waitFor { reader.stdout.utf8.count > atPause + 50 })

        // A firmware guest has no power button: stop forces it at once, with its own status.
        let stopped = try home.run(["stop", "c"])
        #expect(stopped.status == 4, "\(stopped.stderr)")
        #expect(stopped.stderr.contains("no ACPI power button"), "\(stopped.stderr)")
        let end = reader.finish(within: 30)
        #expect(end.status == 0, "the console ends with the VM: \(end.stderr)")
        let info = try home.info("c")
        #expect(info["state"] as? String == "stopped")
        #expect((info["last_stop"] as? [String: Any])?["reason"] as? String == "stopped")
        #expect(info["pid"] == nil)
        #expect(Self.waitFor { Self.hasEnded(pid_t(pid)) }, "the VMM is gone")
        #expect(!FileManager.default.fileExists(atPath: "\(home.home)/c/control.sock"), "its sockets went with it")
        #expect(!FileManager.default.fileExists(atPath: "\(home.home)/c/console.sock"))
        #expect(try home.events("c") == ["created", "starting", "started", "paused", "resumed", "stop-requested", "stopped"])
        let logs = try home.run(["logs", "c"])
        #expect(logs.stdout.hasPrefix("[swiftkvm] c: boot 1 at ") && logs.stdout.contains("\n0\n1\n2\n"))

        #expect(try home.run(["stop", "c"]).status == 0, "stopping a stopped VM")
        #expect(try home.run(["pause", "c"]).status == 1)
        let removed = try home.run(["rm", "c"])
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try home.list().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "\(home.home)/c"))
        #expect(try home.run(["info", "c"]).stderrLines == ["swiftkvm: there is no VM named 'c': 'swiftkvm list --all' shows the VMs, 'swiftkvm create c …' makes it"])
    }

    @Test func thePowerButtonStopsAGuestThatListens() throws {
        let home = try KeptHome()
        #expect(try home.run(["create", "p"] + Self.acpi("button")).status == 0)
        #expect(try home.run(["start", "p"]).status == 0)
        let stopped = try home.run(["stop", "p", "--timeout", "60"])
        #expect(stopped.status == 0, "\(stopped.stderr)")
        #expect(stopped.stdout == "p stopped: the guest powered off (ACPI S5)\n")
        let stop = try #require(try home.info("p")["last_stop"] as? [String: Any])
        #expect(stop["reason"] as? String == "powered-off")
        #expect(home.consoleLog("p").contains("POWER button pressed"))
        #expect(try home.events("p") == ["created", "starting", "started", "power-button", "stopped"])
    }

    @Test func aGuestThatIgnoresTheButtonIsForcedAfterTheTimeout() throws {
        let home = try KeptHome()
        #expect(try home.run(["create", "i"] + Self.acpi("ignore")).status == 0)
        #expect(try home.run(["start", "i"]).status == 0)
        #expect(try home.run(["wait", "i", "--for", "console=ignoring the power button", "--timeout", "60"]).status == 0)
        let began = Date()
        let stopped = try home.run(["stop", "i", "--timeout", "1"])
        #expect(stopped.status == 3, "\(stopped.stderr)")
        #expect(Date().timeIntervalSince(began) >= 1)
        #expect(stopped.stderr == "swiftkvm: i did not stop within 1 s after the power button: stopping it by force\n")
        #expect(try home.info("i")["state"] as? String == "stopped")
        let wait = try home.run(["wait", "i", "--for", "console=never printed", "--timeout", "5"])
        #expect(wait.status == 1, "a stopped VM's console will not match: \(wait.stderr)")
    }

    @Test func aKilledVMMShowsAsCrashedOnceAndStartsAgain() throws {
        let home = try KeptHome()
        #expect(try home.run(["create", "k"] + Self.counter).status == 0)
        #expect(try home.run(["start", "k"]).status == 0)
        let pid = try #require(try home.list().first?["pid"] as? Int)
        // The test kills the VMM behind swiftkvm's back, as a crash or the OOM killer would.
        #expect(kill(pid_t(pid), SIGKILL) == 0)
        #expect(Self.waitFor { Self.hasEnded(pid_t(pid)) })
        let crashed = try #require(Self.waitFor { (try home.list().first?["state"] as? String) == "crashed" } ? true : nil, "never shown as crashed")
        #expect(crashed)
        #expect(!FileManager.default.fileExists(atPath: "\(home.home)/k/control.sock"), "stale sockets removed")
        #expect(try home.list().first?["state"] as? String == "stopped", "crashed is shown once")
        #expect((try home.info("k")["last_stop"] as? [String: Any])?["reason"] as? String == "vmm-died")
        let again = try home.run(["start", "k"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try home.info("k")["state"] as? String == "running")
        let killed = try home.run(["kill", "k"])
        #expect(killed.status == 0, "\(killed.stderr)")
        #expect((try home.info("k")["last_stop"] as? [String: Any])?["reason"] as? String == "killed")
        #expect(try home.events("k") == ["created", "starting", "started", "crashed", "starting", "started", "kill-requested", "stopped"])
    }

    @Test func twoStartsAtOnceHaveExactlyOneWinner() throws {
        let home = try KeptHome()
        #expect(try home.run(["create", "race"] + Self.counter).status == 0)
        let results = Mutex2<[KeptHome.Result]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            if let result = try? home.run(["start", "race"]) { results.with { $0.append(result) } }
        }
        let statuses = results.with { $0 }.map(\.status).sorted()
        #expect(statuses == [0, 3], "\(results.with { $0 }.map(\.stderr))")
        #expect(results.with { $0 }.contains { $0.stderr.contains("'race' is running already") })
        #expect(try home.events("race").filter { $0 == "started" }.count == 1)
        #expect(try home.run(["stop", "race", "--mode", "force"]).status == 0)
    }

    @Test func aReadWriteDiskIsRefusedToASecondVM() throws {
        let home = try KeptHome()
        let disk = "\(home.root)/disk.img"
        #expect(FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20)))
        #expect(try home.run(["create", "first"] + Self.acpi("ignore") + ["--disk", disk]).status == 0)
        #expect(try home.run(["create", "second"] + Self.acpi("ignore") + ["--disk", disk]).status == 0)
        #expect(try home.run(["start", "first"]).status == 0)
        let refused = try home.run(["start", "second"])
        #expect(refused.status == 1)
        #expect(
            refused.stderrLines.first
                == "swiftkvm: 'second' did not start: disk \(disk) is in use by VM 'first' (read-write); VM 'second' cannot open it read-write: stop the other VM, make the disk readonly in both, or mark it shareable",
            "\(refused.stderr)")
        #expect(try home.info("second")["state"] as? String == "stopped")
        #expect(try home.run(["kill", "first"]).status == 0)
        #expect(try home.run(["start", "second"]).status == 0, "free once the first stopped")
        #expect(try home.run(["kill", "second"]).status == 0)

        // Read-only disks are shared; `shareable` opts out of the lock.
        #expect(try home.run(["create", "ro1"] + Self.acpi("ignore") + ["--disk", "\(disk),readonly"]).status == 0)
        #expect(try home.run(["create", "ro2"] + Self.acpi("ignore") + ["--disk", "\(disk),readonly"]).status == 0)
        #expect(try home.run(["start", "ro1"]).status == 0)
        #expect(try home.run(["start", "ro2"]).status == 0)
        #expect(try home.run(["start", "first"]).status == 1, "read-write while others read")
        #expect(try home.run(["create", "sh1"] + Self.acpi("ignore") + ["--disk", "\(disk),shareable"]).status == 0)
        #expect(try home.run(["start", "sh1"]).status == 0, "shareable is not locked")
        for name in ["ro1", "ro2", "sh1"] { #expect(try home.run(["kill", name]).status == 0) }
    }

    /// Two readers see the same bytes; a reader that stopped reading does not stop the guest.
    @Test func twoConsoleReadersAndAStalledOne() throws {
        let home = try KeptHome()
        #expect(try home.run(["create", "two"] + Self.counter).status == 0)
        #expect(try home.run(["start", "two", "--paused"]).status == 0)
        #expect(try home.info("two")["state"] as? String == "paused")
        let first = try home.background(["console", "two", "--replay", "all", "--read-only"])
        let second = try home.background(["console", "two", "--replay", "all", "--read-only"])
        #expect(Self.waitFor { first.stdout.contains("boot 1") && second.stdout.contains("boot 1") })
        // A third reader that never reads: SIGSTOP keeps it from reading its socket.
        let stalled = try home.background(["console", "two", "--replay", "all", "--read-only"])
        #expect(Self.waitFor { stalled.stdout.contains("boot 1") })
        #expect(kill(stalled.process.processIdentifier, SIGSTOP) == 0)
        #expect(try home.run(["resume", "two"]).status == 0)
        let startedAt = Self.lastCount(first.stdout) ?? 0
        usleep(3_000_000)
        let advanced = (Self.lastCount(first.stdout) ?? 0) - startedAt
        #expect(advanced > 100, "the counter advanced \(advanced) in 3 s with a stalled reader: \(first.stdout.suffix(300))")
        #expect(try home.run(["pause", "two"]).status == 0)
        // Paused (perhaps in the middle of a line): both readers end up with the same bytes.
        #expect(Self.waitFor { first.stdout == second.stdout && first.stdout.utf8.count == home.consoleLog("two").utf8.count })
        #expect(first.stdout == second.stdout, "two readers, the same bytes: \(first.stdout.utf8.count) and \(second.stdout.utf8.count) bytes")
        #expect(home.consoleLog("two") == first.stdout, "and the console log has them too")
        kill(stalled.process.processIdentifier, SIGCONT)
        #expect(try home.run(["stop", "two", "--mode", "force"]).status == 0)
        for reader in [first, second, stalled] { _ = reader.finish(within: 30) }
    }

    @Test func onRebootRestartCountsTwoBootsInOneRun() throws {
        let home = try KeptHome()
        let config = "\(home.root)/reset-once.json"
        try #"""
        {"boot": {"firmware": {"path": "\#(Paths.firmware("reset-once"))", "mode": "protected", "load_address": 0}},
         "memory_bytes": 2097152, "cpus": 1, "on_reboot": "restart"}
        """#.write(toFile: config, atomically: true, encoding: .utf8)
        let created = try home.run(["create", "twice", "--config", config])
        #expect(created.status == 0, "\(created.stderr)")
        #expect(try home.run(["start", "twice"]).status == 0)
        #expect(try home.run(["wait", "twice", "--for", "stopped", "--timeout", "120"]).status == 0)
        let info = try home.info("twice")
        #expect(info["boot_count"] as? Int == 2)
        #expect((info["last_stop"] as? [String: Any])?["detail"] as? String == "the guest exited with status 0")
        let log = home.consoleLog("twice")
        #expect(log.contains("first boot\n"), "\(log)")
        #expect(log.contains("[swiftkvm] twice: boot 2 at "), "\(log)")
        #expect(log.contains("second boot\n"))
        #expect(try home.events("twice") == ["created", "starting", "started", "booted", "stopped"])
    }

    /// `run --name`: a foreground run that is kept (listed, its log kept), ending with the guest's status.
    @Test func runWithANameIsKept() throws {
        let home = try KeptHome()
        let run = try home.run(["run", "--name", "fg", "--firmware", Paths.firmware("exit-code"), "--mode", "real"])
        #expect(run.status == 42, "\(run.stderr)")
        #expect(run.stderr.contains("fg: the guest exited with status 42"))
        #expect(try home.list().first?["name"] as? String == "fg")
        #expect((try home.info("fg")["last_stop"] as? [String: Any])?["status"] as? Int == 42)
        let again = try home.run(["run", "--name", "fg"])
        #expect(again.status == 42, "runs its definition again")
        let clash = try home.run(["run", "--name", "fg", "--firmware", Paths.firmware("hello-long")])
        #expect(clash.status == 2)
        let hello = try home.run(["run", "--name", "hi", "--firmware", Paths.firmware("hello-long")])
        #expect(hello.status == 0)
        #expect(hello.stdout.contains("Hello from long mode!\n"), "\(hello.stdout)")
    }

    /// A deep SWIFTKVM_HOME whose socket paths pass the 107 bytes of sun_path.
    @Test func aDeepHomeBeyondSunPath() throws {
        let home = try KeptHome(deep: true)
        #expect("\(home.home)/deep/control.sock".utf8.count > 107)
        #expect(try home.run(["create", "deep"] + Self.counter).status == 0)
        let started = try home.run(["start", "deep"])
        #expect(started.status == 0, "\(started.stderr)")
        #expect(try home.run(["pause", "deep"]).status == 0)
        #expect(try home.run(["resume", "deep"]).status == 0)
        #expect(try home.run(["wait", "deep", "--for", "console=\\n5\\n", "--timeout", "60"]).status == 0)
        #expect(try home.info("deep")["vmm_state"] as? String == "Running")
        #expect(try home.run(["stop", "deep", "--mode", "force"]).status == 0)
    }

    /// On a terminal, Ctrl-A d detaches a console and the VM runs on; `logs --follow` and
    /// `events --follow` print as things happen; `reboot` boots it again in the same VMM.
    @Test func detachFollowAndReboot() throws {
        let home = try KeptHome()
        #expect(try home.run(["create", "d"] + Self.counter).status == 0)
        #expect(try home.run(["start", "d"]).status == 0)
        let events = try home.background(["events", "d", "--follow"])
        let logs = try home.background(["logs", "d", "--follow"])
        let terminal = try home.onTerminal(["console", "d", "--replay", "20"])
        #expect(Self.waitFor { terminal.stdout.contains("\r\n") }, "the console on a terminal prints")
        terminal.input.fileHandleForWriting.write(Data([0x01, UInt8(ascii: "d")]))
        let detached = terminal.finish(within: 30)
        #expect(detached.status == 0, "\(detached.stderr)")
        #expect(terminal.stdout.contains("Ctrl-A d detaches"), "\(terminal.stdout.prefix(200))")
        #expect(try home.info("d")["state"] as? String == "running", "detaching leaves the VM running")

        #expect(try home.run(["pause", "d"]).status == 0)
        #expect(try home.run(["resume", "d"]).status == 0)
        let reboot = try home.run(["reboot", "d"])
        #expect(reboot.status == 0, "\(reboot.stderr)")
        #expect(Self.waitFor { (try? home.info("d")["boot_count"] as? Int) == 2 })
        #expect(Self.waitFor { events.stdout.contains("booted") && events.stdout.contains("boot 2") }, "\(events.stdout)")
        let order = events.stdout.split(separator: "\n").compactMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first }
        #expect(order == ["created", "starting", "started", "paused", "resumed", "reset", "booted"], "\(events.stdout)")
        #expect(Self.waitFor { logs.stdout.contains("[swiftkvm] d: boot 2 at ") }, "logs --follow sees the second boot")
        #expect(Self.waitFor { logs.stdout.hasPrefix("[swiftkvm] d: boot 1 at ") })
        #expect(try home.run(["stop", "d", "--mode", "force"]).status == 0)
        for follower in [events, logs] {
            follower.process.terminate()
            _ = follower.finish(within: 30)
        }
    }

    /// `start` says why a VM could not start; `info` says why each VM last stopped.
    @Test func startFailuresAndStopReasons() throws {
        let home = try KeptHome()
        let program = "\(home.root)/gone.bin"
        try FileManager.default.copyItem(atPath: Paths.firmware("hello-long"), toPath: program)
        #expect(try home.run(["create", "gone", "--firmware", program]).status == 0)
        try FileManager.default.removeItem(atPath: program)
        let failed = try home.run(["start", "gone"])
        #expect(failed.status == 1)
        #expect(failed.stderrLines.first == "swiftkvm: 'gone' did not start: \(program): No such file or directory", "\(failed.stderr)")
        #expect((try home.info("gone")["last_stop"] as? [String: Any])?["reason"] as? String == "failed")

        for (name, options, reason) in [
            ("fault", ["--firmware", Paths.firmware("triple-fault"), "--mode", "protected"], "triple-fault"),
            ("panic", Self.acpi("panic"), "panicked"),
            ("off", Self.acpi("poweroff"), "powered-off"),
        ] {
            #expect(try home.run(["create", name] + options).status == 0)
            #expect(try home.run(["start", name]).status == 0, "\(name) is entered before it ends")
            #expect(try home.run(["wait", name, "--for", "stopped", "--timeout", "60"]).status == 0)
            #expect((try home.info(name)["last_stop"] as? [String: Any])?["reason"] as? String == reason, "\(name)")
        }
    }

    @Test func badInputIsOneLineAndStatusTwo() throws {
        let home = try KeptHome()
        for (arguments, message) in [
            (["create", "Bad"] + Self.counter, "swiftkvm: the VM name 'Bad' must start with a lower-case letter or a digit"),
            (["create", "x"], "swiftkvm: nothing to run: give --kernel BZIMAGE (Linux) or --firmware FILE (a flat binary), or --config FILE"),
            (["create", "x", "--api-socket", "/tmp/s"] + Self.counter, "swiftkvm: create: --api-socket is not for kept VMs (their control socket is in their folder)"),
            (["start", "a/b"], "swiftkvm: the VM name 'a/b' has '/': use only a-z, 0-9, '.', '_' and '-'"),
            (["stop", "x", "--mode", "gently"], "swiftkvm: --mode must be acpi, ctrlaltdel or force, not 'gently'"),
            (["wait", "x", "--for", "dawn"], "swiftkvm: --for must be running, stopped or console=REGEX, not 'dawn'"),
            (["console", "x", "--replay", "some"], "swiftkvm: --replay must be all, run or a number of bytes, not 'some'"),
        ] {
            let result = try home.run(arguments)
            #expect(result.status == 2, "\(arguments): \(result.stderr)")
            #expect(result.stderrLines == [message], "\(arguments)")
        }
        #expect(try home.run(["create", "x"] + Self.counter).status == 0)
        let twice = try home.run(["create", "x"] + Self.counter)
        #expect(twice.status == 1)
        #expect(twice.stderrLines == ["swiftkvm: a VM named 'x' exists already: choose another name, or 'swiftkvm rm x' first"])
        let notRunning = try home.run(["pause", "x"])
        #expect(notRunning.status == 1)
        #expect(notRunning.stderrLines == ["swiftkvm: 'x' is not running: 'swiftkvm start x' starts it"])
    }

    @Test(arguments: ["create", "rm", "start", "list", "info", "console", "logs", "events", "stop", "kill", "reboot", "pause", "resume", "wait", "autostart", "vmm"])
    func everyCommandHasHelp(_ command: String) throws {
        let home = try KeptHome()
        let help = try home.run([command, "--help"])
        #expect(help.status == 0)
        #expect(help.stdout.contains("USAGE: swiftkvm \(command)"), "\(help.stdout)")
    }

    @Test func autostartWritesAUnitSystemdAccepts() throws {
        let home = try KeptHome()
        #expect(try home.run(["create", "boot"] + Self.counter).status == 0)
        let enabled = try home.run(["autostart", "boot"])
        #expect(enabled.status == 0, "\(enabled.stderr)")
        let unit = "\(home.home)/systemd/swiftkvm-boot.service"
        let text = try String(contentsOfFile: unit, encoding: .utf8)
        let binary = URL(fileURLWithPath: SwiftKVMProcess.executable).resolvingSymlinksInPath().path
        #expect(text.contains("ExecStart=\"\(binary)\" vmm boot\n"), "\(text)")
        #expect(text.contains("ExecStop=\"\(binary)\" stop boot --timeout 30\n"))
        #expect(text.contains("Environment=\"SWIFTKVM_HOME=\(home.home)\"\n"))
        let link = "\(home.home)/systemd/\(getuid() == 0 ? "multi-user" : "default").target.wants/swiftkvm-boot.service"
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == "../swiftkvm-boot.service")
        #expect(try home.info("boot")["autostart"] as? Bool == true)
        let verify = Process()
        verify.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-analyze")
        verify.arguments = ["verify", unit]
        let errors = Pipe()
        verify.standardError = errors
        verify.standardOutput = errors
        try verify.run()
        let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        verify.waitUntilExit()
        #expect(verify.terminationStatus == 0, "systemd-analyze verify: \(said)")
        #expect(!said.contains("swiftkvm-boot.service:"), "systemd-analyze complained about the unit: \(said)")
        #expect(try home.run(["autostart", "boot", "--disable"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: unit))
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == nil)
    }
}

/// A lock around a value, for collecting results from concurrent work in a test.
final class Mutex2<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func with<T>(_ body: (inout Value) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}
