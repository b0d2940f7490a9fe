import Foundation
import Testing

/// Snapshots across processes, as a user makes them: a firmware counter is paused and snapshotted
/// through its control socket, its VMM killed, and the snapshot loaded into a NEW VMM (`swiftkvm
/// serve` + `PUT /snapshot/load`, or `swiftkvm restore DIR`): the counter goes on with the next
/// number.
@Suite(.enabled(if: KVM.shouldRun, KVM.skipReason), .timeLimit(.minutes(45)))
struct SnapshotCommandTests {
    typealias API = ControlAPICommandTests

    static func folder(_ name: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-\(name)-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Runs the counter, snapshots it into `directory` after `lines` lines, kills its VMM; returns
    /// what it printed (which ends where the snapshot was taken).
    static func snapshotCounter(into directory: String, lines: Int = 20) throws -> String {
        let socket = API.socketPath("snap")
        let vm = try API.Background([
            "run", "--firmware", Paths.firmware("counter-user"), "--mode", "user", "--api-socket", socket, "--time-limit", "120",
        ])
        #expect(API.waitFor { vm.stdout.split(separator: "\n").count > lines })
        #expect(try API.curl(socket, "PATCH", "/vm", body: #"{"state": "Paused"}"#).status == 204)
        let created = try API.curl(
            socket, "PUT", "/snapshot/create",
            body: #"{"snapshot_type": "Full", "snapshot_path": "\#(directory)/state", "mem_file_path": "\#(directory)/memory"}"#)
        #expect(created.status == 204, "\(created.body)")
        usleep(200_000)
        let printed = vm.stdout
        vm.process.interrupt()
        kill(vm.process.processIdentifier, SIGKILL)
        _ = vm.finish(within: 30)
        return printed
    }

    /// Starts `swiftkvm serve`, loads the snapshot in `directory`, and collects `lines` lines.
    static func loadIntoNewVMM(_ directory: String, lines: Int = 20) throws -> String {
        let socket = API.socketPath("load")
        let vm = try API.Background(["serve", "--api-socket", socket, "--time-limit", "120"])
        #expect(API.waitFor { FileManager.default.fileExists(atPath: socket) })
        let loaded = try API.curl(
            socket, "PUT", "/snapshot/load",
            body: #"{"snapshot_path": "\#(directory)/state", "mem_backend": {"backend_type": "File", "backend_path": "\#(directory)/memory"}, "resume_vm": true}"#)
        #expect(loaded.status == 204, "\(loaded.body)")
        #expect(API.json(try API.curl(socket, "GET", "/").body)["state"] as? String == "Running")
        #expect(API.waitFor { vm.stdout.split(separator: "\n").count > lines })
        #expect(try API.curl(socket, "PUT", "/actions", body: #"{"action_type": "Kill"}"#).status == 204)
        _ = vm.finish(within: 30)
        return vm.stdout
    }

    /// `before + after` counts 0, 1, 2, … with no number repeated or missing (the last, unfinished
    /// line aside).
    static func checkContinues(_ before: String, _ after: String, sourceLocation: SourceLocation = #_sourceLocation) {
        var lines = (before + after).split(separator: "\n", omittingEmptySubsequences: false)
        lines.removeLast()
        #expect(lines.count > 30, sourceLocation: sourceLocation)
        for (index, line) in lines.enumerated() where Int(line) != index {
            Issue.record("line \(index) is '\(line)', expected \(index)", sourceLocation: sourceLocation)
            return
        }
    }

    @Test func aCounterSnapshottedAndKilledContinuesInANewProcess() throws {
        let directory = try Self.folder("snapshot")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let before = try Self.snapshotCounter(into: directory)
        let after = try Self.loadIntoNewVMM(directory)
        Self.checkContinues(before, after)
    }

    @Test func aSnapshotLoadedTwiceGivesTwoGuestsThatBothContinue() throws {
        let directory = try Self.folder("twice")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let before = try Self.snapshotCounter(into: directory)
        let first = try Self.loadIntoNewVMM(directory)
        let second = try Self.loadIntoNewVMM(directory, lines: 30)
        Self.checkContinues(before, first)
        Self.checkContinues(before, second)
    }

    @Test func withoutResumeTheRestoredVMWaitsPaused() throws {
        let directory = try Self.folder("paused")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let before = try Self.snapshotCounter(into: directory)
        let socket = API.socketPath("paused")
        let vm = try API.Background(["serve", "--api-socket", socket, "--time-limit", "120"])
        #expect(API.waitFor { FileManager.default.fileExists(atPath: socket) })
        let loaded = try API.curl(
            socket, "PUT", "/snapshot/load",
            body: #"{"snapshot_path": "\#(directory)/state", "mem_backend": {"backend_type": "File", "backend_path": "\#(directory)/memory"}}"#)
        #expect(loaded.status == 204, "\(loaded.body)")
        #expect(API.json(try API.curl(socket, "GET", "/").body)["state"] as? String == "Paused")
        usleep(300_000)
        #expect(vm.stdout.isEmpty, "the guest ran before the resume")
        // A second load, once a VM exists, is refused.
        #expect(try API.curl(socket, "PUT", "/snapshot/load", body: #"{"snapshot_path": "/x", "mem_backend": {"backend_type": "File", "backend_path": "/y"}}"#).status == 409)
        #expect(try API.curl(socket, "PATCH", "/vm", body: #"{"state": "Resumed"}"#).status == 204)
        #expect(API.waitFor { vm.stdout.split(separator: "\n").count > 20 })
        #expect(try API.curl(socket, "PUT", "/actions", body: #"{"action_type": "Kill"}"#).status == 204)
        _ = vm.finish(within: 30)
        Self.checkContinues(before, vm.stdout)
    }

    @Test func theSnapshotAndRestoreCommands() throws {
        let directory = try Self.folder("commands")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = API.socketPath("cmd")
        let vm = try API.Background([
            "run", "--firmware", Paths.firmware("counter-user"), "--mode", "user", "--api-socket", socket, "--time-limit", "120",
        ])
        #expect(API.waitFor { vm.stdout.split(separator: "\n").count > 10 })
        let snapshot = try SwiftKVMProcess.run(["snapshot", "--api-socket", socket, "--leave-paused", "\(directory)/snap"])
        #expect(snapshot.status == 0, "\(snapshot.stderr)")
        usleep(200_000)
        let before = vm.stdout
        #expect(API.json(try API.curl(socket, "GET", "/").body)["state"] as? String == "Paused")
        kill(vm.process.processIdentifier, SIGKILL)
        _ = vm.finish(within: 30)

        let restored = try SwiftKVMProcess.run(["restore", "\(directory)/snap", "--time-limit", "1"])
        #expect(restored.status == 124, "\(restored.stderr)")  // the time limit ended it
        Self.checkContinues(before, restored.stdout)
    }

    @Test func aDamagedStateFileIsRefusedWithOneLine() throws {
        let directory = try Self.folder("damaged")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.snapshotCounter(into: directory, lines: 3)
        try FileManager.default.createDirectory(atPath: "\(directory)/snap", withIntermediateDirectories: true)
        var state = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(directory)/state")))
        try FileManager.default.copyItem(atPath: "\(directory)/memory", toPath: "\(directory)/snap/memory")
        let cases: [(String, ([UInt8]) -> [UInt8])] = [
            ("truncated", { Array($0.prefix($0.count / 2)) }),
            ("format version 7", { var bytes = $0; bytes[8] = 7; return bytes }),
            ("damaged", { var bytes = $0; bytes[bytes.count / 2] ^= 0x01; return bytes }),
            ("not a swiftkvm snapshot", { _ in Array("hello".utf8) }),
        ]
        for (words, corrupt) in cases {
            try Data(corrupt(state)).write(to: URL(fileURLWithPath: "\(directory)/snap/state"))
            let result = try SwiftKVMProcess.run(["restore", "\(directory)/snap", "--time-limit", "5"])
            #expect(result.status != 0)
            #expect(result.stderr.contains(words), "\(words): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        }
        // Through the API: a 400 that says why, and the VMM still waits for a good load.
        let socket = API.socketPath("damaged")
        let vm = try API.Background(["serve", "--api-socket", socket, "--time-limit", "60"])
        #expect(API.waitFor { FileManager.default.fileExists(atPath: socket) })
        state[state.count / 3] ^= 0x40
        try Data(state).write(to: URL(fileURLWithPath: "\(directory)/snap/state"))
        let refused = try API.curl(
            socket, "PUT", "/snapshot/load",
            body: #"{"snapshot_path": "\#(directory)/snap/state", "mem_backend": {"backend_type": "File", "backend_path": "\#(directory)/snap/memory"}}"#)
        #expect(refused.status == 400)
        #expect((API.json(refused.body)["fault_message"] as? String ?? "").contains("damaged"), "\(refused.body)")
        #expect(API.json(try API.curl(socket, "GET", "/").body)["state"] as? String == "Not started")
        kill(vm.process.processIdentifier, SIGTERM)
        _ = vm.finish(within: 30)
    }
}
