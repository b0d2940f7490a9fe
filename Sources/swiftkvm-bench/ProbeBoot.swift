import Glibc

/// The boot probe (Firmware/build/boot-probe.bin, a 5 KiB bzImage-shaped guest) under the
/// `swiftkvm` command-line tool and under QEMU `-M microvm`, both as child processes timed the same
/// way: from just before posix_spawn to the first byte on the child's standard output, and to the
/// child's exit. So each side pays its own process start-up, VM set-up and firmware: swiftkvm
/// enters the probe's 64-bit entry directly, QEMU's qboot runs the probe's real-mode setup, which
/// enters its 32-bit entry, which enters long mode (Firmware/src/boot-probe.S).
struct ProbeBootBench {
    enum Side: String, CaseIterable {
        case swiftkvm
        case qemu = "QEMU microvm"
    }

    static let commandLine = "probe-marker=1234 console=ttyS0"
    static let memory = "64M"
    /// The probe's last line when every check passed.
    static let passLine = "PROBE DONE failures=0x0000000000000000"

    let swiftkvmCommand: [String]
    let qemuCommand: [String]
    let timeLimitSeconds: Int
    private let initrd: ProbeInitrd

    init(options: Options) throws(BenchmarkFailure) {
        initrd = try ProbeInitrd()
        timeLimitSeconds = options.timeLimitSeconds
        swiftkvmCommand = [
            options.swiftkvmPath, "run", "--kernel", options.bootProbePath, "--initrd", initrd.path,
            "--cmdline", Self.commandLine, "--memory", Self.memory, "--time-limit", String(options.timeLimitSeconds),
        ]
        // -cpu host aborts on KVM-PVM hosts unless arch-capabilities is removed (HOST.md); the
        // debug-exit device ends QEMU with status (value << 1) | 1 when the probe writes its
        // failure count to port 0xF4.
        qemuCommand = [
            options.qemuPath, "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", Self.memory,
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", options.bootProbePath, "-initrd", initrd.path, "-append", Self.commandLine,
        ]
    }

    func command(_ side: Side) -> [String] { side == .swiftkvm ? swiftkvmCommand : qemuCommand }

    /// swiftkvm ends the probe through its i8042 reset (status 0); QEMU through isa-debug-exit with
    /// a failure count of 0, (0 << 1) | 1.
    static func expectedStatus(_ side: Side) -> Int32 { side == .swiftkvm ? 0 : 1 }

    /// One timed run, checked: the right exit status and every probe check passed.
    func run(_ side: Side) throws(BenchmarkFailure) -> ProbeBootSample {
        let arguments = command(side)
        let result: TimedChildResult
        do {
            // The child has its own deadline (swiftkvm's --time-limit); this one catches QEMU and
            // a swiftkvm whose deadline failed.
            result = try runTimedChild(arguments, deadlineSeconds: timeLimitSeconds + Int(Watchdog.grace))
        } catch {
            throw BenchmarkFailure("\(side.rawValue): \(arguments.joined(separator: " ")): \(error.message)")
        }
        let expected = Self.expectedStatus(side)
        guard result.termination == .exited(expected), result.output.contains(Self.passLine),
            let firstOutput = result.firstOutputNanoseconds
        else {
            throw BenchmarkFailure(
                """
                \(side.rawValue): the boot probe did not pass (\(result.termination), expected exit status \(expected)): \
                \(arguments.joined(separator: " "))
                stdout: \(result.output)
                stderr: \(result.errorOutput)
                """)
        }
        return ProbeBootSample(firstOutput: firstOutput, exit: result.exitNanoseconds)
    }

    func removeFiles() { initrd.remove() }

    /// The first line of `qemu --version` ("QEMU emulator version 7.2.x ..."), nil if it fails.
    static func version(of qemu: String) -> String? {
        guard let result = try? runTimedChild([qemu, "--version"], deadlineSeconds: 10), result.termination == .exited(0)
        else { return nil }
        return result.output.split(separator: "\n").first.map(String.init)
    }
}

/// One probe run's times from spawn, in nanoseconds.
struct ProbeBootSample {
    let firstOutput: UInt64
    let exit: UInt64
}

/// The probe's initrd in /tmp: "PROBE-INITRD-OK!" then pseudo-random bytes, 10,000 in all (what
/// Tests/VMMTests/BootProbeTests.swift hands it too).
struct ProbeInitrd {
    let path: String

    init() throws(BenchmarkFailure) {
        var bytes = Array("PROBE-INITRD-OK!".utf8)
        var state: UInt32 = 0x1234_5678
        while bytes.count < 10_000 {
            state = state &* 1_103_515_245 &+ 12345
            bytes.append(UInt8(truncatingIfNeeded: state >> 16))
        }
        var template = Array("/tmp/swiftkvm-bench-initrd-XXXXXX".utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard descriptor >= 0 else { throw BenchmarkFailure("mkstemp: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        path = String(cString: template)
        var written = 0
        while written < bytes.count {
            let result = bytes[written...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            guard result > 0 else {
                unlink(path)
                throw BenchmarkFailure("write \(path): \(String(cString: strerror(errno)))")
            }
            written += result
        }
    }

    func remove() { unlink(path) }
}

struct TimedChildResult {
    let termination: ChildResult.Termination
    /// From just before posix_spawn to the first byte read from the child's standard output.
    let firstOutputNanoseconds: UInt64?
    /// From just before posix_spawn to waitpid's return.
    let exitNanoseconds: UInt64
    let output: String
    let errorOutput: String
}

/// posix_spawnp with standard input from /dev/null and standard output and error on pipes, read
/// with poll until both close; then waitpid. The clock starts just before the spawn. After
/// `deadlineSeconds` the child is killed (SIGKILL) and this throws.
func runTimedChild(_ arguments: [String], deadlineSeconds: Int) throws(SpawnError) -> TimedChildResult {
    var outPipe: [Int32] = [-1, -1]
    var errPipe: [Int32] = [-1, -1]
    guard pipe(&outPipe) == 0 else { throw SpawnError(message: "pipe: \(String(cString: strerror(errno)))") }
    guard pipe(&errPipe) == 0 else {
        close(outPipe[0])
        close(outPipe[1])
        throw SpawnError(message: "pipe: \(String(cString: strerror(errno)))")
    }
    for descriptor in outPipe + errPipe { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }

    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], STDOUT_FILENO)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], STDERR_FILENO)

    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }

    var pid = pid_t()
    let start = monotonicNanoseconds()
    let spawned = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
    close(outPipe[1])
    close(errPipe[1])
    guard spawned == 0 else {
        close(outPipe[0])
        close(errPipe[0])
        throw SpawnError(message: "posix_spawnp: \(String(cString: strerror(spawned)))")
    }

    let deadline = start + UInt64(deadlineSeconds) * 1_000_000_000
    var output: [UInt8] = []
    var errorOutput: [UInt8] = []
    var firstOutput: UInt64?
    var open = [outPipe[0], errPipe[0]]
    var buffer = [UInt8](repeating: 0, count: 65536)
    var timedOut = false
    while !open.isEmpty {
        let now = monotonicNanoseconds()
        guard now < deadline else {
            timedOut = true
            break
        }
        var descriptors = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let ready = poll(&descriptors, nfds_t(descriptors.count), Int32(min((deadline - now) / 1_000_000 + 1, 1_000)))
        if ready < 0 {
            guard errno == EINTR else { break }
            continue
        }
        for entry in descriptors where entry.revents != 0 {
            let count = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
            if count > 0 {
                if entry.fd == outPipe[0] {
                    if firstOutput == nil { firstOutput = monotonicNanoseconds() - start }
                    output += buffer[0..<count]
                } else {
                    errorOutput += buffer[0..<count]
                }
            } else if count == 0 || errno != EINTR {
                close(entry.fd)
                open.removeAll { $0 == entry.fd }
            }
        }
    }
    for descriptor in open { close(descriptor) }
    if timedOut { kill(pid, SIGKILL) }

    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { throw SpawnError(message: "waitpid: \(String(cString: strerror(errno)))") }
    }
    let exit = monotonicNanoseconds() - start
    if timedOut { throw SpawnError(message: "still running after \(deadlineSeconds) s: killed") }
    let termination: ChildResult.Termination =
        status & 0x7F == 0 ? .exited((status >> 8) & 0xFF) : .signalled(status & 0x7F)
    return TimedChildResult(
        termination: termination, firstOutputNanoseconds: firstOutput, exitNanoseconds: exit,
        output: String(decoding: output, as: UTF8.self), errorOutput: String(decoding: errorOutput, as: UTF8.self))
}
