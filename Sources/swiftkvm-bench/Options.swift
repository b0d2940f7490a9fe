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

    static let usage = """
        usage: swiftkvm-bench [--quick] [--rounds N] [--iterations N] [--exit-runs N]
                              [--firmware DIR] [--baseline PATH] [--baseline-vcpu-thread] [--strict]

        Compares SwiftKVM with a raw-ioctl C baseline, side by side in one run:
          1. VM round trip: create a VM, run Firmware/build/exit-code.bin to its exit, tear it down
             (median, min, p90; target < 1 ms);
          2. port-I/O exit rate: Firmware/build/io-loop.bin, 20,001 port exits per run
             (target: within 10% of C).
        Run it from the repository root (or pass --firmware and --baseline).

          --rounds N       rounds, alternating which side goes first (default 15)
          --iterations N   VM round trips per side per round (default 100)
          --exit-runs N    io-loop runs per side per round (default 1)
          --quick          smoke test for CI: 1 round, 20 iterations, 1 exit run
                           (--rounds/--iterations/--exit-runs still override it)
          --firmware DIR   where exit-code.bin and io-loop.bin are (default Firmware/build)
          --baseline PATH  the C baseline (default Benchmarks/Baseline/build/kvm-baseline)
          --baseline-vcpu-thread
                           diagnosis: make the C baseline run KVM_RUN on a new thread per VM,
                           as SwiftKVM does, to see what the thread-per-vCPU design costs
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
            case "--strict": options.strict = true
            case "-h", "--help": throw UsageError(nil)
            default: throw UsageError("unknown argument '\(argument)' (see --help)")
            }
        }
        if quick {
            options.rounds = 1
            options.iterations = 20
            options.exitRuns = 1
        }
        options.rounds = explicitRounds ?? options.rounds
        options.iterations = explicitIterations ?? options.iterations
        options.exitRuns = explicitExitRuns ?? options.exitRuns
        return options
    }

    var exitCodeGuestPath: String { firmwareDirectory + "/exit-code.bin" }
    var ioLoopGuestPath: String { firmwareDirectory + "/io-loop.bin" }

    /// Checks that the guests and the baseline are there, with a one-line fix when they are not.
    func checkFiles() throws(UsageError) {
        for guest in [exitCodeGuestPath, ioLoopGuestPath] where access(guest, R_OK) != 0 {
            throw UsageError(
                "\(guest) not found: run `make firmware` (or `make -C Firmware`) from the repository root, or pass --firmware DIR")
        }
        if access(baselinePath, X_OK) != 0 {
            throw UsageError(
                "\(baselinePath) not found: build the C baseline with `make -C Benchmarks/Baseline` from the repository root, or pass --baseline PATH")
        }
    }
}

/// Bad usage or missing files: a one-line message (nil: just print the usage).
struct UsageError: Error {
    let message: String?
    init(_ message: String?) { self.message = message }
}
