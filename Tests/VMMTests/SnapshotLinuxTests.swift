import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
import VMConfig
import VMM

/// The test kernel snapshotted at its busybox shell and restored: the shell answers a command,
/// `sleep` returns (timer interrupts run) and the uptime goes on from where it was (the clock).
@Suite(.enabled(if: GuestAssets.shouldRun, GuestAssets.skipReason), .timeLimit(.minutes(45)))
struct SnapshotLinuxTests {
    /// Console output collected from the guest, and input typed into it.
    final class Console: @unchecked Sendable {
        let output = CollectedOutput()
        var text: String { String(decoding: output.bytes, as: UTF8.self) }

        /// Waits until `needle` appears after byte `from`; the text from `from` on.
        func waitFor(_ needle: String, after from: Int = 0, seconds: Double) -> String? {
            var found: String?
            _ = VMInstanceTests.wait(seconds: seconds) {
                let bytes = output.bytes
                guard bytes.count > from else { return false }
                let tail = String(decoding: bytes[from...], as: UTF8.self)
                if tail.contains(needle) { found = tail }
                return found != nil
            }
            return found
        }

        /// Types `line` and a newline into the guest's COM1, as fast as its driver takes it.
        static func type(_ line: String, into instance: VMInstance) {
            var pending = Array((line + "\n").utf8)[...]
            let deadline = ContinuousClock.now + .seconds(120)
            while !pending.isEmpty, ContinuousClock.now < deadline {
                let taken = instance.typeIntoConsole(Array(pending))
                pending = pending.dropFirst(taken)
                if !pending.isEmpty { usleep(2000) }
            }
        }
    }

    static func uptime(in text: String, before marker: String) -> Double? {
        guard let range = text.range(of: marker) else { return nil }
        let lines = text[..<range.lowerBound].split(whereSeparator: \.isNewline)
        return lines.reversed().lazy.compactMap { line in line.split(separator: " ").first.flatMap { Double($0) } }.first
    }

    /// With KVM's PIT and with the emulated one.
    @Test(arguments: [PITModel.kvm, .emulated])
    func aLinuxGuestSnapshottedAtItsShellAnswersAfterTheRestore(pit: PITModel) throws {
        let assets = try GuestAssets.testKernel()
        let directory = try SnapshotTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let configuration = VMConfiguration(
            boot: .linux(LinuxBootSource(kernel: assets.kernel, initrd: assets.initrd, commandLine: "console=ttyS0 reboot=k panic=-1")),
            memoryBytes: 256 << 20, pit: pit)

        let first = Console()
        let booted = try VMInstance(configuration, policy: RunPolicy(timeLimit: .seconds(1500))) { first.output.append($0) }
        var before = 0.0
        _ = try VMInstanceTests.running(booted, within: 1600) { instance in
            defer { instance.stop() }
            #expect(first.waitFor("SWIFTKVM-INIT-READY", seconds: 1200) != nil, "the guest did not reach its shell")
            #expect(first.waitFor("# ", seconds: 300) != nil)
            let mark = first.output.bytes.count
            Console.type("cat /proc/uptime; echo BEFORE-$((40 + 2))", into: instance)
            let answer = try #require(first.waitFor("BEFORE-42", after: mark, seconds: 300))
            before = try #require(Self.uptime(in: answer, before: "BEFORE-42"))
            _ = first.waitFor("# ", after: mark + answer.utf8.count - 2, seconds: 60)
            try instance.pause()
            try instance.snapshot(
                statePath: "\(directory)/state", memoryPath: "\(directory)/memory", configurationJSON: try SnapshotTests.json(configuration))
            instance.stop()
        }
        let snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        #expect(snapshot.vm.irqchips.count == 3 && (snapshot.vm.pit != nil) == (pit == .kvm))
        #expect(snapshot.devices.contains { $0.name == "PIT" } == (pit == .emulated))

        let second = Console()
        let restored = try VMInstance(
            restoring: snapshot, configuration: configuration, memoryPath: "\(directory)/memory", policy: RunPolicy(timeLimit: .seconds(900))
        ) { second.output.append($0) }
        _ = try VMInstanceTests.running(restored, within: 1000) { instance in
            defer { instance.stop() }
            #expect(VMInstanceTests.wait(seconds: 60) { instance.runState == .running })
            Console.type("sleep 1; cat /proc/uptime; echo AFTER-$((6 * 7))", into: instance)
            let answer = try #require(second.waitFor("AFTER-42", seconds: 600), "the restored shell did not answer: \(second.text)")
            let after = try #require(Self.uptime(in: answer, before: "AFTER-42"))
            #expect(after >= before + 1, "uptime \(before) s before the snapshot, \(after) s after a restore and sleep 1")
            #expect(after < before + 600, "the clock jumped: \(before) → \(after)")
            instance.stop()
        }
        #expect(!second.text.contains("Kernel panic"))
    }
}
