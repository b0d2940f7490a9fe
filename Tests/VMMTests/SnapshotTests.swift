import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
import VMConfig
import VMM
import VMMCore

/// Full snapshots of a paused firmware guest, restored in this process: the guest continues where
/// it stopped. (The restore in a new process is in CLITests' SnapshotCommandTests.)
@Suite(.enabled(if: KVMAvailability.shouldRun, KVMAvailability.skipReason), .timeLimit(.minutes(45)))
struct SnapshotTests {
    static let counter = VMInstanceTests.firmware("counter-user", mode: "user")

    static func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-snapshot-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func json(_ configuration: VMConfiguration) throws -> [UInt8] { Array(try JSONEncoder().encode(configuration)) }

    /// Runs a counter guest, pauses it after `lines` lines, snapshots it into `directory`, and
    /// stops it; returns what it printed.
    static func snapshotCounter(into directory: String, lines: Int = 20) throws -> String {
        let output = CollectedOutput()
        let instance = try VMInstance(counter, policy: RunPolicy(timeLimit: .seconds(120))) { output.append($0) }
        let report = try VMInstanceTests.running(instance) { instance in
            #expect(VMInstanceTests.wait { output.lineCount >= lines })
            try instance.pause()
            try instance.snapshot(
                statePath: "\(directory)/state", memoryPath: "\(directory)/memory", configurationJSON: try json(counter))
            // Paused after the snapshot: nothing more is printed before the stop.
            instance.stop()
        }
        #expect(report.outcome == .stopped)
        return String(decoding: output.bytes, as: UTF8.self)
    }

    /// Restores the snapshot in `directory` and runs it until it printed `lines` more lines.
    static func restoreCounter(from directory: String, lines: Int = 20) throws -> String {
        let snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        let configuration = try JSONDecoder().decode(VMConfiguration.self, from: Data(snapshot.configuration))
        let output = CollectedOutput()
        let instance = try VMInstance(
            restoring: snapshot, configuration: configuration, memoryPath: "\(directory)/memory", policy: RunPolicy(timeLimit: .seconds(120))
        ) { output.append($0) }
        let report = try VMInstanceTests.running(instance) { instance in
            let ended = { if case .finished = instance.phase { true } else { false } }
            #expect(VMInstanceTests.wait { output.lineCount >= lines || ended() })
            instance.stop()
        }
        #expect(report.outcome == .stopped)
        return String(decoding: output.bytes, as: UTF8.self)
    }

    /// The numbers of `before + after` are 0, 1, 2, … with none missing or repeated (the last,
    /// unfinished line aside).
    static func checkContinues(_ before: String, _ after: String) {
        var lines = (before + after).split(separator: "\n", omittingEmptySubsequences: false)
        lines.removeLast()
        #expect(lines.count > 30)
        for (index, line) in lines.enumerated() where Int(line) != index {
            Issue.record("line \(index) is '\(line)', expected \(index) (before the snapshot: \(before.count) bytes)")
            return
        }
    }

    @Test func aRestoredCounterContinuesWithTheNextNumber() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let before = try Self.snapshotCounter(into: directory)
        let after = try Self.restoreCounter(from: directory)
        Self.checkContinues(before, after)
    }

    @Test func aSnapshotRestoredTwiceGivesTwoGuestsThatBothContinue() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let before = try Self.snapshotCounter(into: directory)
        let first = try Self.restoreCounter(from: directory)
        let second = try Self.restoreCounter(from: directory, lines: 40)
        Self.checkContinues(before, first)
        Self.checkContinues(before, second)
        // MAP_PRIVATE: the first guest's writes never reached the file the second one mapped.
        // Each ran on for a moment after its count was reached: compare the lines both printed.
        let complete = { (text: String) in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() }
        let (firstLines, secondLines) = (complete(first), complete(second))
        let common = min(firstLines.count, secondLines.count)
        #expect(common >= 20)
        #expect(Array(firstLines.prefix(common)) == Array(secondLines.prefix(common)))
    }

    /// The pause lands while the vCPU is handling an OUT exit (asked from inside the console
    /// callback, on the vCPU thread, which then waits until the request is seen): KVM has not
    /// finished the OUT until KVM_RUN is entered again, so a snapshot taken without completing it
    /// first would print that character twice after the restore. (On hardware KVM, whose fast
    /// PIO path advances RIP only on that re-entry. KVM-PVM emulates a ring-3 OUT and advances RIP
    /// before the exit, so here the test passes with or without the completion: measured.)
    @Test func aSnapshotTakenInTheMiddleOfAnOUTDoesNotRepeatIt() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let output = CollectedOutput()
        let instanceBox = Mutex<VMInstance?>(nil)
        let snapshotDone = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let configuration = Self.counter
        let instance = try VMInstance(configuration, policy: RunPolicy(timeLimit: .seconds(120))) { byte in
            output.append(byte)
            guard output.bytes.count == 100, let instance = instanceBox.withLock({ $0 }) else { return }
            // A thread of its own: Dispatch's pool may take a second to start one on a busy host.
            Thread {
                do {
                    try instance.pause()
                    try instance.snapshot(
                        statePath: "\(directory)/state", memoryPath: "\(directory)/memory", configurationJSON: try Self.json(configuration))
                } catch {
                    failure.withLock { $0 = "\(error)" }
                }
                instance.stop()
                snapshotDone.signal()
            }.start()
            // Still inside the OUT's exit: let the pause request and its kick arrive now.
            usleep(200_000)
        }
        instanceBox.withLock { $0 = instance }
        _ = try VMInstanceTests.running(instance) { _ in
            #expect(snapshotDone.wait(timeout: .now() + 60) == .success)
        }
        #expect(failure.withLock { $0 } == nil)
        let before = String(decoding: output.bytes, as: UTF8.self)
        #expect(before.utf8.count == 100, "nothing after the pause")
        let after = try Self.restoreCounter(from: directory)
        Self.checkContinues(before, after)
    }

    @Test func aSnapshotNeedsAPausedVM() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let output = CollectedOutput()
        let instance = try VMInstance(Self.counter, policy: RunPolicy(timeLimit: .seconds(60))) { output.append($0) }
        _ = try VMInstanceTests.running(instance) { instance in
            #expect(VMInstanceTests.wait { output.lineCount >= 2 })
            #expect(throws: SnapshotError.notApplicable("the VM is running, it must be paused to snapshot")) {
                try instance.snapshot(statePath: "\(directory)/state", memoryPath: "\(directory)/memory", configurationJSON: [])
            }
            instance.stop()
        }
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/state"))
    }

    @Test func theStateHoldsEveryPieceOfVCPUState() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.snapshotCounter(into: directory, lines: 3)
        let snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        let vcpu = try #require(snapshot.vcpus.first)
        #expect(snapshot.vcpus.count == 1)
        #expect(!vcpu.cpuid.isEmpty)
        #expect(vcpu.xsave != nil || vcpu.fpu != nil)
        #expect(vcpu.msrs.count > 5, "MSRs from KVM's index list")
        #expect(vcpu.tscKHz > 0)
        #expect(vcpu.localAPIC == nil, "a unit guest has no irqchip")
        #expect(snapshot.memory.count == 1 && snapshot.memory[0].size == 2 << 20)
        var status = stat()
        #expect(stat("\(directory)/memory", &status) == 0 && status.st_size == 2 << 20)
        // Written sparse: a 2 MiB guest that touched a few pages takes far less on disk.
        #expect(Int(status.st_blocks) * 512 < 1 << 20)
        #expect(try MachineSnapshot(decoding: snapshot.encoded()) == snapshot)
    }

    @Test func aMemoryFileOfTheWrongSizeIsRefused() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.snapshotCounter(into: directory, lines: 2)
        #expect(truncate("\(directory)/memory", 1 << 20) == 0)
        let snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        #expect(throws: SnapshotError.self) {
            _ = try VMInstance(restoring: snapshot, configuration: Self.counter, memoryPath: "\(directory)/memory") { _ in }
        }
    }

    @Test func aStateFromAnotherTSCFrequencyIsRefused() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.snapshotCounter(into: directory, lines: 2)
        var snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        snapshot.vcpus[0].tscKHz += 1000
        let instance = try VMInstance(restoring: snapshot, configuration: Self.counter, memoryPath: "\(directory)/memory") { _ in }
        do {
            _ = try instance.run()
            Issue.record("a snapshot with another TSC frequency was restored")
        } catch {
            #expect(error.description.contains("TSC"), "\(error)")
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func aStateWithFeaturesThisHostLacksIsRefused() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.snapshotCounter(into: directory, lines: 2)
        var snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        // Leaf 7 EBX bit 31 (AVX512VL) together with every other bit of the word: no host has all.
        let index = try #require(snapshot.vcpus[0].cpuid.firstIndex { $0.function == 7 && $0.index == 0 })
        snapshot.vcpus[0].cpuid[index].ebx = 0xFFFF_FFFF
        let instance = try VMInstance(restoring: snapshot, configuration: Self.counter, memoryPath: "\(directory)/memory") { _ in }
        do {
            _ = try instance.run()
            Issue.record("a snapshot with CPU features this host lacks was restored")
        } catch {
            #expect(error.description.contains("CPU features"), "\(error)")
        }
    }
}

extension SnapshotTests {
    /// A restored VM snapshotted again (its RAM now mapped from the first memory file) and
    /// restored from the second: the counter still runs on without a gap. Writing the second
    /// memory file over the first, which the VM maps, is refused instead of crashing it.
    @Test func aRestoredVMCanBeSnapshottedAgainButNotOntoItsOwnMemoryFile() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try Self.snapshotCounter(into: directory)
        let second = "\(directory)/again"
        try FileManager.default.createDirectory(atPath: second, withIntermediateDirectories: true)
        let snapshot = try MachineSnapshot(contentsOf: "\(directory)/state")
        let output = CollectedOutput()
        let restored = try VMInstance(
            restoring: snapshot, configuration: Self.counter, memoryPath: "\(directory)/memory", policy: RunPolicy(timeLimit: .seconds(120))
        ) { output.append($0) }
        _ = try VMInstanceTests.running(restored) { instance in
            defer { instance.stop() }
            #expect(VMInstanceTests.wait { output.lineCount >= 20 })
            try instance.pause()
            #expect(throws: SnapshotError.self) {
                try instance.snapshot(statePath: "\(second)/state", memoryPath: "\(directory)/memory", configurationJSON: try Self.json(Self.counter))
            }
            try instance.snapshot(statePath: "\(second)/state", memoryPath: "\(second)/memory", configurationJSON: try Self.json(Self.counter))
        }
        let middle = String(decoding: output.bytes, as: UTF8.self)
        let last = try Self.restoreCounter(from: second)
        Self.checkContinues(first + middle, last)
    }
}
