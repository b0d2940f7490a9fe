import Foundation
import Testing

/// The control API on a real VM, driven with curl as a user would: `swiftkvm run --api-socket`
/// and `swiftkvm serve`.
@Suite(.enabled(if: KVM.shouldRun, KVM.skipReason))
struct ControlAPICommandTests {
    /// A `swiftkvm` running in the background with its output collected.
    final class Background: @unchecked Sendable {
        let process = Process()
        let output = Pipe()
        let errors = Pipe()
        private let collected = NSLock()
        private var stdoutBytes = Data()

        /// Standard input, when `withInput` asked for one (else /dev/null).
        let input = Pipe()

        init(_ arguments: [String], environment: [String: String]? = nil, executable: String = SwiftKVMProcess.executable, withInput: Bool = false) throws {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
            if let environment { process.environment = environment }
            process.standardOutput = output
            process.standardError = errors
            process.standardInput = withInput ? input : FileHandle.nullDevice
            output.fileHandleForReading.readabilityHandler = { [weak self] handle in
                let data = handle.availableData
                guard let self, !data.isEmpty else { return }
                self.collected.lock()
                self.stdoutBytes.append(data)
                self.collected.unlock()
            }
            try process.run()
        }

        var stdout: String {
            collected.lock()
            defer { collected.unlock() }
            return String(decoding: stdoutBytes, as: UTF8.self)
        }

        /// Waits for the process to end (at most `seconds`, then it is killed); its status and stderr.
        func finish(within seconds: Double = 60) -> (status: Int32, stderr: String) {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning, Date() < deadline { usleep(10_000) }
            if process.isRunning {
                process.terminate()
                Issue.record("swiftkvm did not end in \(seconds) s")
            }
            process.waitUntilExit()
            let stderr = errors.fileHandleForReading.readDataToEndOfFile()
            output.fileHandleForReading.readabilityHandler = nil
            return (process.terminationStatus, String(decoding: stderr, as: UTF8.self))
        }
    }

    /// `curl --unix-socket`: the status code and the body.
    static func curl(_ socket: String, _ method: String, _ path: String, body: String? = nil) throws -> (status: Int, body: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        var arguments = ["-s", "--max-time", "20", "--unix-socket", socket, "-X", method, "-w", "\n%{http_code}", "http://localhost\(path)"]
        if let body { arguments += ["-H", "Content-Type: application/json", "-d", body] }
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    static func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    static func socketPath(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-\(name)-\(UUID().uuidString.prefix(8)).sock").path
    }

    static func waitFor(seconds: Double = 30, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            usleep(20_000)
        }
        return false
    }

    @Test func aRunningFirmwareVMAnswersEveryEndpoint() throws {
        let socket = Self.socketPath("run")
        let vm = try Background(["run", "--firmware", Paths.firmware("counter-user"), "--mode", "user", "--api-socket", socket, "--time-limit", "60"])
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: socket) })
        let permissions = (try FileManager.default.attributesOfItem(atPath: socket)[.posixPermissions] as? Int) ?? 0
        #expect(permissions == 0o600)

        var info = Self.json(try Self.curl(socket, "GET", "/").body)
        #expect(info["state"] as? String == "Running")
        #expect(info["boot_count"] as? Int == 1)
        #expect(info["app_name"] as? String == "swiftkvm")

        #expect(try Self.curl(socket, "PATCH", "/vm", body: #"{"state": "Paused"}"#).status == 204)
        #expect(Self.json(try Self.curl(socket, "GET", "/").body)["state"] as? String == "Paused")
        let atPause = vm.stdout.utf8.count
        usleep(500_000)
        #expect(vm.stdout.utf8.count == atPause, "the console moved while paused")
        #expect(try Self.curl(socket, "PATCH", "/vm", body: #"{"state": "Paused"}"#).status == 409)
        #expect(try Self.curl(socket, "PATCH", "/vm", body: #"{"state": "Resumed"}"#).status == 204)
        #expect(Self.waitFor { vm.stdout.utf8.count > atPause + 20 })

        let stats = Self.json(try Self.curl(socket, "GET", "/stats").body)
        #expect(((stats["exits_by_reason"] as? [String: Any])?["io_out"] as? Int ?? 0) > 0)
        #expect((stats["vcpus"] as? [[String: Any]])?.count == 1)

        let machine = Self.json(try Self.curl(socket, "GET", "/machine-config").body)
        #expect(machine["vcpu_count"] as? Int == 1)
        #expect(machine["mem_size_mib"] as? Int == 2)
        let config = Self.json(try Self.curl(socket, "GET", "/vm/config").body)
        #expect(((config["boot"] as? [String: Any])?["firmware"] as? [String: Any])?["mode"] as? String == "user")

        // Started: its configuration is fixed; a firmware guest has no power button.
        #expect(try Self.curl(socket, "PUT", "/boot-source", body: #"{"kernel_image_path": "/k"}"#).status == 409)
        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "InstanceStart"}"#).status == 409)
        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "PowerButton"}"#).status == 409)
        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "Frobnicate"}"#).status == 400)
        #expect(try Self.curl(socket, "GET", "/nowhere").status == 404)

        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "HardReset"}"#).status == 204)
        let rebooted = try Self.waitFor { Self.json(try Self.curl(socket, "GET", "/").body)["boot_count"] as? Int == 2 }
        #expect(rebooted)
        info = Self.json(try Self.curl(socket, "GET", "/").body)
        #expect(info["state"] as? String == "Running")

        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "Stop"}"#).status == 204)
        let end = vm.finish()
        #expect(end.status == 0, "\(end.stderr)")
        #expect(end.stderr.contains("stopped"), "\(end.stderr)")
        #expect(!FileManager.default.fileExists(atPath: socket), "the socket is removed on exit")
    }

    @Test func aVMStartedPausedWaitsForResumeAndKillIsReported() throws {
        let socket = Self.socketPath("paused")
        let vm = try Background(
            ["run", "--firmware", Paths.firmware("counter-user"), "--mode", "user", "--api-socket", socket, "--paused", "--time-limit", "60"])
        let startedPaused = try Self.waitFor {
            guard FileManager.default.fileExists(atPath: socket) else { return false }
            return Self.json(try Self.curl(socket, "GET", "/").body)["state"] as? String == "Paused"
        }
        #expect(startedPaused)
        usleep(300_000)
        #expect(vm.stdout.isEmpty, "a VM started paused printed")
        #expect(try Self.curl(socket, "PATCH", "/vm", body: #"{"state": "Resumed"}"#).status == 204)
        #expect(Self.waitFor { vm.stdout.contains("\n3\n") })
        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "Kill"}"#).status == 204)
        let end = vm.finish()
        #expect(end.status == 137, "\(end.stderr)")
        #expect(end.stderr.contains("the VM was killed"), "\(end.stderr)")
    }

    @Test func pausedWithoutASocketIsAUsageError() throws {
        let result = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("counter-user"), "--paused"])
        #expect(result.status == 2)
        #expect(result.stderr == "swiftkvm: --paused needs --api-socket: nothing else could resume the VM\n")
    }

    /// `serve`: an empty VMM configured over the API, started, and ended by the ACPI power button
    /// on a guest that enables the event and powers off through S5 when its SCI comes.
    @Test(.timeLimit(.minutes(45)))
    func anEmptyVMMIsConfiguredStartedAndPoweredOffThroughTheAPI() throws {
        let socket = Self.socketPath("serve")
        let vmm = try Background(["serve", "--api-socket", socket, "--time-limit", "200"])
        #expect(Self.waitFor { FileManager.default.fileExists(atPath: socket) })
        var info = Self.json(try Self.curl(socket, "GET", "/").body)
        #expect(info["state"] as? String == "Not started")
        #expect(info["boot_count"] as? Int == 0)
        #expect(try Self.curl(socket, "PATCH", "/vm", body: #"{"state": "Paused"}"#).status == 409)
        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "InstanceStart"}"#).status == 400, "no boot source yet")
        let kernel = "\(Paths.root)/Firmware/build/acpi-power.bin"
        #expect(
            try Self.curl(socket, "PUT", "/boot-source", body: #"{"kernel_image_path": "\#(kernel)", "boot_args": "console=ttyS0 action=button"}"#)
                .status == 204)
        #expect(try Self.curl(socket, "PUT", "/machine-config", body: #"{"vcpu_count": 1, "mem_size_mib": 64}"#).status == 204)
        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "InstanceStart"}"#).status == 204)
        // The boot itself happens on the VMM's main thread, just after the answer.
        let booted = try Self.waitFor { Self.json(try Self.curl(socket, "GET", "/").body)["boot_count"] as? Int == 1 }
        #expect(booted)
        #expect(Self.waitFor(seconds: 150) { vmm.stdout.contains("POWER waiting for the power button") }, "\(vmm.stdout)")
        #expect(try Self.curl(socket, "PUT", "/actions", body: #"{"action_type": "PowerButton"}"#).status == 204)
        let end = vmm.finish(within: 60)
        #expect(end.status == 0, "\(end.stderr)")
        #expect(end.stderr.contains("the guest powered off (ACPI S5)"), "\(end.stderr)")
        #expect(vmm.stdout.contains("POWER button pressed"), "\(vmm.stdout)")
        #expect(!FileManager.default.fileExists(atPath: socket))
    }
}
