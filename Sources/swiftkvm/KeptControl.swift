import ArgumentParser
import FoundationEssentials
import Glibc
import VMConfig
import VMStore

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a kept VM: ask the guest (ACPI power button or Ctrl-Alt-Del), force it after the timeout.",
        discussion: """
            --mode acpi (the default) presses the ACPI power button; a press made before the guest \
            enabled the event is held until it does. --mode ctrlaltdel types Ctrl-Alt-Del on the \
            i8042 keyboard (a Linux guest reboots: that ends the VM when its on_reboot is destroy). \
            --mode force stops the VM at once (vCPUs stopped, disks synced). When the guest has not \
            stopped after --timeout seconds it is stopped by force.

            Exit status: 0 the guest stopped itself (or was not running, or --mode force); 3 it did \
            not stop in time and was forced; 4 it has no power button or keyboard for the request, \
            so it was forced at once; 1 the VMM did not answer or did not end; 2 bad input.
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the guest before forcing it (default: 30).", valueName: "seconds"))
    var timeout: Double = 30

    @Option(name: .long, help: ArgumentHelp("How to ask: acpi, ctrlaltdel or force (default: acpi).", valueName: "acpi|ctrlaltdel|force"))
    var mode: String = "acpi"

    static let forcedAfterTimeout: Int32 = 3
    static let forcedAtOnce: Int32 = 4

    func run() throws {
        guard ["acpi", "ctrlaltdel", "force"].contains(mode) else { throw UsageError("--mode must be acpi, ctrlaltdel or force, not '\(mode)'") }
        guard timeout >= 0, timeout < 1e9 else { throw UsageError("--timeout must be a number of seconds, 0 or more") }
        let folder = try Kept.folder(name)
        guard folder.status().isRunning else {
            printError("\(name) is not running")
            return
        }
        if mode == "force" {
            try Self.force(folder)
            print("\(name) stopped (forced)")
            return
        }
        let answer = try Kept.action(folder, mode == "acpi" ? "PowerButton" : "SendCtrlAltDel")
        if answer.status == 409 || answer.status == 400 {
            printError("\(name): \(answer.faultMessage): stopping it by force")
            try Self.force(folder)
            throw ExitCode(Self.forcedAtOnce)
        }
        guard answer.status == 204 else { throw RuntimeFailure("\(name): the VMM refused: \(answer.faultMessage)") }
        if Kept.waitUntilStopped(folder, seconds: timeout) {
            let detail = (try? folder.readRecord())?.lastStop?.detail ?? "stopped"
            print("\(name) stopped: \(detail)")
            return
        }
        printError("\(name) did not stop within \(Self.seconds(timeout)) s after the \(mode == "acpi" ? "power button" : "Ctrl-Alt-Del"): stopping it by force")
        try Self.force(folder)
        throw ExitCode(Self.forcedAfterTimeout)
    }

    static func seconds(_ value: Double) -> String { value == value.rounded() ? String(Int(value)) : String(value) }

    /// The API's Stop, then its Kill if the VMM has not ended 10 s later.
    static func force(_ folder: VMFolder) throws {
        let stop = try Kept.action(folder, "Stop")
        if stop.status == 204, Kept.waitUntilStopped(folder, seconds: 10) { return }
        _ = try? Kept.action(folder, "Kill")
        guard Kept.waitUntilStopped(folder, seconds: 10) else {
            throw RuntimeFailure("\(folder.name): its VMM did not end after Stop and Kill; see \(folder.vmmLogPath)")
        }
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "End a kept VM at once (through its VMM's socket; no signal is sent to any pid).",
        discussion: "Exit status: 0 it ended (or was not running); 1 its VMM did not answer or did not end.")

    @Argument(help: "The VM's name.")
    var name: String

    func run() throws {
        let folder = try Kept.folder(name)
        guard folder.status().isRunning else {
            printError("\(name) is not running")
            return
        }
        let answer = try Kept.action(folder, "Kill")
        guard answer.status == 204 else { throw RuntimeFailure("\(name): the VMM refused: \(answer.faultMessage)") }
        guard Kept.waitUntilStopped(folder, seconds: 15) else { throw RuntimeFailure("\(name): its VMM did not end; see \(folder.vmmLogPath)") }
        print("\(name) killed")
    }
}

struct Reboot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reboot a kept VM: a hard reset (the default), or Ctrl-Alt-Del for the guest to reboot itself.",
        discussion: "--mode reset boots the guest again at once, whatever on_reboot says; --mode ctrlaltdel asks a Linux guest, which reboots (the VM boots again when its on_reboot is restart). Exit status: 0 asked; 1 not running or refused; 2 bad input.")

    @Argument(help: "The VM's name.")
    var name: String

    @Option(name: .long, help: ArgumentHelp("reset or ctrlaltdel (default: reset).", valueName: "reset|ctrlaltdel"))
    var mode: String = "reset"

    func run() throws {
        guard ["reset", "ctrlaltdel"].contains(mode) else { throw UsageError("--mode must be reset or ctrlaltdel, not '\(mode)'") }
        let (folder, _) = try Kept.running(name)
        let answer = try Kept.action(folder, mode == "reset" ? "HardReset" : "SendCtrlAltDel")
        guard answer.status == 204 else { throw RuntimeFailure("\(name): \(answer.faultMessage)") }
        print("\(name) rebooting")
    }
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pause a running kept VM: every vCPU parked, the devices quiet.",
        discussion: "Exit status: 0 paused; 1 not running or not in a state to pause.")

    @Argument(help: "The VM's name.")
    var name: String

    func run() throws { try KeptState.change(name, to: "Paused") }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Let a paused kept VM run on where it stopped.",
        discussion: "Exit status: 0 resumed; 1 not running or not paused.")

    @Argument(help: "The VM's name.")
    var name: String

    func run() throws { try KeptState.change(name, to: "Resumed") }
}

enum KeptState {
    static func change(_ name: String, to state: String) throws {
        let (folder, _) = try Kept.running(name)
        let answer = try Kept.request(folder, "PATCH", "/vm", json: #"{"state": "\#(state)"}"#)
        guard answer.status == 204 else { throw RuntimeFailure("\(name): \(answer.faultMessage)") }
        print("\(name) \(state.lowercased())")
    }
}

struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until a kept VM is running, has stopped, or its console printed something.",
        discussion: """
            --for console=REGEX searches what the console printed since the VM was started (so text \
            printed before the wait counts), with a Swift regular expression (Regex).

            Exit status: 0 it happened; 124 --timeout passed first; 1 the VM stopped before its \
            console matched (or no such VM); 2 bad input.
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Option(name: .customLong("for"), help: ArgumentHelp("running, stopped, or console=REGEX.", valueName: "condition"))
    var condition: String

    @Option(name: .long, help: ArgumentHelp("Give up after this many seconds (default: 300).", valueName: "seconds"))
    var timeout: Double = 300

    func run() throws {
        guard timeout > 0, timeout < 1e9 else { throw UsageError("--timeout must be a positive number of seconds") }
        Kept.defaultSignals()
        let deadline = Date().addingTimeInterval(timeout)
        guard ["running", "stopped"].contains(condition) || condition.hasPrefix("console=") else {
            throw UsageError("--for must be running, stopped or console=REGEX, not '\(condition)'")
        }
        let folder = try Kept.folder(name)
        switch condition {
        case "running":
            while folder.status().state != .running {
                if Date() >= deadline { throw Self.timedOut(condition) }
                usleep(50_000)
            }
        case "stopped":
            while folder.status().isRunning {
                if Date() >= deadline { throw Self.timedOut(condition) }
                usleep(50_000)
            }
        case let text where text.hasPrefix("console="):
            let pattern = String(text.dropFirst("console=".count))
            let expression: Regex<AnyRegexOutput>
            do { expression = try Regex(pattern).matchingSemantics(.unicodeScalar) } catch {
                throw UsageError("--for console=\(pattern): not a regular expression")
            }
            try Self.waitForConsole(folder, expression, deadline: deadline)
        default:
            throw UsageError("--for must be running, stopped or console=REGEX, not '\(condition)'")
        }
    }

    static func timedOut(_ condition: String) -> ExitCode {
        printError("timed out waiting for \(condition)")
        return ExitCode(124)
    }

    static func matches(_ expression: Regex<AnyRegexOutput>, _ bytes: [UInt8]) -> Bool {
        let text = String(decoding: bytes, as: UTF8.self)
        return text.firstMatch(of: expression) != nil
    }

    static func waitForConsole(_ folder: VMFolder, _ expression: Regex<AnyRegexOutput>, deadline: Date) throws {
        while true {
            if !folder.status().isRunning {
                if matches(expression, KeptAttach.lastRun(CappedLog.contents(folder.consoleLogPath), name: folder.name)) { return }
                printError("\(folder.name) is not running and its console log has no match")
                throw ExitCode(1)
            }
            guard let fd = try? ConsoleClient.attach(folder.consoleSocketPath, replay: .run, writer: false) else {
                if Date() >= deadline { throw timedOut("the console") }
                usleep(100_000)  // starting: the socket comes soon
                continue
            }
            defer { close(fd) }
            var window: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 16384)
            while true {
                let left = deadline.timeIntervalSinceNow
                if left <= 0 { throw timedOut("the console") }
                var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let polled = poll(&ready, 1, Int32(min(left * 1000, 1000) + 1))
                if polled <= 0 { continue }
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if count < 0, errno == EINTR { continue }
                if count <= 0 { break }
                window += buffer[0..<count]
                if window.count > 256 << 10 { window.removeFirst(window.count - (128 << 10)) }
                if matches(expression, window) { return }
            }
            // The stream ended: the VM stopped; the log decides.
            _ = Kept.waitUntilStopped(folder, seconds: 10)
            if matches(expression, KeptAttach.lastRun(CappedLog.contents(folder.consoleLogPath), name: folder.name)) { return }
            printError("\(folder.name) stopped before its console matched")
            throw ExitCode(1)
        }
    }
}

struct Autostart: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a kept VM when the host boots (a systemd unit), and stop it gracefully at shutdown.",
        discussion: """
            Writes swiftkvm-NAME.service (root: /etc/systemd/system; others: ~/.config/systemd/user; \
            with SWIFTKVM_HOME: $SWIFTKVM_HOME/systemd) and links it into multi-user.target.wants \
            (default.target.wants for a user), as 'systemctl enable' does; run 'systemctl \
            daemon-reload' (with --user for a user) to make a running systemd see it. At shutdown \
            systemd runs 'swiftkvm stop NAME' (the ACPI power button, forced after 30 s).

            Exit status: 0; 1 no such VM or the unit cannot be written; 2 bad input.
            """)

    @Argument(help: "The VM's name.")
    var name: String

    @Flag(name: .long, help: "Remove the unit and its link instead.")
    var disable = false

    @Option(name: .long, help: ArgumentHelp("Write the unit into this folder instead.", valueName: "folder"))
    var unitDir: String?

    func run() throws {
        let folder = try Kept.folder(name)
        let directory = unitDir ?? Self.unitDirectory()
        let unit = directory + "/" + Self.unitName(name)
        let link = directory + "/" + Self.wantedBy + ".wants/" + Self.unitName(name)
        if disable {
            unlink(link)
            if unlink(unit) != 0, errno != ENOENT { throw RuntimeFailure("\(unit): cannot be removed: \(String(cString: strerror(errno)))") }
            print("autostart of \(name) disabled")
            return
        }
        do {
            try VMStore.makeDirectories(directory + "/" + Self.wantedBy + ".wants")
            try VMStore.writeAtomically(unit, Array(Self.unit(for: folder).utf8))
        } catch { throw Kept.cli(error) }
        _ = chmod(unit, 0o644)
        unlink(link)
        guard symlink("../" + Self.unitName(name), link) == 0 else {
            throw RuntimeFailure("\(link): cannot be linked: \(String(cString: strerror(errno)))")
        }
        print("autostart of \(name): \(unit)")
    }

    static func unitName(_ name: String) -> String { "swiftkvm-\(name).service" }

    static var wantedBy: String { getuid() == 0 ? "multi-user.target" : "default.target" }

    static func unitDirectory(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let home = environment["SWIFTKVM_HOME"], !home.isEmpty { return Kept.store.dataRoot + "/systemd" }
        if getuid() == 0 { return "/etc/systemd/system" }
        let config = environment["XDG_CONFIG_HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? (environment["HOME"] ?? "/tmp") + "/.config"
        return config + "/systemd/user"
    }

    static func unitPath(_ name: String) -> String { unitDirectory() + "/" + unitName(name) }

    /// systemd quoting (systemd.syntax(7)): double quotes, with `\` and `"` escaped; `%` doubled
    /// (a specifier otherwise) and `$` doubled (an environment expansion otherwise).
    static func quoted(_ text: String) -> String {
        "\"" + text.replacingAll("\\", with: "\\\\").replacingAll("\"", with: "\\\"")
            .replacingAll("%", with: "%%").replacingAll("$", with: "$$") + "\""
    }

    static func unit(for folder: VMFolder, environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let binary = quoted(Kept.executable)
        var lines = [
            "# Written by 'swiftkvm autostart \(folder.name)'; 'swiftkvm autostart \(folder.name) --disable' removes it.",
            "[Unit]",
            "Description=SwiftKVM virtual machine \(folder.name)",
            "After=network.target local-fs.target",
            "",
            "[Service]",
            "Type=exec",
        ]
        if let home = environment["SWIFTKVM_HOME"], !home.isEmpty {
            lines.append("Environment=" + quoted("SWIFTKVM_HOME=" + Kept.store.dataRoot))
        }
        lines += [
            "ExecStart=\(binary) vmm \(folder.name)",
            "ExecStop=\(binary) stop \(folder.name) --timeout 30",
            "TimeoutStopSec=60",
            "KillMode=mixed",
            "SuccessExitStatus=3 4",
            "",
            "[Install]",
            "WantedBy=\(wantedBy)",
            "",
        ]
        return lines.joined(separator: "\n")
    }
}
