import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
import VMConfig
import VMM

/// A guest snapshotted in the middle of its virtio-blk I/O (Firmware/build/virtio-blk.bin through
/// the Linux loader: the in-kernel irqchip and PIT, the 16550, the i8042, the PM block and a
/// virtio-mmio disk all in the state file) finishes its reads and writes after the restore, and
/// the disk is byte-exact.
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason), .timeLimit(.minutes(45)))
struct SnapshotDiskTests {
    static let writeSector = 100

    static func configuration(disk: String, pit: PITModel) -> VMConfiguration {
        VMConfiguration(
            boot: .linux(LinuxBootSource(kernel: VirtioBlockGuestTests.guestPath, commandLine: "console=ttyS0 vblk.read=2048 vblk.write=\(writeSector)")),
            memoryBytes: 64 << 20, pit: pit, disks: [DiskConfig(path: disk)])
    }

    /// With KVM's PIT (in the VM state) and with the emulated one (a device of its own).
    @Test(arguments: [PITModel.kvm, .emulated])
    func aGuestSnapshottedMidwayThroughItsDiskIOFinishesItAfterTheRestore(pit: PITModel) throws {
        let directory = try SnapshotTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let original = HostFiles.randomBytes(2 << 20, seed: 77)
        let disk = "\(directory)/disk.img"
        try HostFiles.write(original, to: disk)
        let configuration = Self.configuration(disk: disk, pit: pit)

        // The first VM: paused while it reads (after its GET_ID request, inside the 16 reads of
        // 64 KiB), snapshotted, stopped.
        let before = CollectedOutput()
        let first = try VMInstance(configuration, policy: RunPolicy(timeLimit: .seconds(240))) { before.append($0) }
        let report = try VMInstanceTests.running(first) { instance in
            #expect(VMInstanceTests.wait(seconds: 180) { String(decoding: before.bytes, as: UTF8.self).contains("VBLK id ") })
            usleep(300_000)
            try instance.pause()
            try instance.snapshot(
                statePath: "\(directory)/state", memoryPath: "\(directory)/memory", configurationJSON: try SnapshotTests.json(configuration))
            instance.stop()
        }
        #expect(report.outcome == .stopped)
        let printed = String(decoding: before.bytes, as: UTF8.self)
        #expect(!printed.contains("VBLK read sectors"), "the snapshot came after the reads: \(printed)")
        #expect(try readHostFile(disk) == original, "the first VM wrote before its snapshot")

        let snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        let pitDevice = pit == .emulated ? ["PIT"] : []
        #expect(snapshot.devices.map(\.name) == ["COM1", "i8042", "PM1"] + pitDevice + ["virtio-blk0", "virtio-blk0-disk"])
        #expect(snapshot.vm.irqchips.count == 3 && (snapshot.vm.pit != nil) == (pit == .kvm))
        #expect(snapshot.vcpus[0].localAPIC != nil)

        // The second: restored from the files, it goes on reading, writes, flushes and ends.
        let after = CollectedOutput()
        let restored = try VMInstance(
            restoring: snapshot, configuration: configuration, memoryPath: "\(directory)/memory", policy: RunPolicy(timeLimit: .seconds(240))
        ) { after.append($0) }
        let end = try VMInstanceTests.running(restored)
        let text = String(decoding: after.bytes, as: UTF8.self)
        #expect(end.outcome == .rebooted, "\(end.outcome): \(text)")
        let expected = VirtioBlockGuestTests.checksum(original[0..<(2048 * 512)])
        #expect(text.contains("VBLK read sectors 0x800 checksum 0x\(String(expected, radix: 16))"), "\(text)")
        #expect(text.contains("VBLK write sector 0x\(String(Self.writeSector, radix: 16)) status 0x0"), "\(text)")
        #expect(text.contains("VBLK DONE failures 0x0"), "\(text)")
        var written = original
        written.replaceSubrange((Self.writeSector * 512)..<(Self.writeSector * 512 + 4096), with: VirtioBlockGuestTests.writePattern)
        #expect(try readHostFile(disk) == written, "the disk is not byte-exact after the restored guest's write")
    }
}
