import Glibc

/// What `swiftkvm-bench` was asked to do, from its command line.
struct Options {
    /// Rounds; in each, both sides run (which side goes first alternates), so host noise hits both.
    /// Many short rounds spread bursts of host noise over both sides better than a few long ones.
    var rounds = 15
    /// VM round trips per side per round.
    var iterations = 100
    /// io-loop runs (each one VM, 20,001 port exits) per side per round.
    var exitRuns = 1
    /// Where exit-code.bin and io-loop.bin are.
    var firmwareDirectory = "Firmware/build"
    /// The C baseline program.
    var baselinePath = "Benchmarks/Baseline/build/kvm-baseline"
    /// Exit with status 3 when a target is missed (the default only reports it).
    var strict = false
    /// Diagnosis: the C baseline runs KVM_RUN on a new thread per VM, as SwiftKVM does.
    var baselineVCPUThread = false
    /// Each guest run is stopped (and the benchmark fails) after this many seconds.
    var timeLimitSeconds = 10
    /// Boot-probe rounds (swiftkvm and QEMU once each per round); 0 skips the comparison.
    var probeRounds = 10
    /// Only the boot-probe comparison, not the C baseline one.
    var probeOnly = false
    /// The swiftkvm command-line tool the boot probe runs under.
    var swiftkvmPath = ".build/release/swiftkvm"
    /// QEMU, found through PATH unless it contains a slash.
    var qemuPath = "qemu-system-x86_64"

    static let usage = """
        usage: swiftkvm-bench [--quick] [--rounds N] [--iterations N] [--exit-runs N]
                              [--firmware DIR] [--baseline PATH] [--baseline-vcpu-thread] [--strict]
                              [--probe-rounds N | --no-probe | --probe-only] [--swiftkvm PATH] [--qemu PATH]

        Compares SwiftKVM with a raw-ioctl C baseline, side by side in one run:
          1. VM round trip: create a VM, run Firmware/build/exit-code.bin to its exit, tear it down
             (median, min, p90; target < 1 ms);
          2. port-I/O exit rate: Firmware/build/io-loop.bin, 20,001 port exits per run
             (target: within 10% of C).
        and with QEMU:
          3. boot probe: Firmware/build/boot-probe.bin (a bzImage-shaped guest) under the swiftkvm
             tool and under qemu-system-x86_64 -M microvm -enable-kvm, each a child process timed
             from spawn to its first output byte and to its exit (target: faster than QEMU on both).
        Run it from the repository root (or pass --firmware, --baseline and --swiftkvm).

          --rounds N       rounds, alternating which side goes first (default 15)
          --iterations N   VM round trips per side per round (default 100)
          --exit-runs N    io-loop runs per side per round (default 1)
          --quick          smoke test for CI: 1 round, 20 iterations, 1 exit run, 3 probe rounds
                           (--rounds/--iterations/--exit-runs/--probe-rounds still override it)
          --firmware DIR   where exit-code.bin and io-loop.bin are (default Firmware/build)
          --baseline PATH  the C baseline (default Benchmarks/Baseline/build/kvm-baseline)
          --baseline-vcpu-thread
                           diagnosis: make the C baseline run KVM_RUN on a new thread per VM,
                           as SwiftKVM does, to see what the thread-per-vCPU design costs
          --probe-rounds N boot-probe rounds, alternating which side goes first (default 10)
          --no-probe       skip the boot-probe comparison (no QEMU needed)
          --probe-only     only the boot-probe comparison (no C baseline needed)
          --swiftkvm PATH  the swiftkvm tool (default .build/release/swiftkvm)
          --qemu PATH      QEMU (default qemu-system-x86_64, from PATH)
          --strict         exit with status 3 if a target is missed
          -h, --help       this text

        Exit status: 0 done (targets met or not, unless --strict), 1 a run failed or gave a wrong
        outcome, 2 bad usage or missing files, 3 a target missed under --strict.
        """

    /// Parses `arguments` (without the program name). Throws a one-line message on bad usage.
    static func parse(_ arguments: [String]) throws(UsageError) -> Options {
        var options = Options()
        var explicitRounds: Int?
        var explicitIterations: Int?
        var explicitExitRuns: Int?
        var explicitProbeRounds: Int?
        var noProbe = false
        var quick = false
        var remaining = arguments[...]

        func value(for flag: String) throws(UsageError) -> String {
            guard let next = remaining.popFirst() else { throw UsageError("\(flag) needs a value") }
            return next
        }
        func count(for flag: String) throws(UsageError) -> Int {
            let text = try value(for: flag)
            guard let number = Int(text), number > 0 else { throw UsageError("\(flag) needs a positive whole number, not '\(text)'") }
            return number
        }

        while let argument = remaining.popFirst() {
            // Accept --flag=value as well as --flag value.
            if argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") {
                remaining.insert(String(argument[argument.index(after: equals)...]), at: remaining.startIndex)
                remaining.insert(String(argument[..<equals]), at: remaining.startIndex)
                continue
            }
            switch argument {
            case "--rounds": explicitRounds = try count(for: argument)
            case "--iterations": explicitIterations = try count(for: argument)
            case "--exit-runs": explicitExitRuns = try count(for: argument)
            case "--quick": quick = true
            case "--firmware": options.firmwareDirectory = try value(for: argument)
            case "--baseline": options.baselinePath = try value(for: argument)
            case "--baseline-vcpu-thread": options.baselineVCPUThread = true
            case "--probe-rounds": explicitProbeRounds = try count(for: argument)
            case "--no-probe": noProbe = true
            case "--probe-only": options.probeOnly = true
            case "--swiftkvm": options.swiftkvmPath = try value(for: argument)
            case "--qemu": options.qemuPath = try value(for: argument)
            case "--strict": options.strict = true
            case "-h", "--help": throw UsageError(nil)
            default: throw UsageError("unknown argument '\(argument)' (see --help)")
            }
        }
        if quick {
            options.rounds = 1
            options.iterations = 20
            options.exitRuns = 1
            options.probeRounds = 3
        }
        options.rounds = explicitRounds ?? options.rounds
        options.iterations = explicitIterations ?? options.iterations
        options.exitRuns = explicitExitRuns ?? options.exitRuns
        options.probeRounds = explicitProbeRounds ?? options.probeRounds
        if noProbe {
            guard !options.probeOnly else { throw UsageError("--no-probe and --probe-only exclude each other") }
            options.probeRounds = 0
        }
        return options
    }

    var exitCodeGuestPath: String { firmwareDirectory + "/exit-code.bin" }
    var ioLoopGuestPath: String { firmwareDirectory + "/io-loop.bin" }
    var bootProbePath: String { firmwareDirectory + "/boot-probe.bin" }

    var runsBaseline: Bool { !probeOnly }
    var runsProbe: Bool { probeRounds > 0 }

    /// Checks that the guests, the baseline, swiftkvm and QEMU are there (those this run uses),
    /// with a one-line fix when they are not.
    func checkFiles() throws(UsageError) {
        var guests: [String] = []
        if runsBaseline { guests += [exitCodeGuestPath, ioLoopGuestPath] }
        if runsProbe { guests.append(bootProbePath) }
        for guest in guests where access(guest, R_OK) != 0 {
            throw UsageError(
                "\(guest) not found: run `make firmware` (or `make -C Firmware`) from the repository root, or pass --firmware DIR")
        }
        if runsBaseline, access(baselinePath, X_OK) != 0 {
            throw UsageError(
                "\(baselinePath) not found: build the C baseline with `make -C Benchmarks/Baseline` from the repository root, or pass --baseline PATH")
        }
        guard runsProbe else { return }
        if access(swiftkvmPath, X_OK) != 0 {
            throw UsageError(
                "\(swiftkvmPath) not found: build it with `swift build -c release --product swiftkvm`, or pass --swiftkvm PATH")
        }
        if Self.executablePath(qemuPath) == nil {
            throw UsageError(
                "\(qemuPath) not found: install it with `make qemu` (Debian's qemu-system-x86), pass --qemu PATH, or skip that part with --no-probe")
        }
    }

    /// `name` if it contains a slash, else the first executable `name` in PATH's directories.
    static func executablePath(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        let directories = (getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin").split(separator: ":")
        for directory in directories {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// Bad usage or missing files: a one-line message (nil: just print the usage).
struct UsageError: Error {
    let message: String?
    init(_ message: String?) { self.message = message }
}
