import Glibc
import Testing
import VMM

/// Boots Firmware/build/virtio-blk.bin — a bzImage-shaped guest with a minimal virtio-mmio block
/// driver (Firmware/src/virtio-blk.c) — through the Linux loader with `--disk`s attached. It
/// finds its disk from the `virtio_mmio.device=` word LinuxGuest adds to the command line, and
/// prints `VBLK …` lines: what it read (with a checksum), what it wrote, how the device answered.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason))
struct VirtioBlockGuestTests {
    static var guestPath: String { "\(Firmware.directory)/virtio-blk.bin" }

    /// The guest's checksum: FNV-1a over 64-bit little-endian words.
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        var index = bytes.startIndex
        while index + 8 <= bytes.endIndex {
            var word: UInt64 = 0
            for byte in (0..<8).reversed() { word = word << 8 | UInt64(bytes[index + byte]) }
            hash = (hash ^ word) &* 0x100_0000_01b3
            index += 8
        }
        return hash
    }

    /// The 4 KiB the guest writes with `vblk.write=`: word k is 0x5357494654000000 + k.
    static let writePattern: [UInt8] = (0..<512).flatMap { k -> [UInt8] in
        let word = 0x5357_4946_5400_0000 + UInt64(k)
        return (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * UInt64($0))) }
    }

    struct Run {
        let output: String
        let outcome: GuestOutcome
    }

    /// Runs the guest with `arguments` on its command line and `disks` attached.
    func run(_ arguments: String, disks: [DiskConfiguration]) throws -> Run {
        let session = try LinuxSession(
            LinuxGuestConfiguration(
                kernelPath: Self.guestPath, commandLine: "console=ttyS0 \(arguments)", memorySize: 64 << 20, disks: disks,
                timeLimit: .seconds(120)))
        defer { session.stop() }
        let report = try session.waitForEnd(timeout: .seconds(180))
        return Run(output: session.output, outcome: report.outcome)
    }

    func temporaryDisk(_ bytes: [UInt8], _ name: String) throws -> String {
        let path = "/tmp/swiftkvm-\(getpid())-\(name)"
        try HostFiles.write(bytes, to: path)
        return path
    }

    @Test(.timeLimit(.minutes(45)))
    func readsTheDiskTheHostWrote() throws {
        let bytes = HostFiles.randomBytes(512 * 1024, seed: 21)
        let disk = try temporaryDisk(bytes, "read.img")
        defer { unlink(disk) }
        let result = try run("vblk.read=600", disks: [DiskConfiguration(path: disk)])
        #expect(result.outcome == .rebooted)
        #expect(result.output.contains("VBLK device 0xd0000000 irq 0x5\n"), "\(result.output)")
        #expect(result.output.contains("VBLK capacity 0x400 features 0x246\n"), "SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH offered: \(result.output)")
        #expect(result.output.contains("VBLK id swiftkvm-vda\n"))
        let expected = Self.checksum(bytes[0..<600 * 512])
        #expect(result.output.contains("VBLK read sectors 0x258 checksum 0x\(String(expected, radix: 16))\n"), "\(result.output)")
        #expect(result.output.contains("VBLK DONE failures 0x0\n"))
        #expect(try readHostFile(disk) == bytes, "reading changes nothing")
    }

    @Test(.timeLimit(.minutes(45)))
    func aWriteAndFlushReachTheHostFile() throws {
        let bytes = HostFiles.randomBytes(256 * 1024, seed: 22)
        let disk = try temporaryDisk(bytes, "write.img")
        defer { unlink(disk) }
        let result = try run("vblk.read=8 vblk.write=100", disks: [DiskConfiguration(path: disk)])
        #expect(result.outcome == .rebooted)
        #expect(result.output.contains("VBLK write sector 0x64 status 0x0\n"), "\(result.output)")
        #expect(result.output.contains("VBLK flush status 0x0\n"))
        var expected = bytes
        expected.replaceSubrange(100 * 512..<108 * 512, with: Self.writePattern)
        #expect(try readHostFile(disk) == expected, "exactly the pattern, at sector 100")
    }

    @Test(.timeLimit(.minutes(45)))
    func aReadOnlyDiskRefusesTheWriteAndStaysByteIdentical() throws {
        let bytes = HostFiles.randomBytes(64 * 1024, seed: 23)
        let disk = try temporaryDisk(bytes, "readonly.img")
        defer { unlink(disk) }
        let result = try run("vblk.write=4", disks: [DiskConfiguration(path: disk, readOnly: true)])
        #expect(result.outcome == .rebooted)
        #expect(result.output.contains("VBLK capacity 0x80 features 0x266\n"), "RO offered: \(result.output)")
        #expect(result.output.contains("VBLK write sector 0x4 status 0x1\n"), "IOERR: \(result.output)")
        #expect(result.output.contains("VBLK read sectors 0x80 checksum 0x\(String(Self.checksum(bytes[...]), radix: 16))\n"))
        #expect(try readHostFile(disk) == bytes)
    }

    @Test(.timeLimit(.minutes(45)))
    func theSecondDiskSitsInTheNextWindowWithTheNextInterrupt() throws {
        let first = try temporaryDisk(HostFiles.randomBytes(4096, seed: 24), "first.img")
        let second = try temporaryDisk(HostFiles.randomBytes(8192, seed: 25), "second.img")
        defer {
            unlink(first)
            unlink(second)
        }
        // The guest takes the first virtio-blk window on its command line: put the second disk's first.
        let session = try LinuxSession(
            LinuxGuestConfiguration(
                kernelPath: Self.guestPath, commandLine: "console=ttyS0 virtio_mmio.device=4K@0xd0001000:6", memorySize: 64 << 20,
                disks: [DiskConfiguration(path: first), DiskConfiguration(path: second)], timeLimit: .seconds(120)))
        defer { session.stop() }
        _ = try session.waitForEnd(timeout: .seconds(180))
        #expect(session.guest.commandLine.hasSuffix("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"))
        #expect(session.output.contains("VBLK device 0xd0001000 irq 0x6\n"), "\(session.output)")
        #expect(session.output.contains("VBLK capacity 0x10 features 0x246\n"))
        #expect(session.output.contains("VBLK id swiftkvm-vdb\n"))
    }

    @Test(.timeLimit(.minutes(45)))
    func withoutADiskTheGuestSaysSo() throws {
        let result = try run("vblk.read=1", disks: [])
        #expect(result.output.contains("VBLK FAIL no virtio-blk in virtio_mmio.device= on the command line"))
    }
}
