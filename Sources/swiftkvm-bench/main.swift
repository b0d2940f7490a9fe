// swiftkvm-bench — `make bench`: SwiftKVM against a raw-ioctl C baseline and against QEMU, side by
// side in one run.
//
// Three measurements, each alternating the sides round by round (and which side goes first), so
// that host noise — on KVM-PVM hosts it is large — hits both alike; medians are over all samples:
//   1. VM round trip: create a VM, run Firmware/build/exit-code.bin (real mode, `out 0xF4, 42`) to
//      its exit, tear it down, in-process. Target: median < 1 ms.
//   2. Port-I/O exit rate: Firmware/build/io-loop.bin (20,000 `out 0x80` + the exit, 20,001 port
//      exits) from the first KVM_RUN to the end. Target: within 10% of C.
//   3. Boot probe: Firmware/build/boot-probe.bin under the swiftkvm tool and under QEMU microvm,
//      each a child process, from spawn to its first output byte and to its exit. Target: faster
//      than QEMU on both.
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
var results = Results()

/// Part 1 and 2: the C baseline comparison.
func compareWithBaseline() throws(BenchmarkFailure) {
    let baseline = BaselineSide(options: options)
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
}

/// QEMU's `--version` line, for the report.
var qemuVersion: String?

/// Part 3: the boot probe under swiftkvm and QEMU. One untimed run of each first (it also checks
/// that both pass), so the first timed one does not pay for cold page caches alone.
func compareWithQEMU() throws(BenchmarkFailure) {
    qemuVersion = ProbeBootBench.version(of: options.qemuPath)
    let probe = try ProbeBootBench(options: options)
    defer { probe.removeFiles() }
    for side in ProbeBootBench.Side.allCases {
        progress("boot probe: \(side.rawValue), warm-up")
        _ = try probe.run(side)
    }
    for round in 0..<options.probeRounds {
        // Even rounds: swiftkvm first; odd rounds: QEMU first.
        let order: [ProbeBootBench.Side] = round % 2 == 0 ? [.swiftkvm, .qemu] : [.qemu, .swiftkvm]
        for side in order {
            progress("boot probe round \(round + 1)/\(options.probeRounds): \(side.rawValue)")
            let sample = try probe.run(side)
            if side == .swiftkvm { results.swiftProbeBoots.append(sample) } else { results.qemuProbeBoots.append(sample) }
        }
    }
}

do throws(BenchmarkFailure) {
    if options.runsBaseline { try compareWithBaseline() }
    if options.runsProbe { try compareWithQEMU() }
    progress("")
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

let report = Report(results: results)
let parts = (options.runsBaseline ? ["a raw-ioctl C baseline"] : []) + (options.runsProbe ? ["QEMU microvm"] : [])
print("swiftkvm-bench: SwiftKVM vs. \(parts.joined(separator: " and "))\(buildNote)")
print(environment.line)
if let warning = environment.busyWarning { print(warning) }

if options.runsBaseline {
    let exitsPerRun = results.swiftExitRates.first?.exits ?? 0
    print("""

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
    print(report.table)
    print("""

        samples per side: \(results.swiftRoundTrips.count) round trips (C \(results.baselineRoundTrips.count)), \
        \(results.swiftExitRates.count) io-loop runs (C \(results.baselineExitRates.count))
        """)
    if environment.kvm.hasPrefix("KVM-PVM") {
        print("note: on KVM-PVM the guest's real-mode code is emulated and exits cost ≈6 µs; hardware KVM is several times faster on both sides.")
    }
}

if options.runsProbe {
    print("""

        boot probe: \(options.bootProbePath), 64 MiB, a 10,000-byte initrd, cmdline "\(ProbeBootBench.commandLine)";
          \(options.probeRounds) round\(options.probeRounds == 1 ? "" : "s") after one untimed run per side, alternating (swiftkvm first in odd-numbered rounds); medians over rounds
          each run is a child process, timed from just before posix_spawn to its first stdout byte and to waitpid's return;
          every run must pass all probe checks ("\(ProbeBootBench.passLine)") and end with its expected status
          swiftkvm: \(options.swiftkvmPath) run --kernel ... (64-bit entry; ends by i8042 reset, status 0)
          QEMU: \(qemuVersion ?? options.qemuPath) -M microvm -enable-kvm -cpu host,-arch-capabilities -nodefaults
            -device isa-debug-exit (qboot runs the probe's real-mode setup → 32-bit entry → long mode; ends by port 0xF4, status 1)

        """)
    print(report.probeTable)
}

print("")
if !report.allTargetsMet {
    print("result: a target is missed (see the verdict column).")
    if options.strict { exit(3) }
} else {
    print("result: all targets met.")
}
