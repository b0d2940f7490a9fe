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

    @Test func aBadValueIsAUsageError() throws {
        let result = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("hello-long"), "--seccomp", "maybe"])
        #expect(result.status == 2)
        #expect(result.stderr == "swiftkvm: --seccomp must be on or off, not 'maybe'\n")
    }
}
