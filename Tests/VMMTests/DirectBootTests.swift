import Glibc
import Testing

@testable import VMM

/// The test kernel through the entries that skip its in-guest decompressor: its vmlinux through
/// the 64-bit ELF entry, and its bzImage decompressed in the host and entered through PVH. (The
/// bzImage through the default direct entry is LinuxGuestTests' boot.) One boot each, many checks.
@Suite(.enabled(if: GuestAssets.shouldRun && (KVMAvailability.isCI || access("\(GuestAssets.cache)/test-kernel/vmlinux", R_OK) == 0), GuestAssets.skipReason))
struct DirectBootTests {
    enum Path: String, CaseIterable, CustomTestStringConvertible {
        case vmlinuxDirect = "vmlinux, direct 64-bit ELF entry"
        case bzImagePVH = "bzImage decompressed in the host, PVH entry"
        var testDescription: String { rawValue }
    }

    // Generous: with the machine's two cores shared, busybox's init alone took over 10 minutes
    // after `Run /init` here (each guest page fault costs milliseconds on KVM-PVM).
    @Test(.timeLimit(.minutes(45)), arguments: Path.allCases)
    func testKernelBootsToItsShell(path: Path) throws {
        let assets = try GuestAssets.testKernel()
        let kernel = path == .vmlinuxDirect ? "\(GuestAssets.cache)/test-kernel/vmlinux" : assets.kernel
        let entry: LinuxBootEntry = path == .vmlinuxDirect ? .direct : .pvh
        let clock = ContinuousClock()
        let start = clock.now
        let session = try LinuxSession(
            LinuxGuestConfiguration(
                kernelPath: kernel, initrdPath: assets.initrd, commandLine: "console=ttyS0 reboot=k panic=-1",
                memorySize: 256 << 20, entry: entry, timeLimit: .seconds(2300)))
        defer { session.stop() }
        #expect(session.guest.entry == entry && session.guest.bootNote == nil)
        let boot: Duration = .seconds(900)

        try session.waitFor("Linux version ", timeout: boot)
        let banner = clock.now - start
        // The command line arrived (cmd_line_ptr, or hvm_start_info's cmdline_paddr) and so did the
        // memory map (the zero page's e820 table, or the start info's memmap).
        try session.waitFor("Command line: console=ttyS0 reboot=k panic=-1", timeout: boot)
        try session.waitFor("[mem 0x0000000000100000-0x000000000fffffff] usable", timeout: boot)
        // The initrd (ramdisk_image, or the start info's first module) is found and unpacked.
        try session.waitFor("Unpacking initramfs", timeout: boot)
        try session.waitFor("Run /init as init process", timeout: boot)
        let runInit = clock.now - start
        print("test kernel, \(path.rawValue): first banner after \(banner), Run /init after \(runInit)")
        try session.waitFor("SWIFTKVM-INIT-READY", timeout: .seconds(1200))
        try session.waitFor("# ", timeout: .seconds(300))

        session.send("uname -r; echo UNAME-$((40 + 2))")
        let uname = try session.waitFor("UNAME-42", timeout: .seconds(300))
        #expect(uname.contains(assets.release), "uname -r said: \(uname)")
        session.send("reboot -f")
        let report = try session.waitForEnd(timeout: .seconds(300))
        #expect(report.outcome == .rebooted)
        #expect(!session.output.contains("Kernel panic"))
        // No decompressor ran in the guest: its "Decompressing Linux... Parsing ELF..." is absent.
        #expect(!session.output.contains("Decompressing Linux"))
    }
}
