import Foundation
import Glibc
import Testing
import VMConfig
@testable import VMStore

/// A store in a fresh temporary folder, removed at the end.
final class TemporaryStore {
    let root: String
    let store: VMStore

    init(depth: Int = 0) throws {
        var path = FileManager.default.temporaryDirectory.appendingPathComponent("vmstore-\(UUID().uuidString)").path
        for level in 0..<depth { path += "/a-deep-folder-level-\(level)" }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        root = path
        store = VMStore(dataRoot: path, runtimeRoot: path)
    }

    deinit {
        var top = root
        if let range = top.range(of: "/a-deep-folder-level-0") { top = String(top[..<range.lowerBound]) }
        try? FileManager.default.removeItem(atPath: top)
    }
}

let firmware = VMConfiguration(boot: .firmware(FirmwareBootSource(path: "/nonexistent/guest.bin", mode: "user")))

@Suite struct VMNameTests {
    @Test(arguments: ["a", "web", "db-1", "x.y_z", "0abc", String(repeating: "a", count: 63)])
    func validNames(_ name: String) {
        #expect(VMName.problem(with: name) == nil)
    }

    @Test func invalidNamesSayWhatIsWrong() {
        #expect(VMName.problem(with: "") == "a VM name cannot be empty: use 1 to 63 of a-z, 0-9, '.', '_' and '-'")
        #expect(VMName.problem(with: String(repeating: "a", count: 64)) == "the VM name '\(String(repeating: "a", count: 64))' is 64 characters long: use at most 63")
        #expect(VMName.problem(with: "Web") == "the VM name 'Web' must start with a lower-case letter or a digit")
        #expect(VMName.problem(with: "-x") == "the VM name '-x' must start with a lower-case letter or a digit")
        #expect(VMName.problem(with: ".x") != nil)
        #expect(VMName.problem(with: "a/b") == "the VM name 'a/b' has '/': use only a-z, 0-9, '.', '_' and '-'")
        #expect(VMName.problem(with: "a b") != nil)
        #expect(VMName.problem(with: "aé") != nil)
        #expect(VMName.problem(with: "a\u{0}") == "the VM name 'a\u{0}' has byte 0x0: use only a-z, 0-9, '.', '_' and '-'")
    }
}

@Suite struct VMStoreTests {
    @Test func createListRemove() throws {
        let temporary = try TemporaryStore()
        let store = temporary.store
        #expect(store.names().isEmpty)
        let folder = try store.create("web", configuration: firmware)
        try store.create("db", configuration: firmware)
        #expect(store.names() == ["db", "web"])
        #expect(try folder.definition().name == "web", "the definition carries its name")
        #expect(try folder.definition().boot == firmware.boot)
        #expect(throws: StoreError.self) { try store.create("web", configuration: firmware) }
        do {
            try store.create("web", configuration: firmware)
        } catch {
            #expect(error.kind == .exists)
            #expect(error.description == "a VM named 'web' exists already: choose another name, or 'swiftkvm rm web' first")
        }
        do {
            _ = try store.existing("nothere")
            Issue.record("a missing VM was found")
        } catch {
            #expect(error.kind == .notFound)
        }
        do {
            _ = try store.folder("Bad")
            Issue.record("a bad name was taken")
        } catch {
            #expect(error.kind == .badName)
        }
        try store.remove("web")
        #expect(store.names() == ["db"])
        #expect(access(folder.dataPath, F_OK) != 0)
    }

    /// Names are reserved atomically: of many creates of one name at once exactly one succeeds.
    @Test func concurrentCreatesOfOneNameHaveOneWinner() async throws {
        let temporary = try TemporaryStore()
        let store = temporary.store
        let results = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<16 {
                group.addTask { (try? store.create("same", configuration: firmware)) != nil }
            }
            var wins: [Bool] = []
            for await result in group { wins.append(result) }
            return wins
        }
        #expect(results.filter { $0 }.count == 1)
        #expect(store.names() == ["same"])
    }

    @Test func aRunningVMCannotBeRemoved() throws {
        let temporary = try TemporaryStore()
        let folder = try temporary.store.create("busy", configuration: firmware)
        let lock = try #require(VMLock.acquire(folder.lockPath))
        #expect(folder.isLocked)
        #expect(VMLock.acquire(folder.lockPath) == nil, "a second holder")
        do {
            try temporary.store.remove("busy")
            Issue.record("removed while locked")
        } catch {
            #expect(error.kind == .running)
        }
        lock.release()
        #expect(!folder.isLocked)
        try temporary.store.remove("busy")
    }

    @Test func environmentSelectsTheFolders() {
        let home = VMStore.fromEnvironment(["SWIFTKVM_HOME": "/x/y", "HOME": "/home/u"], isRoot: false)
        #expect(home.dataRoot == "/x/y" && home.runtimeRoot == "/x/y")
        let root = VMStore.fromEnvironment([:], isRoot: true)
        #expect(root.dataRoot == "/var/lib/swiftkvm" && root.runtimeRoot == "/run/swiftkvm")
        let user = VMStore.fromEnvironment(["HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000"], isRoot: false)
        #expect(user.dataRoot == "/home/u/.local/share/swiftkvm" && user.runtimeRoot == "/run/user/1000/swiftkvm")
        let xdg = VMStore.fromEnvironment(["HOME": "/home/u", "XDG_DATA_HOME": "/d"], isRoot: false)
        #expect(xdg.dataRoot == "/d/swiftkvm" && xdg.runtimeRoot == "/d/swiftkvm")
    }

    /// A state file that says running with no lock held: the VMM died. The first look records it
    /// (crashed, the event, stale sockets gone); the next sees stopped with the reason.
    @Test func aDeadVMMShowsAsCrashedOnce() throws {
        let temporary = try TemporaryStore()
        let folder = try temporary.store.create("gone", configuration: firmware)
        try folder.writeRecord(VMRecord(state: .running, pid: 999_999, startedAt: 1, bootCount: 1))
        for path in [folder.controlSocketPath, folder.consoleSocketPath] { #expect(FileManager.default.createFile(atPath: path, contents: nil)) }
        let first = folder.status()
        #expect(first.state == .crashed)
        #expect(first.crashedNow)
        #expect(first.record.lastStop?.reason == .vmmDied)
        #expect(first.record.lastStop?.detail == "the VMM (pid 999999) died without stopping the VM")
        #expect(access(folder.controlSocketPath, F_OK) != 0 && access(folder.consoleSocketPath, F_OK) != 0, "stale sockets removed")
        let second = folder.status()
        #expect(second.state == .stopped)
        #expect(!second.crashedNow)
        #expect(second.record.lastStop?.reason == .vmmDied)
        #expect(EventLog(path: folder.eventLogPath).events().map(\.event) == ["crashed"])
    }

    @Test func aLiveLockMeansRunning() throws {
        let temporary = try TemporaryStore()
        let folder = try temporary.store.create("live", configuration: firmware)
        let lock = try #require(VMLock.acquire(folder.lockPath))
        defer { lock.release() }
        try folder.writeRecord(VMRecord(state: .paused, pid: getpid(), startedAt: 1, bootCount: 1))
        #expect(folder.status().state == .paused)
        #expect(folder.status().isRunning)
    }
}

@Suite struct CappedLogTests {
    @Test func theLogRotatesAtItsCapacityAndKeepsTheNewest() throws {
        let temporary = try TemporaryStore()
        let path = temporary.root + "/console.log"
        let log = CappedLog(path: path, capacity: 1000)
        for index in 0..<250 { log.append(Array(String(format: "line %04d\n", index).utf8)) }  // 10 bytes each
        let current = try #require(VMStore.read(path))
        let older = try #require(VMStore.read(path + ".1"))
        #expect(current.count <= 1000 && older.count <= 1000)
        let all = String(decoding: CappedLog.contents(path), as: UTF8.self)
        #expect(all.hasSuffix("line 0249\n"))
        #expect(all.hasPrefix("line "), "rotation happens between writes, never inside one")
        #expect(!all.contains("line 0000"), "the oldest is gone")
        #expect(String(decoding: CappedLog.tail(path, bytes: 10), as: UTF8.self) == "line 0249\n")
    }

    @Test func eventsAreJSONLinesInOrder() throws {
        let temporary = try TemporaryStore()
        let log = EventLog(path: temporary.root + "/events.log")
        log.append("created")
        log.append("started", "boot 1")
        log.append("stopped", "the guest powered off (ACPI S5)")
        #expect(log.events().map(\.event) == ["created", "started", "stopped"])
        #expect(log.events()[1].detail == "boot 1")
        #expect(log.events()[0].time.hasSuffix("Z"))
    }
}

@Suite struct ControlClientTests {
    @Test func responsesAreParsed() {
        let ok = ControlClient.parse(Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".utf8))
        #expect(ok?.status == 200 && ok?.text == "{}")
        #expect(ControlClient.parse(Array("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}".utf8)) == nil, "more to come")
        #expect(ControlClient.parse(Array("HTTP/1.1 204 No Content\r\n\r\n".utf8))?.status == 204)
        let fault = ControlClient.parse(Array("HTTP/1.1 409 Conflict\r\nContent-Length: 27\r\n\r\n{\"fault_message\": \"nope\"}  ".utf8))
        #expect(fault?.faultMessage == "nope")
    }
}
