import Glibc
import Testing
@testable import VMM

/// Boots the project's small test kernel (built by `make guest` into the cache) with its busybox
/// initramfs, once, and checks many things along the way: a Linux boot takes minutes on hosts
/// whose KVM emulates guest ring 0, so every wait has a deadline and one boot covers it all.
@Suite(.enabled(if: GuestAssets.shouldRun, GuestAssets.skipReason))
struct LinuxGuestTests {
    @Test(.timeLimit(.minutes(45)))
    func testKernelBootsToABusyboxShellAndRebootsCleanly() throws {
        let assets = try GuestAssets.testKernel()
        let disks = try LinuxDiskChecks()
        defer { disks.remove() }
        let session = try LinuxSession(
            LinuxGuestConfiguration(
                kernelPath: assets.kernel, initrdPath: assets.initrd, commandLine: "console=ttyS0 reboot=k panic=-1",
                memorySize: 256 << 20, disks: disks.configurations, timeLimit: .seconds(1200)))
        defer { session.stop() }
        let boot: Duration = .seconds(900)

        // The kernel's milestones, in order.
        let banner = try session.waitFor("Linux version ", timeout: boot)
        #expect(!banner.contains("Kernel panic"))
        try session.waitFor("Command line: console=ttyS0 reboot=k panic=-1", timeout: boot)
        try session.waitFor("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable", timeout: boot)
        try session.waitFor("clocksource: Switched to clocksource", timeout: boot)
        try session.waitFor("Unpacking initramfs", timeout: boot)
        try session.waitFor("ttyS0 at I/O 0x3f8 (irq = 4", timeout: boot)
        try session.waitFor("Run /init as init process", timeout: boot)
        try session.waitFor("SWIFTKVM-INIT-READY", timeout: .seconds(300))
        try session.waitFor("# ", timeout: .seconds(300))

        // The shell answers through the serial console: typed input reaches the guest, output returns.
        session.send("uname -r")
        let uname = try session.waitFor("# ", timeout: .seconds(300))
        #expect(uname.contains(assets.release), "uname -r said: \(uname)")

        // Markers are computed by the shell, so the echo of the typed command cannot match them.
        session.send("cat /proc/cpuinfo; echo CPUINFO-$((40 + 2))")
        let cpuinfo = try session.waitFor("CPUINFO-42", timeout: .seconds(300))
        #expect(cpuinfo.contains("processor\t: 0"))
        #expect(cpuinfo.contains("hypervisor"), "the CPUID hypervisor bit reaches the guest")
        #expect(!cpuinfo.contains("processor\t: 1"), "one vCPU")

        session.send("echo piped-$((6 * 7)) | cat")
        #expect(try session.waitFor("piped-42", timeout: .seconds(300)).contains("piped-42"))

        // Paused at its shell: every vCPU parked, the disks' threads quiet, nothing printed; a
        // command typed meanwhile waits, and after resume the shell answers it.
        try session.guest.machine.pause()
        #expect(session.guest.machine.state == .paused)
        let atPause = session.output.utf8.count
        usleep(1_000_000)
        #expect(session.output.utf8.count == atPause, "the guest printed while paused")
        try session.guest.machine.resume()
        session.send("echo resumed-$((20 + 1))")
        #expect(try session.waitFor("resumed-21", timeout: .seconds(300)).contains("resumed-21"))

        // Two virtio-blk disks, one read-only: found, read, written, flushed (LinuxDiskChecks).
        try disks.checkInGuest(session)

        session.send("reboot -f")
        let report = try session.waitForEnd(timeout: .seconds(300))
        #expect(report.outcome == .rebooted)
        try disks.checkOnHost(session.guest)
        #expect(!session.output.contains("Kernel panic"))
        #expect(report.statistics.portWrites > 1000, "the console alone makes thousands of port writes")
    }
}

extension LinuxGuestTests {
    /// The same kernel with no initramfs, its root file system the ext4 image on a virtio-blk disk
    /// (`root=/dev/vda`), on the PIT emulated in this process (`--pit emulated`): the timer
    /// interrupt (IRQ 0 through the in-kernel PIC) must drive the boot, and a file the guest writes
    /// and syncs must be in the image afterwards, which still passes `e2fsck -n`. The run ends with
    /// init exiting, a kernel panic the VMM must report as one; it is traced, and `--stats` is
    /// checked against the trace.
    @Test(.timeLimit(.minutes(45)))
    func ext4RootOnVirtioBlkWithTheEmulatedPIT() throws {
        let assets = try GuestAssets.testKernel()
        let image = try HostFiles.temporaryCopy(of: try GuestAssets.rootFileSystem(), name: "root.ext4")
        defer { unlink(image) }
        let tracePath = "/tmp/swiftkvm-\(getpid())-boot.trace"
        defer { unlink(tracePath) }
        let session = try LinuxSession(
            LinuxGuestConfiguration(
                kernelPath: assets.kernel, commandLine: "console=ttyS0 reboot=k panic=-1 quiet root=/dev/vda rw nolapic",
                memorySize: 128 << 20, pit: .emulated, disks: [DiskConfiguration(path: image)],
                trace: try ExitTrace(path: tracePath), timeLimit: .seconds(1200)))
        defer { session.stop() }
        try session.waitFor("SWIFTKVM-ROOTFS-READY", timeout: .seconds(900))
        try session.waitFor("# ", timeout: .seconds(300))
        session.send("grep -c . /proc/interrupts; cat /proc/interrupts; grep ' / ' /proc/mounts; echo IRQ-$((1 + 1))")
        let interrupts = try session.waitFor("IRQ-2", timeout: .seconds(300))
        // Lines end in "\r\n", a single Character in Swift: split on newlines, not on "\n".
        let lines = interrupts.split(whereSeparator: \.isNewline)
        // `nolapic`: without a local APIC timer the kernel's tick is the PIT's IRQ 0, through the
        // 8259 ("XT-PIC timer"), so this boot runs on the emulated PIT alone. (With the APIC, the
        // MP table's I/O APIC takes the devices and the LAPIC timer the tick; the other boot does that.)
        let timerLine = lines.first { $0.hasPrefix("  0:") && $0.contains("XT-PIC") && $0.contains("timer") } ?? ""
        let count = timerLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        #expect(timerLine.hasPrefix("  0:"), "IRQ 0 is the timer: \(timerLine)")
        #expect(count > 100, "IRQ 0 fired \(count) times: \(timerLine)")
        #expect(lines.contains { $0.hasPrefix("  5:") && $0.contains("virtio0") }, "vda's interrupt is IRQ 5: \(interrupts)")
        #expect(lines.contains { $0.hasPrefix("/dev/root / ext4 rw") }, "the root file system: \(interrupts)")

        // What a clean shutdown does before it reboots: sync, then remount the root read-only
        // (that writes the journal and the free counts back, so e2fsck finds nothing to replay).
        session.send("echo written-by-the-guest > /hello.txt && sync && mount -o remount,ro / && echo SYNCED-$((5 + 5))")
        try session.waitFor("SYNCED-10", timeout: .seconds(300))
        // The shell is PID 1: leaving it kills init, the kernel panics and (panic=-1) resets at once.
        // The VMM must call that a panic, not a clean reboot.
        session.send("exit")
        let report = try session.waitForEnd(timeout: .seconds(300))
        #expect(report.outcome == .panicked(message: "Attempted to kill init! exitcode=0x00000000"))
        try checkStatisticsAgainstTrace(report, milestones: session.guest.machine.milestones, trace: tracePath)

        let fsck = HostFiles.run("e2fsck", "-fn", image)
        #expect(fsck.status == 0, "e2fsck -n after the guest's writes: \(fsck.output)")
        let file = HostFiles.run("debugfs", "-R", "cat /hello.txt", image)
        #expect(file.output.contains("written-by-the-guest"), "\(file.output)")
    }
}

extension LinuxGuestTests {
    /// `--stats` against `--trace` of the same boot: every count in the table is the number of
    /// matching trace lines, and the milestones came in order (the rootfs init writes the
    /// milestone port when user space is ready).
    func checkStatisticsAgainstTrace(_ report: RunReport, milestones: BootMilestones, trace path: String) throws {
        let lines = String(decoding: try readHostFile(path), as: UTF8.self).split(separator: "\n")
        let statistics = report.statistics
        #expect(lines.count == statistics.total, "one trace line per exit")
        #expect(lines.filter { $0.contains(" io in ") }.count == statistics.portReads)
        #expect(lines.filter { $0.contains(" io out ") }.count == statistics.portWrites)
        #expect(lines.filter { $0.contains(" mmio read ") }.count == statistics.mmioReads)
        #expect(lines.filter { $0.contains(" mmio write ") }.count == statistics.mmioWrites)
        #expect(lines.filter { $0.hasSuffix(" unclaimed") }.count == statistics.unclaimedPortAccesses + statistics.unclaimedMMIOAccesses)
        #expect(statistics.mmioWrites > 0, "the virtio-blk driver configured its device")
        for (device, exits) in statistics.deviceExits {
            let label = device.hasSuffix(" (ports)") ? String(device.dropLast(8)) : String(device.dropLast(7))  // " (MMIO)"
            #expect(lines.filter { $0.hasSuffix(" " + label) }.count == exits, "\(device)")
        }
        let table = StatisticsTable.render(report, milestones: milestones)
        let totalRow = table.split(separator: "\n").first { $0.hasPrefix("    total") } ?? ""
        #expect(totalRow.hasSuffix(" " + StatisticsTable.grouped(lines.count)), "\(table)")
        let reached = milestones.sinceStart.map(\.milestone)
        #expect(reached == [.vmmStart, .guestEntry, .firstConsoleByte, .userspaceReady, .end], "\(table)")
        #expect(report.vcpus.count == 1 && report.vcpus[0].timeInKVMRun > .seconds(1))
    }
}

/// The guest kernels `make guest` builds into the cache (`SWIFTKVM_CACHE`, default /var/cache/swiftkvm).
enum GuestAssets {
    static var cache: String { getenv("SWIFTKVM_CACHE").map { String(cString: $0) } ?? "/var/cache/swiftkvm" }
    static var present: Bool { access("\(cache)/test-kernel/bzImage", R_OK) == 0 && access("\(cache)/test-initramfs.cpio", R_OK) == 0 }
    /// In CI the assets and /dev/kvm must be there (`make test` builds them): a missing one fails.
    static var shouldRun: Bool { KVMAvailability.isCI || (present && KVMSystem.deviceExists) }
    static let skipReason: Comment = "the test kernel is not in the cache (run `make guest`) or /dev/kvm is absent, and CI is unset"

    static func testKernel() throws -> (kernel: String, initrd: String, release: String) {
        let kernel = "\(cache)/test-kernel/bzImage"
        let initrd = "\(cache)/test-initramfs.cpio"
        let releaseBytes = try readHostFile("\(cache)/test-kernel/release")
        let release = String(decoding: releaseBytes, as: UTF8.self).split(whereSeparator: \.isWhitespace).first.map(String.init)
        return (kernel, initrd, release ?? "")
    }

    /// The ext4 root image (`make -C Firmware/linux rootfs`); tests boot a copy of it.
    static func rootFileSystem() throws -> String {
        let path = "\(cache)/test-rootfs.ext4"
        guard access(path, R_OK) == 0 else { throw VMMError.file(path: path, problem: "missing: run `make guest`") }
        return path
    }
}

