import Glibc
import VMM

/// A run that failed or ended the wrong way: the benchmark stops and says which side and why.
struct BenchmarkFailure: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// The SwiftKVM side: the same unit guests through the public `UnitGuest` API, in this process.
struct SwiftSide {
    static let roundTripStatus: UInt8 = 42
    static let exitRateStatus: UInt8 = 0

    let roundTripGuest: UnitGuest
    let exitRateGuest: UnitGuest
    let timeLimitSeconds: Int

    init(options: Options) throws(BenchmarkFailure) {
        timeLimitSeconds = options.timeLimitSeconds
        Watchdog.install()
        do {
            roundTripGuest = try UnitGuest(
                contentsOf: options.exitCodeGuestPath, mode: .real, memorySize: 2 << 20,
                timeLimit: .seconds(options.timeLimitSeconds))
            exitRateGuest = try UnitGuest(
                contentsOf: options.ioLoopGuestPath, mode: .real, memorySize: 2 << 20,
                timeLimit: .seconds(options.timeLimitSeconds))
        } catch {
            throw BenchmarkFailure("swiftkvm: \(error)")
        }
    }

    /// One untimed run of each guest, so the one-time costs of the process (opening /dev/kvm,
    /// KVM_GET_SUPPORTED_CPUID, the kick handler, first page faults) are not in any sample. The C
    /// baseline opens /dev/kvm and asks for the CPUID outside its timed loop and warms up once too.
    func warmUp() throws(BenchmarkFailure) {
        Watchdog.arm(seconds: timeLimitSeconds)
        defer { Watchdog.disarm() }
        try Self.check(try runRoundTrip(), expected: Self.roundTripStatus, guest: "exit-code.bin")
    }

    /// Times `guest.run()` and the release of everything it made (munmap, close) — the whole
    /// create → run → tear-down of one VM. Returns nanoseconds.
    func timeRoundTrip() throws(BenchmarkFailure) -> UInt64 {
        Watchdog.arm(seconds: timeLimitSeconds)
        let start = monotonicNanoseconds()
        let outcome = try runRoundTrip()
        let end = monotonicNanoseconds()
        Watchdog.disarm()
        try Self.check(outcome, expected: Self.roundTripStatus, guest: "exit-code.bin")
        return end - start
    }

    /// Builds, runs and drops one VM; the `GuestRun` (and with it guest memory) is released before
    /// this returns, so the caller's clock includes the tear-down.
    @inline(never)
    private func runRoundTrip() throws(BenchmarkFailure) -> GuestOutcome {
        do {
            let run = try roundTripGuest.run()
            return run.outcome
        } catch {
            throw BenchmarkFailure("swiftkvm: exit-code.bin: \(error)")
        }
    }

    /// One io-loop run: the number of port-I/O exits and the time from the first KVM_RUN to the
    /// vCPU thread's end (`GuestRun.duration`).
    func measureExitRate() throws(BenchmarkFailure) -> ExitRateSample {
        let outcome: GuestOutcome
        let exits: Int
        let duration: Duration
        Watchdog.arm(seconds: timeLimitSeconds)
        defer { Watchdog.disarm() }
        do {
            let run = try exitRateGuest.run()
            (outcome, exits, duration) = (run.outcome, run.statistics.portWrites + run.statistics.portReads, run.duration)
        } catch {
            throw BenchmarkFailure("swiftkvm: io-loop.bin: \(error)")
        }
        try Self.check(outcome, expected: Self.exitRateStatus, guest: "io-loop.bin")
        let (seconds, attoseconds) = duration.components
        let nanoseconds = UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        return ExitRateSample(exits: exits, nanoseconds: nanoseconds)
    }

    private static func check(_ outcome: GuestOutcome, expected status: UInt8, guest: String) throws(BenchmarkFailure) {
        guard outcome == .exited(status: status) else {
            throw BenchmarkFailure("swiftkvm: \(guest): \(outcome); expected exit status \(status)")
        }
    }
}

/// One exit-rate run, from either side.
struct ExitRateSample {
    let exits: Int
    let nanoseconds: UInt64
    var perSecond: Double { nanoseconds == 0 ? 0 : Double(exits) * 1e9 / Double(nanoseconds) }
}

/// A last line of defence for CI: if a SwiftKVM run outlives its own time limit by `grace` seconds
/// (its deadline failed to stop the guest), the benchmark says so and exits 1 instead of hanging.
/// SIGALRM, a standard signal, ends the process from whichever thread it lands on.
enum Watchdog {
    static let grace: UInt32 = 5
    private static let message = strdup(
        "swiftkvm-bench: a swiftkvm run outlived its time limit by 5 s: the VMM's deadline did not stop the guest; giving up\n")

    static func install() {
        _ = message
        signal(SIGALRM) { _ in
            if let text = Watchdog.message { _ = write(STDERR_FILENO, text, strlen(text)) }
            _exit(1)
        }
    }

    @inline(__always) static func arm(seconds: Int) { alarm(UInt32(seconds) + grace) }
    @inline(__always) static func disarm() { alarm(0) }
}
