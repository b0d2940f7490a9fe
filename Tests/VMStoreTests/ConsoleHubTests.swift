import Foundation
import Glibc
import Synchronization
import Testing
@testable import VMStore

/// Reads a console client's descriptor on a thread of its own into a buffer.
final class Reader: @unchecked Sendable {
    let fd: Int32
    private let bytes = Mutex<[UInt8]>([])
    private let done = DispatchSemaphore(value: 0)

    init(_ fd: Int32) {
        self.fd = fd
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { break }
                bytes.withLock { $0 += buffer[0..<count] }
            }
            done.signal()
        }
        thread.start()
    }

    var received: [UInt8] { bytes.withLock { $0 } }

    /// Waits (bounded) until `count` bytes came; true when they did.
    func waitFor(count: Int, seconds: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while received.count < count, Date() < deadline { usleep(5_000) }
        return received.count >= count
    }

    func waitForEnd(seconds: Double = 20) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

@Suite(.timeLimit(.minutes(45))) struct ConsoleHubTests {
    func makeHub(_ temporary: TemporaryStore, clientQueue: Int = ConsoleHub.defaultClientQueue, input: @escaping @Sendable ([UInt8]) -> Void = { _ in })
        throws -> ConsoleHub
    {
        let hub = ConsoleHub(
            socketPath: temporary.root + "/console.sock", log: CappedLog(path: temporary.root + "/console.log"), clientQueue: clientQueue, input: input)
        try hub.start()
        return hub
    }

    func feed(_ hub: ConsoleHub, _ text: String) { for byte in text.utf8 { hub.append(byte) } }

    @Test func readersGetTheHistoryThenLiveAndTheSameBytes() throws {
        let temporary = try TemporaryStore()
        let hub = try makeHub(temporary)
        hub.preload(Array("from an earlier run\n".utf8))
        hub.mark("[swiftkvm] t: boot 1\n")
        feed(hub, "hello\n")
        let all = Reader(try ConsoleClient.attach(hub.socketPath, replay: .all, writer: false))
        let run = Reader(try ConsoleClient.attach(hub.socketPath, replay: .run, writer: false))
        let last = Reader(try ConsoleClient.attach(hub.socketPath, replay: .bytes(3), writer: false))
        let none = Reader(try ConsoleClient.attach(hub.socketPath, replay: .bytes(0), writer: false))
        #expect(hub.clientCount == 4)
        feed(hub, "live\n")
        let expectedAll = "from an earlier run\n[swiftkvm] t: boot 1\nhello\nlive\n"
        #expect(all.waitFor(count: expectedAll.utf8.count))
        #expect(none.waitFor(count: 5))
        #expect(run.waitFor(count: 32))
        #expect(last.waitFor(count: 8))
        #expect(String(decoding: all.received, as: UTF8.self) == expectedAll)
        #expect(String(decoding: run.received, as: UTF8.self) == "[swiftkvm] t: boot 1\nhello\nlive\n")
        #expect(String(decoding: last.received, as: UTF8.self) == "lo\nlive\n")
        #expect(String(decoding: none.received, as: UTF8.self) == "live\n")
        hub.stop()
        #expect(all.waitForEnd() && none.waitForEnd(), "stop ends every client's stream")
        #expect(access(hub.socketPath, F_OK) != 0, "the socket is removed")
        let log = String(decoding: CappedLog.contents(temporary.root + "/console.log"), as: UTF8.self)
        #expect(log == "[swiftkvm] t: boot 1\nhello\nlive\n", "the log gets this run (the preload came from it)")
    }

    @Test func oneWriterAndItsInputReachesTheGuest() throws {
        let temporary = try TemporaryStore()
        let typed = Mutex<[UInt8]>([])
        let hub = try makeHub(temporary) { bytes in typed.withLock { $0 += bytes } }
        defer { hub.stop() }
        let writer = try ConsoleClient.attach(hub.socketPath, replay: .bytes(0), writer: true)
        do {
            _ = try ConsoleClient.attach(hub.socketPath, replay: .bytes(0), writer: true)
            Issue.record("a second writer was let in")
        } catch {
            #expect(error.description == "another console is attached as the writer: attach with --read-only, or detach it (Ctrl-A d)")
        }
        let reader = try ConsoleClient.attach(hub.socketPath, replay: .bytes(0), writer: false)
        #expect(UnixSockets.writeAll(reader, Array("ignored".utf8)))
        #expect(UnixSockets.writeAll(writer, Array("ls\n".utf8)))
        let deadline = Date().addingTimeInterval(10)
        while typed.withLock({ $0 }) != Array("ls\n".utf8), Date() < deadline { usleep(5_000) }
        #expect(typed.withLock { $0 } == Array("ls\n".utf8), "only the writer types")
        close(writer)
        // The writer's place is free again once it left.
        let again = Date().addingTimeInterval(10)
        var second: Int32 = -1
        while second < 0, Date() < again {
            second = (try? ConsoleClient.attach(hub.socketPath, replay: .bytes(0), writer: true)) ?? -1
            if second < 0 { usleep(10_000) }
        }
        #expect(second >= 0)
        close(second)
        close(reader)
    }

    /// A client that never reads fills its queue and loses bytes; the guest's appends never wait,
    /// and a reader that keeps up gets every byte.
    @Test func aStalledReaderNeverSlowsTheGuest() throws {
        let temporary = try TemporaryStore()
        let hub = try makeHub(temporary, clientQueue: 64 << 10)
        defer { hub.stop() }
        let total = 2 << 20
        let clock = ContinuousClock()
        // The same output with nobody attached, then with a reader that never reads.
        let alone = clock.measure {
            for index in 0..<total { hub.append(UInt8(truncatingIfNeeded: index)) }
        }
        let stalled = try ConsoleClient.attach(hub.socketPath, replay: .bytes(0), writer: false)
        defer { close(stalled) }
        let elapsed = clock.measure {
            for index in 0..<total { hub.append(UInt8(truncatingIfNeeded: index)) }
        }
        #expect(elapsed < alone * 4 + .seconds(1), "2 MiB of console output took \(elapsed) with a stalled reader, \(alone) alone")
        #expect(hub.droppedBytes > 0, "the stalled reader's queue is bounded")
        #expect(hub.droppedBytes <= total)
        // A reader attached now gets the history's tail, then the same live bytes as another.
        let first = Reader(try ConsoleClient.attach(hub.socketPath, replay: .bytes(1000), writer: false))
        let second = Reader(try ConsoleClient.attach(hub.socketPath, replay: .bytes(1000), writer: false))
        #expect(first.waitFor(count: 1000) && second.waitFor(count: 1000))
        let burst = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        for byte in burst { hub.append(byte) }
        #expect(first.waitFor(count: 21_000) && second.waitFor(count: 21_000))
        #expect(first.received == second.received)
        #expect(Array(first.received.prefix(1000)) == (total - 1000..<total).map { UInt8(truncatingIfNeeded: $0) })
        #expect(Array(first.received.suffix(20_000)) == burst)
    }

    /// A socket path longer than `sun_path` (107 bytes) still binds and connects.
    @Test func aDeepFolderBeyondSunPathWorks() throws {
        let temporary = try TemporaryStore(depth: 4)
        let hub = try makeHub(temporary)
        defer { hub.stop() }
        #expect(hub.socketPath.utf8.count > 107, "\(hub.socketPath.utf8.count) bytes")
        feed(hub, "deep\n")
        let reader = Reader(try ConsoleClient.attach(hub.socketPath, replay: .all, writer: false))
        #expect(reader.waitFor(count: 5))
        #expect(String(decoding: reader.received, as: UTF8.self) == "deep\n")
    }

    @Test func aBadFirstLineIsRefused() throws {
        let temporary = try TemporaryStore()
        let hub = try makeHub(temporary)
        defer { hub.stop() }
        let fd = try UnixSockets.connect(hub.socketPath)
        defer { close(fd) }
        #expect(UnixSockets.writeAll(fd, Array("hello\n".utf8)))
        #expect(UnixSockets.readLine(fd) == "error the first line must be 'replay=all|run|BYTES mode=read-only|write'")
        #expect(ConsoleHub.parseRequest("replay=12 mode=write")! == (ConsoleHub.Replay.bytes(12), true))
        #expect(ConsoleHub.parseRequest("replay=-1") == nil)
        #expect(ConsoleHub.parseRequest("mode=root") == nil)
    }
}
