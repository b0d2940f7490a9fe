import Glibc
import Testing
import VMM

/// Boots Firmware/build/boot-probe.bin — a 5 KiB guest shaped like a bzImage (real setup header,
/// protocol 2.15, XLF_KERNEL_64) — through the Linux loader, exactly as a kernel would be booted.
/// The probe checks what it was handed (zero page, command line, e820, initrd, CPU state, serial
/// port) and prints one `PROBE ok NAME` / `PROBE FAIL NAME got=...` line per check, `PROBE value`
/// lines for what only the host can judge, then `PROBE DONE` and an i8042 reset.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct BootProbeTests {
    static var probePath: String { "\(Firmware.directory)/boot-probe.bin" }
    static let commandLine = "probe-marker=1234 console=ttyS0"
    static let memorySize = 64 << 20

    /// The checks the probe makes whichever entry it was started at; each must print `PROBE ok NAME`.
    static let commonChecks = [
        "image-loaded-whole",
        "zero-page-signature", "zero-page-version", "zero-page-init-size",
        "loadflags-loaded-high", "sentinel-clear",
        "cmdline-pointer", "cmdline-marker", "cmdline-terminated",
        "e820-entries", "e820-ram-covers-kernel",
        "initrd-present", "initrd-page-aligned", "initrd-above-kernel", "initrd-in-ram", "initrd-pattern",
        "serial-lsr-idle", "serial-scratch",
    ]

    /// The checks of the state each entry point was called in (boot.rst's 64-bit and 32-bit boot
    /// protocols); the probe makes only those of the entry it came through.
    static func entryChecks(_ entry: LinuxBootEntry) -> [String] {
        switch entry {
        case .bits64, .direct:  // the probe has no payload to decompress: .direct falls back to .bits64
            ["entry-address", "cs-selector", "ds-selector", "es-selector", "ss-selector",
             "cr0-pg-pe", "cr4-pae", "efer-lma", "rflags-if-clear"]
        case .bits32, .pvh:
            ["entry32-address", "entry32-cs-selector", "entry32-ds-selector", "entry32-es-selector",
             "entry32-ss-selector", "entry32-cr0-pe-no-pg", "entry32-rflags-if-clear", "entry32-ebx-edi-ebp-zero"]
        }
    }

    /// The initrd: the marker the probe compares, then bytes that make the checksum non-trivial.
    static func initrdBytes(count: Int) -> [UInt8] {
        var bytes = Array("PROBE-INITRD-OK!".utf8)
        var state: UInt32 = 0x1234_5678
        while bytes.count < count {
            state = state &* 1_103_515_245 &+ 12345
            bytes.append(UInt8(truncatingIfNeeded: state >> 16))
        }
        return Array(bytes.prefix(count))
    }

    // Generous: the limit counts time spent waiting for a thread while the Linux boots in
    // LinuxGuestTests occupy the test pool; each guest run has its own short deadline.
    // Through the 64-bit entry (how SwiftKVM boots Linux) and the 32-bit one (code32_start, where
    // the probe sets up long mode itself, as Linux's startup_32 does).
    @Test(.timeLimit(.minutes(45)), arguments: [LinuxBootEntry.bits64, .bits32])
    func probeAcceptsTheBootProtocolAsLinuxWould(entry: LinuxBootEntry) throws {
        let initrd = Self.initrdBytes(count: 10_000)
        let initrdFile = try TemporaryFile(contents: initrd)
        defer { initrdFile.remove() }

        let clock = ContinuousClock()
        let start = clock.now
        let session: LinuxSession
        do {
            session = try LinuxSession(
                LinuxGuestConfiguration(
                    kernelPath: Self.probePath, initrdPath: initrdFile.path, commandLine: Self.commandLine,
                    memorySize: Self.memorySize, entry: entry, timeLimit: .seconds(120)))
        } catch {
            Issue.record("\(error) — run `make -C Firmware` first")
            throw error
        }
        defer { session.stop() }
        try session.waitFor("PROBE DONE", timeout: .seconds(100))
        let report = try session.waitForEnd(timeout: .seconds(20))
        let elapsed = clock.now - start
        print("boot-probe, \(entry.rawValue)-bit entry: \(elapsed) from configuration to reset, \(report.duration) of guest run time")

        let output = session.output
        let lines = output.split(whereSeparator: \.isNewline).map(String.init)
        #expect(report.outcome == .rebooted, "\(report.outcome); output: \(output)")
        #expect(lines.first == "PROBE start boot-probe", "\(output)")
        #expect(!lines.contains { $0.hasPrefix("PROBE FAIL") }, "\(output)")
        for check in Self.commonChecks + Self.entryChecks(entry) {
            #expect(lines.contains("PROBE ok \(check)"), "no 'PROBE ok \(check)' in: \(output)")
        }
        let otherEntry: LinuxBootEntry = entry == .bits64 ? .bits32 : .bits64
        for check in Self.entryChecks(otherEntry) {
            #expect(!lines.contains("PROBE ok \(check)"), "'\(check)' belongs to the other entry: \(output)")
        }
        #expect(lines.contains("PROBE DONE failures=\(Self.hex(0))"), "\(output)")
        #expect(lines.contains("PROBE cmdline \(Self.commandLine)"), "\(output)")

        // What only the host can judge.
        var values: [String: UInt64] = [:]
        for line in lines where line.hasPrefix("PROBE value ") {
            let words = line.split(separator: " ")
            if words.count == 4, words[3].hasPrefix("0x"), let value = UInt64(words[3].dropFirst(2), radix: 16) {
                values[String(words[2])] = value
            }
        }
        // 64 MiB in one region: RAM 0 ..< 0x9FC00 and 1 MiB ..< 64 MiB, the legacy hole reserved.
        let expectedRAM = UInt64(0x9_FC00) + UInt64(Self.memorySize - 0x10_0000)
        #expect(values["e820-ram-total"] == expectedRAM, "\(output)")
        #expect(values["e820-ram-total"] == session.guest.bootInfo?.e820.ramSize)
        #expect(values["e820-entries"] == session.guest.bootInfo.map { UInt64($0.e820.entries.count) })
        #expect(values["e820-entries"] == 3)
        let sum = initrd.prefix(256).reduce(UInt32(0)) { $0 &+ UInt32($1) }
        #expect(values["initrd-sum"] == UInt64(sum), "\(output)")
        #expect(values["initrd-size"] == UInt64(initrd.count))
        #expect(values["initrd-address"] == session.guest.bootInfo?.initrd?.address.rawValue)
        #expect(values["zero-page-address"] == session.guest.bootInfo?.zeroPage.rawValue)
        #expect(values["zero-page-address"] == 0x7000)
        #expect(values["type-of-loader"] == 0xFF, "boot.rst: 0xFF, a loader without an assigned id")
        // The loader places the initrd as high as it goes: the last page-aligned spot below 64 MiB.
        #expect(values["initrd-address"] == (UInt64(Self.memorySize) - UInt64(initrd.count)) & ~0xFFF)
    }

    /// With 4 GiB, the RAM past 3 GiB sits above 4 GiB: the guest's e820 says so, and the 32-bit
    /// MMIO hole is not RAM.
    @Test(.timeLimit(.minutes(45)))
    func memoryAboveThreeGiBMovesAboveFourGiB() throws {
        let initrdFile = try TemporaryFile(contents: Self.initrdBytes(count: 4096))
        defer { initrdFile.remove() }
        let session = try LinuxSession(
            LinuxGuestConfiguration(
                kernelPath: Self.probePath, initrdPath: initrdFile.path, commandLine: Self.commandLine,
                memorySize: 4 << 30, timeLimit: .seconds(120)))
        defer { session.stop() }
        try session.waitFor("PROBE DONE", timeout: .seconds(100))
        #expect(try session.waitForEnd(timeout: .seconds(20)).outcome == .rebooted)
        let lines = session.output.split(whereSeparator: \.isNewline).map(String.init)
        #expect(!lines.contains { $0.hasPrefix("PROBE FAIL") }, "\(session.output)")
        // 0 ..< 0x9FC00, 1 MiB ..< 3 GiB and 4 GiB ..< 5 GiB are RAM; the legacy hole is reserved.
        #expect(lines.contains("PROBE value e820-entries \(Self.hex(4))"), "\(session.output)")
        #expect(lines.contains("PROBE value e820-ram-total \(Self.hex(0x9_FC00 + (0xC000_0000 - 0x10_0000) + 0x4000_0000))"))
        let ram = try #require(session.guest.bootInfo).e820.ramEntries
        #expect(ram.contains { $0.address == GuestAddress(0x1_0000_0000) && $0.size == 0x4000_0000 })
        #expect(!ram.contains { $0.range.overlaps(GuestAddress(0xC000_0000)..<GuestAddress(0x1_0000_0000)) })
    }

    @Test(.timeLimit(.minutes(45)))
    func anInitrdTooBigForMemoryIsACleanError() throws {
        // 70 MiB (sparse) into 64 MiB of guest memory.
        let initrdFile = try TemporaryFile(contents: Self.initrdBytes(count: 4096), size: 70 << 20)
        defer { initrdFile.remove() }
        let error = #expect(throws: VMMError.self) {
            let session = try LinuxSession(
                LinuxGuestConfiguration(
                    kernelPath: Self.probePath, initrdPath: initrdFile.path, commandLine: Self.commandLine,
                    memorySize: Self.memorySize, timeLimit: .seconds(30)))
            session.stop()
        }
        let description = error?.description ?? ""
        #expect(description.contains("initrd") && description.contains("does not fit"), "\(description)")
    }

    @Test(.timeLimit(.minutes(45)))
    func aTruncatedImageIsACleanError() throws {
        let image = try readHostFile(Self.probePath)
        #expect(image.count == 0x1400)
        let truncated = try TemporaryFile(contents: Array(image.prefix(image.count - 100)))
        defer { truncated.remove() }
        let error = #expect(throws: VMMError.self) {
            let session = try LinuxSession(
                LinuxGuestConfiguration(
                    kernelPath: truncated.path, commandLine: Self.commandLine, memorySize: Self.memorySize,
                    timeLimit: .seconds(30)))
            session.stop()
        }
        let description = error?.description ?? ""
        #expect(description.contains("truncated"), "\(description)")
    }

    static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
    }
}

extension BootProbeTests {
    /// A file in /tmp holding `contents`, extended with zeros (a hole) to `size` bytes if that is larger.
    struct TemporaryFile {
        let path: String

        init(contents: [UInt8], size: Int = 0) throws {
            var template = Array("/tmp/swiftkvm-boot-probe-XXXXXX".utf8CString)
            let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            guard descriptor >= 0 else { throw VMMError.system(call: "mkstemp", errno: errno) }
            defer { close(descriptor) }
            path = String(cString: template)
            var written = 0
            while written < contents.count {
                let result = contents[written...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
                guard result > 0 else {
                    unlink(path)
                    throw VMMError.system(call: "write", errno: errno)
                }
                written += result
            }
            if size > contents.count, ftruncate(descriptor, off_t(size)) != 0 {
                unlink(path)
                throw VMMError.system(call: "ftruncate", errno: errno)
            }
        }

        func remove() { unlink(path) }
    }
}
