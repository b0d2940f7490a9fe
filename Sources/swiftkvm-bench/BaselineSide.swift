import Glibc

/// The C side: `kvm-baseline` (Benchmarks/Baseline), run as a child process per round. It times
/// itself with CLOCK_MONOTONIC around the same spans the Swift side times, so process start-up is
/// never in a sample.
struct BaselineSide {
    let path: String
    let roundTripGuestPath: String
    let exitRateGuestPath: String
    let timeLimitSeconds: Int
    let vcpuThread: Bool
    static let memoryBytes = 2 << 20

    init(options: Options) {
        path = options.baselinePath
        roundTripGuestPath = options.exitCodeGuestPath
        exitRateGuestPath = options.ioLoopGuestPath
        timeLimitSeconds = options.timeLimitSeconds
        vcpuThread = options.baselineVCPUThread
    }

    /// `kvm-baseline roundtrip exit-code.bin N`: N timed round trips (after one untimed warm-up),
    /// each checked to end with status 42. Returns each iteration's nanoseconds.
    func roundTrips(_ iterations: Int) throws(BenchmarkFailure) -> [UInt64] {
        let output = try run(
            ["roundtrip", roundTripGuestPath, String(iterations), String(Self.memoryBytes)],
            expectedStatus: SwiftSide.roundTripStatus)
        let samples = output.split(separator: "\n").compactMap { line -> UInt64? in
            guard line.hasPrefix("sample ") else { return nil }
            return Self.field("ns", in: line).flatMap { UInt64($0) }
        }
        guard samples.count == iterations else {
            throw BenchmarkFailure("kvm-baseline roundtrip printed \(samples.count) samples, expected \(iterations): \(output)")
        }
        return samples
    }

    /// `kvm-baseline exitrate io-loop.bin MEMORY RUNS`: RUNS io-loop VMs, each checked to exit 0.
    func exitRates(_ runs: Int) throws(BenchmarkFailure) -> [ExitRateSample] {
        let output = try run(
            ["exitrate", exitRateGuestPath, String(Self.memoryBytes), String(runs)],
            expectedStatus: SwiftSide.exitRateStatus)
        let samples = output.split(separator: "\n").compactMap { line -> ExitRateSample? in
            guard line.hasPrefix("exitrate "),
                let exits = Self.field("exits", in: line).flatMap({ Int($0) }),
                let nanoseconds = Self.field("ns", in: line).flatMap({ UInt64($0) })
            else { return nil }
            return ExitRateSample(exits: exits, nanoseconds: nanoseconds)
        }
        guard samples.count == runs else {
            throw BenchmarkFailure("kvm-baseline exitrate printed \(samples.count) results, expected \(runs): \(output)")
        }
        return samples
    }

    /// The value of `name=value` in a line of `key=value` words.
    private static func field(_ name: String, in line: Substring) -> Substring? {
        for word in line.split(separator: " ") where word.hasPrefix(name + "=") {
            return word.dropFirst(name.count + 1)
        }
        return nil
    }

    /// Runs the baseline with `arguments`, its stdout captured and its stderr passed through.
    private func run(_ arguments: [String], expectedStatus: UInt8) throws(BenchmarkFailure) -> String {
        let environment = [
            "BASELINE_SAMPLES=1",
            "BASELINE_EXPECT_STATUS=\(expectedStatus)",
            "BASELINE_TIMEOUT=\(timeLimitSeconds)",
            "BASELINE_VCPU_THREAD=\(vcpuThread ? 1 : 0)",
        ]
        let command = ([path] + arguments).joined(separator: " ")
        let result: ChildResult
        do {
            result = try runChild([path] + arguments, extraEnvironment: environment)
        } catch {
            throw BenchmarkFailure("\(command): \(error.message)")
        }
        switch result.termination {
        case .exited(0): return result.output
        case .exited(let status): throw BenchmarkFailure("\(command) failed (exit status \(status)); its message is above")
        case .signalled(let signal): throw BenchmarkFailure("\(command) was killed by signal \(signal)")
        }
    }
}

struct ChildResult {
    enum Termination: Equatable {
        case exited(Int32)
        case signalled(Int32)
    }
    let termination: Termination
    let output: String
}

struct SpawnError: Error {
    let message: String
}

/// posix_spawn + a pipe for stdout + waitpid; the child inherits this process's environment plus
/// `extraEnvironment` (NAME=value words, which win over inherited ones).
func runChild(_ arguments: [String], extraEnvironment: [String]) throws(SpawnError) -> ChildResult {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw SpawnError(message: "pipe: \(String(cString: strerror(errno)))") }
    let (readEnd, writeEnd) = (fds[0], fds[1])
    // Neither end may leak into the child except as its stdout (the dup2 below clears FD_CLOEXEC on fd 1).
    _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
    _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, writeEnd, STDOUT_FILENO)

    let overridden = Set(extraEnvironment.map { $0.prefix { $0 != "=" } })
    var environment: [String] = []
    var entry = environ
    while let variable = entry.pointee {
        let text = String(cString: variable)
        if !overridden.contains(text.prefix { $0 != "=" }) { environment.append(text) }
        entry += 1
    }
    environment += extraEnvironment

    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }

    var pid = pid_t()
    let spawned = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
    close(writeEnd)
    guard spawned == 0 else {
        close(readEnd)
        throw SpawnError(message: "posix_spawn: \(String(cString: strerror(spawned)))")
    }

    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
        if count > 0 {
            output += buffer[0..<count]
        } else if count == 0 || errno != EINTR {
            break
        }
    }
    close(readEnd)

    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { throw SpawnError(message: "waitpid: \(String(cString: strerror(errno)))") }
    }
    // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import (they are macros).
    let termination: ChildResult.Termination =
        status & 0x7F == 0 ? .exited((status >> 8) & 0xFF) : .signalled(status & 0x7F)
    return ChildResult(termination: termination, output: String(decoding: output, as: UTF8.self))
}
