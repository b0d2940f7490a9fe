import Foundation
import Testing

/// The seccomp filter of `swiftkvm run` (`--seccomp on`, the default).
@Suite struct SeccompTests {
    /// A forbidden call in a process with the filter installed: the swiftkvm binary's self-test
    /// (a child process: forking inside the test process is unsafe) installs it, then calls execve.
    @Test func anExecveIsStoppedWithAOneLineReport() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SwiftKVMProcess.executable)
        process.environment = ["SWIFTKVM_SECCOMP_SELFTEST": "execve"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit)
        #expect(process.terminationStatus == 159, "\(stderr)")
        #expect(stderr == "swiftkvm: seccomp: forbidden system call 59 (execve): stopping\n")
    }

    /// Firmware guests run to their normal end with the filter on (the default): nothing they make
    /// the VMM do is outside the allow-list.
    @Test(arguments: ["hello-long", "primes-user", "string-io"], [1, 2])
    func firmwareGuestsRunWithTheFilterOn(name: String, cpus: Int) throws {
        let mode = name.hasSuffix("-user") ? "user" : "long"
        let options = ["run", "--firmware", Paths.firmware(name), "--mode", mode, "--time-limit", "60", "--cpus", "\(cpus)"]
        let on = try SwiftKVMProcess.run(options)
        let off = try SwiftKVMProcess.run(options + ["--seccomp", "off"])
        #expect(on.status == off.status, "\(on.stderr)")
        // With several vCPUs the guest ends when the first one is done, after the others printed
        // more or less: only one vCPU's output is the same on every run.
        if cpus == 1 { #expect(on.stdout == off.stdout) }
        #expect(!on.stderr.contains("seccomp"), "\(on.stderr)")
    }

    /// A run long enough for threads to free large buffers (the --stats sampler reads smaps every
    /// half second): glibc's malloc then probes /proc/sys/vm/overcommit_memory, which the filter
    /// must refuse quietly (EACCES), not stop the VMM over.
    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func aLongRunWithStatisticsKeepsWithinTheFilter() throws {
        let result = try SwiftKVMProcess.run(
            ["run", "--firmware", Paths.firmware("counter-user"), "--mode", "user", "--time-limit", "3", "--stats"])
        #expect(result.status == 124, "\(result.stderr)")
        #expect(!result.stderr.contains("seccomp"), "\(result.stderr)")
        #expect(result.stderr.contains("resident memory"), "\(result.stderr)")
    }

    /// The filter of a VM that can be rebuilt lets the VMM read files (the kernel again after a
    /// reset) and nothing else: no writing, appending, truncating or creating.
    @Test func aRebuildableVMsFilterOpensForReadingOnly() throws {
        let path = "\(NSTemporaryDirectory())swiftkvm-seccomp-\(getpid()).txt"
        try Data("kept\n".utf8).write(to: URL(fileURLWithPath: path))
        defer { unlink(path); unlink(path + ".new") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: SwiftKVMProcess.executable)
        process.environment = ["SWIFTKVM_SECCOMP_SELFTEST": "rebuilding-opens \(path)"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(text)")
        #expect(text.hasPrefix("read: opened\nwrite: refused (Permission denied)\n"), "\(text)")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "kept\n")
        #expect(!FileManager.default.fileExists(atPath: path + ".new"))
    }

    /// A Linux-shaped guest with a disk that reboots after each write, with `on_reboot` restart:
    /// every boot after the first builds a new KVM VM and reads the kernel again under the filter,
    /// on the disk the first boot opened, and writes through to the host file.
    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func aDiskGuestThatRebootsIsBuiltAgainUnderTheFilter() throws {
        let disk = try HostileDiskGuestTests.sparseDisk("seccomp-restart", size: 8 << 20)
        defer { unlink(disk) }
        let printed = try SwiftKVMProcess.run([
            "run", "--kernel", Paths.firmware("virtio-blk"), "--memory", "64M", "--cmdline", "console=ttyS0 vblk.read=16 vblk.write=8",
            "--disk", disk, "--print-config",
        ])
        try #require(printed.status == 0, "\(printed.stderr)")
        let config = "\(NSTemporaryDirectory())swiftkvm-seccomp-restart-\(getpid()).json"
        try Data(printed.stdout.replacingOccurrences(of: #""on_reboot" : "destroy""#, with: #""on_reboot" : "restart""#).utf8)
            .write(to: URL(fileURLWithPath: config))
        defer { unlink(config) }
        let run = try SwiftKVMProcess.run(["run", "--config", config, "--time-limit", "4"])
        #expect(run.status == 124, "\(run.stderr)")
        #expect(!run.stderr.contains("seccomp"), "\(run.stderr)")
        let boots = run.stdout.components(separatedBy: "VBLK DONE failures 0x0\n").count - 1
        #expect(boots >= 2, "the guest booted \(boots) times: \(run.stdout.suffix(400))")
        let written = try [UInt8](Data(contentsOf: URL(fileURLWithPath: disk)))
        #expect(Array(written[(8 * 512)..<(8 * 512 + 8)]) == [0, 0, 0, 0x54, 0x46, 0x49, 0x57, 0x53], "the pattern's first word is on the host disk")
    }

    /// With a control API the VMM may rebuild the VM, so its own threads keep the wider filter;
    /// the vCPU threads, which handle what the guest writes, stack the strict one on it (two
    /// filters in /proc's Seccomp_filters). Without, every thread has the strict filter alone.
    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func theVCPUThreadsOfARebuildableVMHaveTheStrictFilterStacked() throws {
        for (withAPI, expected) in [(true, (vmm: 1, vcpu: 2)), (false, (vmm: 1, vcpu: 1))] {
            let socket = "\(NSTemporaryDirectory())swiftkvm-seccomp-\(getpid()).sock"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: SwiftKVMProcess.executable)
            process.arguments = ["run", "--firmware", Paths.firmware("spin-user"), "--mode", "user", "--time-limit", "20"]
                + (withAPI ? ["--api-socket", socket] : [])
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
            defer {
                kill(process.processIdentifier, SIGTERM)
                process.waitUntilExit()
            }
            // Until the vCPU thread is there and filtered (bounded: 100 looks, 10 s).
            var filters: [String: Int] = [:]
            for _ in 0..<100 {
                filters = Self.seccompFilters(of: process.processIdentifier)
                if (filters["vcpu0"] ?? 0) >= expected.vcpu { break }
                usleep(100_000)
            }
            #expect(filters["vcpu0"] == expected.vcpu, "with the API \(withAPI): \(filters)")
            #expect(filters["swiftkvm"] == expected.vmm, "with the API \(withAPI): \(filters)")
        }
    }

    /// Each thread's name (comm) and its `Seccomp_filters` count (proc(5)).
    static func seccompFilters(of pid: Int32) -> [String: Int] {
        var result: [String: Int] = [:]
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        for task in tasks {
            guard let name = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8),
                let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8),
                let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Seccomp_filters:") }),
                let count = Int(line.split(separator: "\t").last ?? "")
            else { continue }
            result[name.trimmingCharacters(in: .whitespacesAndNewlines)] = count
        }
        return result
    }

    @Test func aBadValueIsAUsageError() throws {
        let result = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("hello-long"), "--seccomp", "maybe"])
        #expect(result.status == 2)
        #expect(result.stderr == "swiftkvm: --seccomp must be on or off, not 'maybe'\n")
    }
}
