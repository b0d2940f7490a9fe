import Foundation
import Testing

/// The test kernel as a kept VM: started detached, waited for, typed into through `console`, its
/// whole boot in the console log, stopped.
@Suite(.enabled(if: KeptLinuxAssets.shouldRun, "the test kernel is not in the cache (run `make guest`) or /dev/kvm is absent, and CI is unset"))
struct KeptLinuxTests {
    @Test(.timeLimit(.minutes(45)))
    func aDetachedTestKernelIsWaitedForTypedIntoAndStopped() throws {
        try KeptLinuxAssets.run()
    }
}

enum KeptLinuxAssets {
    static var cache: String { ProcessInfo.processInfo.environment["SWIFTKVM_CACHE"] ?? "/var/cache/swiftkvm" }
    static var kernel: String { "\(cache)/test-kernel/bzImage" }
    static var initrd: String { "\(cache)/test-initramfs.cpio" }
    /// In CI the kernel and /dev/kvm must be there (`make test` builds the kernel): a missing one fails.
    static var shouldRun: Bool {
        KVM.isCI || (FileManager.default.fileExists(atPath: kernel) && FileManager.default.fileExists(atPath: initrd) && FileManager.default.fileExists(atPath: "/dev/kvm"))
    }

    static func run() throws {
        let home = try KeptHome()
        let created = try home.run(["create", "lnx", "--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0 reboot=k panic=-1"])
        #expect(created.status == 0, "\(created.stderr)")
        let started = try home.run(["start", "lnx"], seconds: 300)
        #expect(started.status == 0, "\(started.stderr)")
        let ready = try home.run(["wait", "lnx", "--for", "console=SWIFTKVM-INIT-READY", "--timeout", "900"], seconds: 960)
        #expect(ready.status == 0, "\(ready.stderr) \(home.consoleLog("lnx").suffix(2000))")
        #expect(try home.run(["wait", "lnx", "--for", "console=/ # ", "--timeout", "300"], seconds: 360).status == 0)

        // A watcher with the whole history, and the writer typing a command.
        let watcher = try home.background(["console", "lnx", "--replay", "all", "--read-only"])
        let writer = try home.background(["console", "lnx", "--replay", "0"], withInput: true)
        #expect(KeptVMTests.waitFor(seconds: 30) { watcher.stdout.contains("Run /init as init process") }, "the replay has the whole boot")
        #expect(watcher.stdout.hasPrefix("[swiftkvm] lnx: boot 1 at "))
        #expect(watcher.stdout.contains("Linux version "))
        // The marker is computed by the shell, so the echo of the typed line cannot match it.
        usleep(500_000)
        writer.input.fileHandleForWriting.write(Data("echo kept-$((6 * 7))\n".utf8))
        #expect(KeptVMTests.waitFor(seconds: 300) { writer.stdout.contains("kept-42") }, "\(writer.stdout.suffix(500))")
        #expect(KeptVMTests.waitFor(seconds: 30) { watcher.stdout.contains("kept-42") }, "the watcher sees the answer too")
        let logs = try home.run(["logs", "lnx"])
        #expect(logs.stdout.contains("Linux version ") && logs.stdout.contains("kept-42"))

        // This kernel has no ACPI and no VT: it cannot act on the power button (the press is held
        // for it) nor on Ctrl-Alt-Del, so stop forces it after the timeout.
        let stopped = try home.run(["stop", "lnx", "--timeout", "5"], seconds: 120)
        #expect(stopped.status == 3, "\(stopped.stderr)")
        #expect(try home.info("lnx")["state"] as? String == "stopped")
        for reader in [watcher, writer] { _ = reader.finish(within: 30) }
    }
}
