// swiftkvm-bench — `make bench`: SwiftKVM against a raw-ioctl C baseline, side by side in one run.
//
// Two measurements, each alternating the sides round by round (and which side goes first), so
// that host noise — on KVM-PVM hosts it is large — hits both alike; medians are over all samples:
//   1. VM round trip: create a VM, run Firmware/build/exit-code.bin (real mode, `out 0xF4, 42`) to
//      its exit, tear it down, in-process. Target: median < 1 ms.
//   2. Port-I/O exit rate: Firmware/build/io-loop.bin (20,000 `out 0x80` + the exit, 20,001 port
//      exits) from the first KVM_RUN to the end. Target: within 10% of C.
// The C side is Benchmarks/Baseline/build/kvm-baseline, run as a child process; it times itself.

import Glibc

func printError(_ message: String) {
    fputs("swiftkvm-bench: \(message)\n", stderr)
}

/// Progress on stderr, only when someone is watching a terminal.
func progress(_ message: String) {
    guard isatty(STDERR_FILENO) != 0 else { return }
    fputs("\r\u{1B}[K\(message)", stderr)
}

let options: Options
do throws(UsageError) {
    options = try Options.parse(Array(CommandLine.arguments.dropFirst()))
    try options.checkFiles()
} catch {
    if let message = error.message {
        printError(message)
        exit(2)
    }
    print(Options.usage)
    exit(0)
}

let environment = HostEnvironment.current()
let baseline = BaselineSide(options: options)
var results = Results()

do throws(BenchmarkFailure) {
    let swift = try SwiftSide(options: options)
    try swift.warmUp()

    for round in 0..<options.rounds {
        // Even rounds: swiftkvm first; odd rounds: C first.
        let swiftFirst = round % 2 == 0
        let label = "round \(round + 1)/\(options.rounds)"

        for side in swiftFirst ? [0, 1] : [1, 0] {
            if side == 0 {
                progress("\(label): swiftkvm, \(options.iterations) VM round trips")
                for _ in 0..<options.iterations { results.swiftRoundTrips.append(try swift.timeRoundTrip()) }
            } else {
                progress("\(label): C baseline, \(options.iterations) VM round trips")
                results.baselineRoundTrips += try baseline.roundTrips(options.iterations)
            }
        }
        for side in swiftFirst ? [0, 1] : [1, 0] {
            if side == 0 {
                progress("\(label): swiftkvm, \(options.exitRuns) io-loop runs")
                for _ in 0..<options.exitRuns { results.swiftExitRates.append(try swift.measureExitRate()) }
            } else {
                progress("\(label): C baseline, \(options.exitRuns) io-loop runs")
                results.baselineExitRates += try baseline.exitRates(options.exitRuns)
            }
        }
    }
    progress("")

    // Both sides ran the same guest: they must have seen the same number of port exits.
    let swiftExits = Set(results.swiftExitRates.map(\.exits))
    let baselineExits = Set(results.baselineExitRates.map(\.exits))
    guard swiftExits.count == 1, swiftExits == baselineExits else {
        throw BenchmarkFailure(
            "io-loop.bin: the sides counted different port exits per run (swiftkvm \(swiftExits.sorted()), C \(baselineExits.sorted()))")
    }
} catch {
    progress("")
    printError(error.message)
    exit(1)
}

#if DEBUG
let buildNote = "  (DEBUG build: not representative; use `swift build -c release`)"
#else
let buildNote = ""
#endif

let exitsPerRun = results.swiftExitRates.first?.exits ?? 0
print("""
    swiftkvm-bench: SwiftKVM vs. a raw-ioctl C baseline\(buildNote)
    \(environment.line)
    method: \(options.rounds) round\(options.rounds == 1 ? "" : "s"), alternating sides (swiftkvm first in odd-numbered rounds, C first in even); per side per round \(options.iterations) VM round trips and \(options.exitRuns) io-loop run\(options.exitRuns == 1 ? "" : "s"); medians over all samples
    guests: \(options.exitCodeGuestPath) (real mode, exits 42), \(options.ioLoopGuestPath) (real mode, \(exitsPerRun) port exits per run)
    per VM, both sides: mmap 2 MiB guest RAM + copy the program, KVM_CREATE_VM, KVM_SET_IDENTITY_MAP_ADDR,
      KVM_SET_TSS_ADDR, KVM_SET_USER_MEMORY_REGION, KVM_CREATE_VCPU + mmap kvm_run, KVM_SET_CPUID2, KVM_GET_SREGS,
      KVM_SET_SREGS, KVM_SET_REGS, KVM_RUN until the exit, KVM_GET_REGS, KVM_GET_SREGS, then munmap/close all.
      Once per process, untimed: open /dev/kvm, KVM_GET_API_VERSION, KVM_GET_VCPU_MMAP_SIZE, KVM_GET_SUPPORTED_CPUID.
      swiftkvm (UnitGuest.run()) also starts and joins a vCPU thread and builds its port bus, devices and result;
      C (\(options.baselinePath)) runs KVM_RUN on \(options.baselineVCPUThread ? "a new thread per VM too (--baseline-vcpu-thread)" : "its calling thread").
    round trip = the whole create/run/tear-down; exit rate = port exits / (first KVM_RUN → guest's exit)
      [swiftkvm: GuestRun.duration, which spans the vCPU thread's start and join]

    """)
if let warning = environment.busyWarning { print(warning + "\n") }
let report = Report(results: results)
print(report.table)
print("""

    samples per side: \(results.swiftRoundTrips.count) round trips (C \(results.baselineRoundTrips.count)), \
    \(results.swiftExitRates.count) io-loop runs (C \(results.baselineExitRates.count))
    """)
if environment.kvm.hasPrefix("KVM-PVM") {
    print("note: on KVM-PVM the guest's real-mode code is emulated and exits cost ≈6 µs; hardware KVM is several times faster on both sides.")
}
if !report.allTargetsMet {
    print("result: a target is missed (see the verdict column).")
    if options.strict { exit(3) }
} else {
    print("result: all targets met.")
}
