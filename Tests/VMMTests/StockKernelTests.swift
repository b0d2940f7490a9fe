import Foundation
import Testing

/// Debian's stock kernel (`linux-image-amd64`, the kernel users boot) with the busybox initramfs,
/// booted by the `swiftkvm` command to a shell that answers `uname -r` through the console, then
/// powers off — on a KVM that behaves like hardware.
///
/// On hardware KVM the test runs swiftkvm directly. The development and CI hosts' /dev/kvm is
/// KVM-PVM, which emulates guest ring 0 far too slowly and too incompletely for this kernel
/// (shared/HOST.md); there the test runs swiftkvm inside a QEMU guest in software emulation (TCG)
/// with an emulated AMD-V CPU and Debian's kvm_amd (`Firmware/linux/nested-kvm.sh`). It prints
/// which lane it ran.
// Serialized: each run is a whole QEMU in software emulation, and two at once on two cores only slow both.
@Suite(.serialized, .enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct StockKernelTests {
    /// Two vCPUs and a disk, found the way a distribution kernel finds them: the CPUs in the MADT,
    /// the virtio-mmio disk as an LNRO0005 device in the DSDT (this kernel has no
    /// `virtio_mmio.device=` support). `uname -r`, `nproc` and the disk's size through the console,
    /// then `poweroff -f` through the FADT's PM1 control register: exit status 0.
    @Test(.timeLimit(.minutes(45)))
    func stockKernelFindsItsCPUsAndDiskThroughACPIAndPowersOff() throws {
        let lane = KVMLane.current
        print("StockKernelTests: lane: \(lane)")
        let stock = try StockKernel.assets()
        let disk = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-stock-disk-\(getpid()).img")
        try Data(repeating: 0x5A, count: 1 << 20).write(to: disk)
        defer { try? FileManager.default.removeItem(at: disk) }
        // loglevel=6: the banner and anything at notice or worse, not the info lines; every console
        // byte costs exits, and in the nested lane each exit is slow. A run took 20–75 s in the
        // nested lane on two shared cores; the limits leave room for a loaded CI host.
        let run = try lane.runSwiftKVMRetryingTheLane(
            [
                "run", "--kernel", stock.kernel, "--initrd", stock.initrd, "--cpus", "2", "--disk", disk.path,
                "--cmdline", "console=ttyS0 reboot=k panic=-1 loglevel=6", "--time-limit", "150",
            ],
            input: "uname -r\nnproc\ncat /sys/block/vda/size\nls /sys/bus/acpi/devices\npoweroff -f\n", deadline: 180)
        print("StockKernelTests: lane: \(lane): exit status \(run.status) after \(run.seconds) s")
        for line in run.lines where line.hasPrefix("nested-kvm: ") {
            print("StockKernelTests: \(line)")
        }

        let (lines, tail) = (run.lines, run.tail)
        #expect(lines.contains { $0.contains("Linux version \(stock.version) ") }, "no banner; the run said:\n\(tail)")
        #expect(run.output.contains("SWIFTKVM-INIT-READY"), "/init did not finish; the run said:\n\(tail)")
        // The answers are lines of their own (the echo of a typed command is not).
        #expect(lines.contains(stock.version), "no line '\(stock.version)' answering uname -r; the run said:\n\(tail)")
        #expect(lines.contains("2"), "nproc did not say 2; the run said:\n\(tail)")
        #expect(lines.contains("2048"), "/dev/vda is not 2048 sectors; the run said:\n\(tail)")
        #expect(run.output.contains("LNRO0005:00"), "no virtio-mmio device in the DSDT; the run said:\n\(tail)")
        #expect(run.output.contains("swiftkvm: the guest powered off (ACPI S5)"), "the run said:\n\(tail)")
        #expect(run.status == 0, "the run said:\n\(tail)")
        #expect(!run.output.contains("Kernel panic"))
    }

    /// A kernel panic on two vCPUs (`echo c > /proc/sysrq-trigger`): the panic message, the
    /// pvpanic device (found as QEMU0001 in the DSDT) tells the VMM, every vCPU is stopped and the
    /// exit status is 1 — not a hang, not a clean reboot. (With four vCPUs the stock kernel in the
    /// nested lane has hung once and triple-faulted once during boot in five runs; the test kernel's
    /// four-vCPU boot below has not. Which side is at fault is not known yet; see
    /// `runSwiftKVMRetryingTheLane` for the one triple fault of a two-vCPU test-kernel boot.)
    @Test(.timeLimit(.minutes(45)))
    func stockKernelPanicIsReportedAndEndsTheRun() throws {
        let lane = KVMLane.current
        let stock = try StockKernel.assets()
        let run = try lane.runSwiftKVMRetryingTheLane(
            [
                "run", "--kernel", stock.kernel, "--initrd", stock.initrd, "--cpus", "2",
                "--cmdline", "console=ttyS0 reboot=k panic=30 loglevel=6", "--time-limit", "150",
            ],
            input: "nproc\necho c > /proc/sysrq-trigger\n", deadline: 180)
        print("StockKernelTests: lane: \(lane): panic run: exit status \(run.status) after \(run.seconds) s")
        let (lines, tail) = (run.lines, run.tail)
        #expect(lines.contains("2"), "nproc did not say 2; the run said:\n\(tail)")
        #expect(run.output.contains("Kernel panic - not syncing: sysrq triggered crash"), "the run said:\n\(tail)")
        // panic=30: without pvpanic the VMM would hear of it only 30 s later, from the reset.
        #expect(run.output.contains("swiftkvm: the guest kernel panicked: sysrq triggered crash"), "the run said:\n\(tail)")
        #expect(run.status == 1, "the run said:\n\(tail)")
    }
}

extension StockKernelTests {
    /// The project's test kernel (no ACPI: it finds its CPUs in the MP table) with two and four
    /// vCPUs, on the hardware-like lane: on KVM-PVM a second vCPU never comes up (QEMU's neither),
    /// so this is where the MP table, INIT/SIPI and the CPUID topology meet a real SMP boot.
    @Test(.timeLimit(.minutes(45)), arguments: [2, 4])
    func testKernelBringsUpEveryVCPUFromTheMPTable(cpus: Int) throws {
        let lane = KVMLane.current
        let assets = try GuestAssets.testKernel()
        let run = try lane.runSwiftKVMRetryingTheLane(
            [
                "run", "--kernel", assets.kernel, "--initrd", assets.initrd, "--cpus", "\(cpus)",
                "--cmdline", "console=ttyS0 reboot=k panic=-1", "--time-limit", "150",
            ],
            input: "nproc\ngrep -c ^processor /proc/cpuinfo\nreboot -f\n", deadline: 180)
        print("StockKernelTests: lane: \(lane): test kernel, \(cpus) vCPUs: exit status \(run.status) after \(run.seconds) s")
        let (lines, tail) = (run.lines, run.tail)
        #expect(run.output.contains("smp: Brought up 1 node, \(cpus) CPUs"), "the run said:\n\(tail)")
        #expect(lines.filter { $0 == "\(cpus)" }.count >= 2, "nproc and /proc/cpuinfo: the run said:\n\(tail)")
        #expect(run.output.contains("swiftkvm: the guest rebooted"), "the run said:\n\(tail)")
        #expect(run.status == 0)
    }
}

/// Debian's stock kernel and its busybox initramfs, which `make test` builds into the cache.
enum StockKernel {
    static func assets() throws -> (kernel: String, initrd: String, version: String) {
        let kernel = "\(GuestAssets.cache)/stock-kernel/bzImage"
        let initrd = "\(GuestAssets.cache)/stock-initramfs.cpio.gz"
        let versionFile = "\(GuestAssets.cache)/stock-kernel/version"
        for path in [kernel, initrd, versionFile] where !FileManager.default.isReadableFile(atPath: path) {
            throw LaneError("\(path) is missing: run `make -C Firmware/linux stock` (make test does)")
        }
        let version = try String(contentsOfFile: versionFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        return (kernel, initrd, version)
    }
}

/// Where a test that needs hardware KVM semantics runs swiftkvm.
enum KVMLane: CustomStringConvertible {
    /// /dev/kvm is hardware virtualization (VT-x or AMD-V): swiftkvm runs here.
    case hardware
    /// /dev/kvm is KVM-PVM (or absent): swiftkvm runs on kvm_amd inside QEMU/TCG.
    case nested

    /// Hardware when the CPU flags show VT-x or AMD-V and the KVM is not KVM-PVM.
    static var current: KVMLane {
        if FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") { return .nested }
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ") ?? []
        return flags.contains("vmx") || flags.contains("svm") ? .hardware : .nested
    }

    var description: String {
        switch self {
        case .hardware: "hardware KVM"
        case .nested: "nested kvm_amd inside QEMU TCG"
        }
    }

    static let root: String = {
        var path = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        path.removeLast(3)  // Tests/VMMTests/StockKernelTests.swift
        return path.joined(separator: "/")
    }()

    /// The debug build `swift build --build-tests` (and so `make test`) makes.
    static var swiftkvm: String { "\(root)/.build/debug/swiftkvm" }

    /// Runs `swiftkvm arguments` with `input` as its standard input, in this lane, and returns its
    /// exit status and everything it printed (standard output and error together; in the nested
    /// lane also what nested-kvm.sh said). After `deadline` seconds the lane stops the run itself
    /// (swiftkvm's --time-limit should stop it before); 60 seconds later this stops the lane.
    /// `runSwiftKVM`, once more in the nested lane when the lane itself failed or the inner guest
    /// triple-faulted:
    /// - status 125: QEMU's emulation of nested AMD-V has been seen to wedge the outer kernel (both
    ///   outer vCPUs spinning with interrupts off, swiftkvm never scheduled) in about one run in
    ///   twenty-five;
    /// - a triple fault: once, in CI, a test kernel shut down just as its second CPU came up; 28
    ///   SMP boots more in this lane (alone, under load, and taking turns with QEMU's 11) did not
    ///   repeat it, and a triple fault leaves nothing to inspect on AMD (KVM resets the vCPU). The
    ///   first run is printed in full, so a pattern would show.
    /// Nothing else is retried (a swiftkvm that hangs is ended by its own --time-limit), and the
    /// second run must pass on its own.
    func runSwiftKVMRetryingTheLane(_ arguments: [String], input: String, deadline: Int) throws -> LaneRun {
        let first = try runSwiftKVM(arguments, input: input, deadline: deadline)
        guard self == .nested else { return first }
        let reason: String
        // Not prefixes: a line can follow the guest's last, unfinished one (its shell prompt "/ # ").
        if first.status == 125, let line = first.lines.first(where: { $0.contains("nested-kvm: error:") }) {
            reason = "the nested lane failed (\(line)); its output ended:\n\(first.tail)\n"
        } else if let line = first.lines.first(where: { $0.contains("swiftkvm: the guest shut down (triple fault") }) {
            reason = "the inner guest triple-faulted (\(line)); its output ended:\n\(first.tail)\n"
        } else {
            return first
        }
        print("StockKernelTests: \(reason); running it once more")
        return try runSwiftKVM(arguments, input: input, deadline: deadline)
    }

    func runSwiftKVM(_ arguments: [String], input: String, deadline: Int) throws -> LaneRun {
        guard FileManager.default.isExecutableFile(atPath: Self.swiftkvm) else {
            throw LaneError("\(Self.swiftkvm) is missing: run `swift build` first")
        }
        let inputFile = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-lane-input-\(UUID().uuidString)")
        try Data(input.utf8).write(to: inputFile)
        defer { try? FileManager.default.removeItem(at: inputFile) }

        let command: [String]
        switch self {
        case .hardware:
            command = [Self.swiftkvm] + arguments
        case .nested:
            command = [
                "/bin/bash", "\(Self.root)/Firmware/linux/nested-kvm.sh", "--swiftkvm", Self.swiftkvm,
                "--stdin", inputFile.path, "--timeout", "\(deadline)", "--",
            ] + arguments
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = try FileHandle(forReadingFrom: inputFile)
        let start = Date()
        try process.run()
        let watchdog = DispatchWorkItem {
            guard process.isRunning else { return }
            process.terminate()
            DispatchQueue.global().asyncAfter(deadline: .now() + 15) {
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            }
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(deadline + 60), execute: watchdog)
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        let seconds = (Date().timeIntervalSince(start) * 10).rounded() / 10
        return LaneRun(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self), seconds: seconds)
    }
}

struct LaneRun {
    let status: Int32
    let output: String
    let seconds: Double

    /// The output's lines ("\r\n" is one Character in Swift: split on newlines, not on "\n").
    var lines: [String] { output.split(whereSeparator: \.isNewline).map(String.init) }
    /// The end of the output, for failure messages.
    var tail: String { String(output.suffix(3000)) }
}

struct LaneError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
