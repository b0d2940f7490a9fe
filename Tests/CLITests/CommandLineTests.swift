import Foundation
import Testing

/// The `swiftkvm` binary as a user meets it: bad input gets one line on stderr and exit status 2,
/// never a crash or a stack dump; good input runs the guest.
@Suite struct CommandLineTests {
    @Test func missingFirmwareIsOneLineAndStatusTwo() throws {
        let result = try SwiftKVMProcess.run(["run", "--firmware", "/nonexistent/guest.bin"])
        #expect(result.status == 2)
        #expect(result.stderrLines == ["swiftkvm: /nonexistent/guest.bin: No such file or directory"])
        #expect(result.stdout.isEmpty)
    }

    @Test(arguments: [
        (["--memory", "0"], "--memory '0' is not a size"),
        (["--memory", "lots"], "--memory 'lots' is not a size"),
        (["--memory", "100T"], "is more than this host's"),
        (["--memory", "99999999999999999999"], "is not a size"),
        (["--mode", "virtual86"], "--mode must be real, protected, long or user"),
        (["--load", "somewhere"], "--load 'somewhere' is not an address"),
        (["--load", "0x1F0000"], "does not fit below"),
        (["--entry", "0x300000"], "the entry point 0x300000 lies outside"),
        (["--memory", "64K"], "does not work for long mode"),
        (["--memory", "1000"], "does not work for long mode"),
        (["--time-limit", "0"], "--time-limit must be a positive number"),
        (["--time-limit=-1"], "--time-limit must be a positive number"),
        (["--frobnicate"], "see 'swiftkvm run --help'"),
    ])
    func badOptionsAreOneLineAndStatusTwo(options: [String], message: String) throws {
        let result = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("hello-long")] + options)
        #expect(result.status == 2, "\(options): \(result.stderr)")
        #expect(result.stderrLines.count == 1, "\(result.stderr)")
        #expect(result.stderr.hasPrefix("swiftkvm: "))
        #expect(result.stderr.contains(message), "\(result.stderr)")
    }

    @Test func directoryAndEmptyFileAreRefused() throws {
        let directory = try SwiftKVMProcess.run(["run", "--firmware", "/tmp"])
        #expect(directory.status == 2)
        #expect(directory.stderr == "swiftkvm: /tmp: not a regular file\n")

        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-empty-\(getpid()).bin")
        #expect(FileManager.default.createFile(atPath: empty.path, contents: Data()))
        defer { try? FileManager.default.removeItem(at: empty) }
        let result = try SwiftKVMProcess.run(["run", "--firmware", empty.path])
        #expect(result.status == 2)
        #expect(result.stderr.contains("the file is empty"))
    }

    @Test func kernelsThatCannotBootAreOneLineAndStatusTwo() throws {
        let notKernel = try SwiftKVMProcess.run(["run", "--kernel", "/etc/passwd"])
        #expect(notKernel.status == 2)
        #expect(notKernel.stderrLines == ["swiftkvm: /etc/passwd is not a Linux bzImage (no HdrS signature): pass the kernel's arch/x86/boot/bzImage or /boot/vmlinuz-*"])

        let missing = try SwiftKVMProcess.run(["run", "--kernel", "/nonexistent/bzImage"])
        #expect(missing.status == 2)
        #expect(missing.stderr == "swiftkvm: /nonexistent/bzImage: No such file or directory\n")

        let neither = try SwiftKVMProcess.run(["run"])
        #expect(neither.status == 2)
        #expect(neither.stderr.contains("nothing to run: give --kernel BZIMAGE (Linux) or --firmware FILE"))

        let both = try SwiftKVMProcess.run(["run", "--kernel", "/etc/passwd", "--firmware", Paths.firmware("hello-long")])
        #expect(both.status == 2)
        #expect(both.stderr.contains("either --kernel or --firmware, not both"))
    }

    /// A real kernel from the guest cache, cut short, and given impossible companions.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: Paths.testKernel), "no test kernel in the cache (make guest)"))
    func truncatedKernelMissingInitrdAndImpossibleSizes() throws {
        let kernel = try Data(contentsOf: URL(fileURLWithPath: Paths.testKernel))
        let truncated = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-truncated-\(getpid())")
        try kernel.prefix(64 * 1024).write(to: truncated)
        defer { try? FileManager.default.removeItem(at: truncated) }
        let cut = try SwiftKVMProcess.run(["run", "--kernel", truncated.path])
        #expect(cut.status == 2)
        #expect(cut.stderrLines.count == 1)
        #expect(cut.stderr.contains("is truncated"), "\(cut.stderr)")

        let noInitrd = try SwiftKVMProcess.run(["run", "--kernel", Paths.testKernel, "--initrd", "/nonexistent/initrd.img"])
        #expect(noInitrd.status == 2)
        #expect(noInitrd.stderr == "swiftkvm: /nonexistent/initrd.img: No such file or directory\n")

        for (options, message) in [
            (["--memory", "0"], "is not a size"),
            (["--memory", "64T"], "is more than this host's"),
            (["--memory", "16M"], "give the VM more memory"),
            (["--cpus", "0"], "--cpus must be at least 1"),
            (["--cpus", "100000"], "vCPUs swiftkvm can describe to a guest"),
            (["--pit", "hpet"], "--pit must be kvm or emulated"),
            (["--boot-entry", "16"], "--boot-entry must be direct, pvh, 64 or 32"),
            (["--cpu-features", "-warpdrive"], "unknown feature 'warpdrive'"),
        ] {
            let result = try SwiftKVMProcess.run(["run", "--kernel", Paths.testKernel] + options)
            #expect(result.status == 2, "\(options): \(result.stderr)")
            #expect(result.stderrLines.count == 1, "\(options): \(result.stderr)")
            #expect(result.stderr.contains(message), "\(options): \(result.stderr)")
        }
    }

    /// Disks are checked before anything boots: each problem is one line that names the file.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: Paths.testKernel), "no test kernel in the cache (make guest)"))
    func unusableDisksAreOneLineAndStatusTwo() throws {
        let image = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-disk-\(getpid()).img")
        #expect(FileManager.default.createFile(atPath: image.path, contents: Data(count: 4096), attributes: [.posixPermissions: 0o600]))
        defer { try? FileManager.default.removeItem(at: image) }
        for (options, message) in [
            (["--disk", "/nonexistent/disk.img"], "swiftkvm: disk /nonexistent/disk.img: No such file or directory (give the path of a disk image file)"),
            (["--disk", "/tmp"], "swiftkvm: disk /tmp: is a directory, not a disk image file"),
            (["--disk", "/dev/null"], "swiftkvm: disk /dev/null: is not a regular file (disk images must be files)"),
            (["--disk", "\(image.path),writeback"], "swiftkvm: --disk \(image.path),writeback: unknown option 'writeback' (the options are readonly and shareable)"),
            (["--disk", ",readonly"], "swiftkvm: --disk needs a file: --disk PATH[,readonly]"),
            (Array(repeating: ["--disk", image.path], count: 9).flatMap { $0 }, "swiftkvm: at most 8 disks are supported, not 9"),
        ] {
            let result = try SwiftKVMProcess.run(["run", "--kernel", Paths.testKernel] + options)
            #expect(result.status == 2, "\(options): \(result.stderr)")
            #expect(result.stderrLines == [message], "\(options)")
            #expect(result.stdout.isEmpty)
        }
    }

    /// NICs are checked before anything boots too. (Nothing here creates a tap or starts passt:
    /// `lo` is refused by TUNSETIFF itself, the rest before any system call.)
    @Test(.enabled(if: FileManager.default.fileExists(atPath: Paths.testKernel), "no test kernel in the cache (make guest)"))
    func unusableNetworksAreOneLineAndStatusTwo() throws {
        for (options, message) in [
            (["--net", "bogus"], "swiftkvm: --net bogus: 'bogus' is not a network backend: use tap=NAME or user"),
            (["--net", "tap="], "swiftkvm: --net tap=: tap= needs a name: tap=NAME"),
            (["--net", "user,hostfwd=tcp::2222:22"], "swiftkvm: --net user,hostfwd=tcp::2222:22: hostfwd=tcp::2222:22 is not tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT (for example tcp::2222-:22)"),
            (["--net", "tap=lo"], "swiftkvm: lo exists and is not a tap device (or not one made for IFF_VNET_HDR)"),
            (["--net", "tap=a-name-that-is-too-long"], "swiftkvm: network_interfaces[0].tap 'a-name-that-is-too-long' is not valid: an interface name of 1 to 15 characters"),
        ] {
            let result = try SwiftKVMProcess.run(["run", "--kernel", Paths.testKernel] + options)
            #expect(result.status == 2, "\(options): \(result.stderr)")
            #expect(result.stderrLines == [message], "\(options)")
            #expect(result.stdout.isEmpty)
        }
        let firmware = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("hello-long"), "--net", "user"])
        #expect(firmware.status == 2)
        #expect(firmware.stderrLines == ["swiftkvm: --net is for Linux guests (--kernel)"])
    }

    /// A disk image this user may not write: the error says so and suggests ,readonly.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.fileExists(atPath: Paths.testKernel), "needs root to drop privileges, and the test kernel"))
    func aDiskWithoutPermissionSaysWhatToDo() throws {
        let image = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-private-\(getpid()).img")
        #expect(FileManager.default.createFile(atPath: image.path, contents: Data(count: 4096), attributes: [.posixPermissions: 0o644]))
        defer { try? FileManager.default.removeItem(at: image) }
        let result = try SwiftKVMProcess.run(
            ["run", "--kernel", Paths.testKernel, "--disk", image.path],
            launcher: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderrLines == ["swiftkvm: disk \(image.path): Permission denied (check the file's permissions, or add ,readonly)"])
    }

    @Test func helpDescribesTheOptions() throws {
        let result = try SwiftKVMProcess.run(["run", "--help"])
        #expect(result.status == 0)
        for option in ["--kernel", "--initrd", "--cmdline", "--disk", "--no-acpi", "--trace", "--trace-file", "--stats", "--cpus", "--pit", "--boot-entry", "--cpu-features", "--firmware", "--mode", "--memory", "--load", "--entry", "--time-limit"] {
            #expect(result.stdout.contains(option), "help lacks \(option)")
        }
    }

    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func runsFirmwareAndPassesItsOutputAndStatus() throws {
        let hello = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("hello-real"), "--mode", "real"])
        #expect(hello.status == 0)
        #expect(hello.stdout == "Hello from real mode!\n")
        #expect(hello.stderr.isEmpty)

        let exit = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("exit-code"), "--mode", "real"])
        #expect(exit.status == 42)

        let fault = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("triple-fault"), "--mode", "protected"])
        #expect(fault.status == 0)
        #expect(fault.stderr == "swiftkvm: the guest shut down (triple fault or reset)\n")

        // On several vCPUs the line names the one that faulted (the last, in this guest).
        let smpFault = try SwiftKVMProcess.run(
            ["run", "--firmware", Paths.firmware("triple-fault"), "--mode", "protected", "--cpus", "3"])
        #expect(smpFault.status == 0)
        #expect(smpFault.stderr == "swiftkvm: the guest shut down (triple fault or reset), on vcpu2\n")
        let tooMany = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("exit-code"), "--mode", "real", "--cpus", "100000"])
        #expect(tooMany.status == 2)
        #expect(tooMany.stderr == "swiftkvm: --cpus 100000 is more than the 255 vCPUs swiftkvm can describe to a guest\n", "\(tooMany.stderr)")

        let exception = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("fault-user"), "--mode", "user"])
        #expect(exception.status == 1)
        #expect(exception.stderr.contains("exception 13 (#GP general protection)"))
    }

    /// --trace-file gets one line per exit, --stats a table on stderr whose total is that count.
    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func traceFileAndStatisticsAgree() throws {
        let trace = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-cli-\(getpid()).trace")
        defer { try? FileManager.default.removeItem(at: trace) }
        let result = try SwiftKVMProcess.run(
            ["run", "--firmware", Paths.firmware("hello-long"), "--mode", "long", "--trace-file", trace.path, "--stats"])
        #expect(result.status == 0)
        #expect(result.stdout == "Hello from long mode!\n")
        let lines = try String(contentsOf: trace, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 45)
        #expect(lines.last == "vcpu0 io out port=0xf4 size=1 data=00 DebugExitPort 0xf4")
        #expect(result.stderr.contains("swiftkvm statistics"))
        let total = result.stderrLines.first { $0.hasPrefix("    total") } ?? ""
        #expect(total.hasSuffix(" 45"), "\(result.stderr)")
        #expect(result.stderr.contains("TransmitOnlySerial 0x3f8-0x3ff (ports)"))
        #expect(result.stderr.contains("guest entry"))

        let toStderr = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("exit-code"), "--mode", "real", "--trace"])
        #expect(toStderr.status == 42)
        #expect(toStderr.stderrLines == ["vcpu0 io out port=0xf4 size=1 data=2a DebugExitPort 0xf4"])

        let unwritable = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("exit-code"), "--trace-file", "/nonexistent/t.txt"])
        #expect(unwritable.status == 2)
        #expect(unwritable.stderrLines == ["swiftkvm: --trace-file: /nonexistent/t.txt: No such file or directory"])
    }

    /// A guest power-off exits 0 with the reason; a guest kernel panic exits 1.
    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func powerOffIsStatusZeroAndPanicIsOne() throws {
        let guest = Paths.firmware("acpi-power")
        let off = try SwiftKVMProcess.run(["run", "--kernel", guest, "--memory", "64M", "--cmdline", "console=ttyS0 action=poweroff", "--time-limit", "60"])
        #expect(off.status == 0)
        #expect(off.stderrLines == ["swiftkvm: the guest powered off (ACPI S5)"])
        let panic = try SwiftKVMProcess.run(["run", "--kernel", guest, "--memory", "64M", "--cmdline", "console=ttyS0 action=panic", "--time-limit", "60"])
        #expect(panic.status == 1)
        #expect(panic.stderrLines == ["swiftkvm: the guest kernel panicked"])
    }

    @Test(.enabled(if: KVM.shouldRun, KVM.skipReason))
    func timeLimitAndSignalsStopTheGuestCleanly() throws {
        let timed = try SwiftKVMProcess.run(["run", "--firmware", Paths.firmware("spin"), "--time-limit", "0.5"])
        #expect(timed.status == 124)
        #expect(timed.stdout == "spinning\n")
        #expect(timed.stderr == "swiftkvm: the guest ran past its time limit\n")

        for (signal, status) in [(SIGINT, Int32(130)), (SIGTERM, 143)] {
            let stopped = try SwiftKVMProcess.run(
                ["run", "--firmware", Paths.firmware("spin-user"), "--mode", "user"], signal: signal, after: 1.0)
            #expect(stopped.status == status)
            #expect(stopped.stderr == "swiftkvm: stopped by signal \(signal)\n")
        }
    }

    @Test(.enabled(if: getuid() == 0, "needs root to drop privileges or hide /dev/kvm"))
    func unusableKVMDeviceSaysHowToFixIt() throws {
        // As an unprivileged user, /dev/kvm (mode 0600 root here, 0660 kvm on Debian) refuses.
        let denied = try SwiftKVMProcess.run(
            ["run", "--firmware", Paths.firmware("hello-long")],
            launcher: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        if KVM.deviceIsWorldAccessible {
            #expect(denied.status == 0)
        } else {
            #expect(denied.status == 1)
            #expect(denied.stderrLines.count == 1)
            #expect(denied.stderr.contains("Permission denied"))
            #expect(denied.stderr.contains("kvm group"))
        }

        // With /dev hidden in a private mount namespace, /dev/kvm is absent.
        let absent = try SwiftKVMProcess.run(
            ["-c", "mount -t tmpfs none /dev && exec \"$0\" \"$@\"", SwiftKVMProcess.executable, "run", "--firmware", Paths.firmware("hello-long")],
            launcher: ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh"], direct: true)
        #expect(absent.status == 1, "\(absent.stderr)")
        #expect(absent.stderrLines.count == 1)
        #expect(absent.stderr.contains("/dev/kvm is not there: load the KVM module"))
    }
}

enum KVM {
    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"].map { !$0.isEmpty && $0 != "0" && $0 != "false" } ?? false }
    /// Skip only when /dev/kvm is truly absent and CI is unset; in CI a missing /dev/kvm fails.
    static var shouldRun: Bool { FileManager.default.fileExists(atPath: "/dev/kvm") || isCI }
    static let skipReason: Comment = "/dev/kvm is absent on this machine (and CI is unset)"
    static var deviceIsWorldAccessible: Bool {
        let attributes = try? FileManager.default.attributesOfItem(atPath: "/dev/kvm")
        let permissions = (attributes?[.posixPermissions] as? Int) ?? 0
        return permissions & 0o006 == 0o006
    }
}

enum Paths {
    static let root: String = {
        var path = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        path.removeLast(3)  // Tests/CLITests/CommandLineTests.swift
        return path.joined(separator: "/")
    }()

    static func firmware(_ name: String) -> String { "\(root)/Firmware/build/\(name).bin" }

    static var testKernel: String {
        "\(ProcessInfo.processInfo.environment["SWIFTKVM_CACHE"] ?? "/var/cache/swiftkvm")/test-kernel/bzImage"
    }
}

/// Runs the built `swiftkvm` and collects what it printed.
struct SwiftKVMProcess {
    let status: Int32
    let stdout: String
    let stderr: String

    var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }

    static var executable: String {
        for configuration in ["debug", "release"] {
            let path = "\(Paths.root)/.build/\(configuration)/swiftkvm"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return "\(Paths.root)/.build/debug/swiftkvm"
    }

    /// Runs `swiftkvm arguments` (or, with `direct`, `launcher arguments`), optionally sending
    /// `signal` after `after` seconds. Every run has a deadline of 60 seconds.
    static func run(
        _ arguments: [String], launcher: [String] = [], direct: Bool = false, signal: Int32? = nil, after: Double = 0
    ) throws -> SwiftKVMProcess {
        let process = Process()
        let command = direct ? launcher + arguments : launcher + [executable] + arguments
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        if let signal {
            Thread.sleep(forTimeInterval: after)
            kill(process.processIdentifier, signal)
        }
        let watchdog = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: watchdog)
        let stdoutData = output.fileHandleForReading.readDataToEndOfFile()
        let stderrData = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        return SwiftKVMProcess(
            status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
            stderr: String(decoding: stderrData, as: UTF8.self))
    }
}
