import Dispatch
import FoundationEssentials
import Glibc

/// A kept VM's console, shared: every byte the guest writes goes into a history (replayed to
/// whoever attaches), into the size-capped console log, and to each attached client; the one
/// client attached as the writer types into the guest.
///
/// The guest never waits for anyone: `append` (called on a vCPU thread) only copies the byte
/// under a lock. Each client has a bounded queue and a sender thread of its own; a client that
/// stops reading fills its queue and loses bytes (counted), while the others and the guest go on.
///
/// Protocol on the console socket: the client sends one line, `replay=all|run|N mode=read-only|write`
/// (`run`: what this VMM's run printed, from its first boot mark on);
/// the hub answers `ok` (then the replayed history and the live output follow, raw) or
/// `error TEXT` and closes. Bytes a writer sends after `ok` are the guest's input.
public final class ConsoleHub: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `lock`.
    public let socketPath: String
    private let historyCapacity: Int
    private let clientCapacity: Int
    private let log: CappedLog?
    private let input: @Sendable ([UInt8]) -> Void

    private let lock = PlainLock()
    private var history: [UInt8]
    private var historyHead = 0
    private var historyCount = 0
    private var logPending: [UInt8] = []
    private var logDropped = 0
    private var clients: [Client] = []
    private var nextID = 0
    private var writerID: Int?
    private var stopping = false
    private var listener: Int32 = -1
    private var droppedForClients = 0
    /// Bytes in the history that came before this run (`preload`), less those pushed out since.
    private var preloaded = 0
    private let logWake = DispatchSemaphore(value: 0)
    private let logDone = DispatchSemaphore(value: 0)
    private var logThreadStarted = false

    final class Client {
        let id: Int
        let fd: Int32
        let isWriter: Bool
        var queue: [UInt8]
        var dropped = 0
        var closed = false
        let wake = DispatchSemaphore(value: 0)
        let senderDone = DispatchSemaphore(value: 0)
        init(id: Int, fd: Int32, isWriter: Bool, queue: [UInt8]) {
            self.id = id
            self.fd = fd
            self.isWriter = isWriter
            self.queue = queue
        }
    }

    public static let defaultHistory = 1 << 20
    public static let defaultClientQueue = 256 << 10

    /// `input` receives what the writer types (on its reader thread).
    public init(
        socketPath: String, log: CappedLog?, historyCapacity: Int = ConsoleHub.defaultHistory, clientQueue: Int = ConsoleHub.defaultClientQueue,
        input: @escaping @Sendable ([UInt8]) -> Void
    ) {
        self.socketPath = socketPath
        self.log = log
        self.historyCapacity = max(1, historyCapacity)
        self.clientCapacity = max(1, clientQueue)
        self.input = input
        history = [UInt8](repeating: 0, count: max(1, historyCapacity))
    }

    /// Puts earlier output (the console log's tail) into the history, so a replay shows the boots before.
    public func preload(_ bytes: [UInt8]) {
        lock.lock()
        for byte in bytes.suffix(historyCapacity) { pushHistory(byte) }
        preloaded = historyCount
        lock.unlock()
    }

    /// Listens on the socket and starts the log writer.
    public func start() throws(StoreError) {
        let fd = try UnixSockets.listen(socketPath)
        lock.lock()
        listener = fd
        logThreadStarted = log != nil
        lock.unlock()
        if log != nil { spawn { [self] in logLoop() } }
        spawn { [self] in acceptLoop(fd) }
    }

    // MARK: - The guest's side

    /// One byte from the guest; never blocks on a client or the disk.
    public func append(_ byte: UInt8) {
        lock.lock()
        let wakeLog = deliver(byte)
        lock.unlock()
        if wakeLog { logWake.signal() }
    }

    /// A line of the VMM's own (a boot mark), into the history, the log and to every client.
    public func mark(_ text: String) {
        lock.lock()
        var wakeLog = false
        for byte in text.utf8 { wakeLog = deliver(byte) || wakeLog }
        lock.unlock()
        if wakeLog { logWake.signal() }
    }

    /// Under `lock`: whether the log writer must be woken.
    private func deliver(_ byte: UInt8) -> Bool {
        pushHistory(byte)
        for client in clients where !client.closed {
            if client.queue.count < clientCapacity {
                client.queue.append(byte)
                if client.queue.count == 1 { client.wake.signal() }
            } else {
                client.dropped &+= 1
                droppedForClients &+= 1
            }
        }
        guard logThreadStarted else { return false }
        if logPending.count < 4 << 20 {
            logPending.append(byte)
            return logPending.count == 1
        }
        logDropped &+= 1
        return false
    }

    private func pushHistory(_ byte: UInt8) {
        if historyCount == historyCapacity, preloaded > 0 { preloaded -= 1 }
        if historyCount < historyCapacity {
            history[(historyHead + historyCount) % historyCapacity] = byte
            historyCount += 1
        } else {
            history[historyHead] = byte
            historyHead = (historyHead + 1) % historyCapacity
        }
    }

    /// The last `count` bytes of the history (all with nil).
    public func recent(_ count: Int? = nil) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        return tail(count)
    }

    private func tail(_ count: Int?) -> [UInt8] {
        let wanted = min(historyCount, max(0, count ?? historyCount))
        let start = historyHead + historyCount - wanted
        return (0..<wanted).map { history[(start + $0) % historyCapacity] }
    }

    /// Bytes dropped for clients that did not keep up, all clients together.
    public var droppedBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return droppedForClients
    }

    public var clientCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return clients.count
    }

    // MARK: - Clients

    private func acceptLoop(_ listener: Int32) {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                lock.lock()
                let done = stopping
                lock.unlock()
                if done || errno == EINVAL || errno == EBADF { return }
                usleep(10_000)
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            spawn { [self] in serve(fd) }
        }
    }

    /// How much history a client asks for first.
    public enum Replay: Equatable, Sendable {
        case all
        /// What this run printed (since `preload`).
        case run
        case bytes(Int)

        public var word: String {
            switch self {
            case .all: "all"
            case .run: "run"
            case .bytes(let count): String(count)
            }
        }
    }

    /// Parses a client's first line; nil when it is not one.
    public static func parseRequest(_ line: String) -> (replay: Replay, writer: Bool)? {
        var replay = Replay.bytes(0)
        var writer = false
        for word in line.split(separator: " ") {
            let pair = word.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { return nil }
            switch (pair[0], pair[1]) {
            case ("replay", "all"): replay = .all
            case ("replay", "run"): replay = .run
            case ("replay", let number):
                guard let value = Int(number), value >= 0 else { return nil }
                replay = .bytes(value)
            case ("mode", "read-only"): writer = false
            case ("mode", "write"): writer = true
            default: return nil
            }
        }
        return (replay, writer)
    }

    private func serve(_ fd: Int32) {
        var limit = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        guard let line = UnixSockets.readLine(fd, limit: 256), let request = Self.parseRequest(line) else {
            UnixSockets.writeAll(fd, Array("error the first line must be 'replay=all|run|BYTES mode=read-only|write'\n".utf8))
            close(fd)
            return
        }
        var none = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
        lock.lock()
        if stopping {
            lock.unlock()
            UnixSockets.writeAll(fd, Array("error the VM is stopping\n".utf8))
            close(fd)
            return
        }
        if request.writer, writerID != nil {
            lock.unlock()
            UnixSockets.writeAll(fd, Array("error another console is attached as the writer: attach with --read-only, or detach it (Ctrl-A d)\n".utf8))
            close(fd)
            return
        }
        let replayed: [UInt8] =
            switch request.replay {
            case .all: tail(nil)
            case .run: tail(historyCount - preloaded)
            case .bytes(let count): tail(count)
            }
        let id = nextID
        nextID += 1
        let client = Client(id: id, fd: fd, isWriter: request.writer, queue: replayed)
        clients.append(client)
        if request.writer { writerID = id }
        lock.unlock()
        spawn { [self] in send(client) }
        receive(client, id: id)
    }

    private func send(_ client: Client) {
        defer { client.senderDone.signal() }
        guard UnixSockets.writeAll(client.fd, Array("ok\n".utf8)) else { return }
        while true {
            lock.lock()
            var chunk: [UInt8] = []
            swap(&chunk, &client.queue)
            let (closed, ending) = (client.closed, stopping)
            lock.unlock()
            if !chunk.isEmpty {
                guard UnixSockets.writeAll(client.fd, chunk) else { return }
                continue
            }
            if closed { return }
            if ending {
                // All delivered: the client sees the end of the stream.
                shutdown(client.fd, Int32(SHUT_RDWR))
                return
            }
            _ = client.wake.wait(timeout: .now() + .milliseconds(500))
        }
    }

    private func receive(_ client: Client, id: Int) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(client.fd, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            if client.isWriter { input(Array(buffer[0..<count])) }
        }
        lock.lock()
        client.closed = true
        clients.removeAll { $0 === client }
        if writerID == id { writerID = nil }
        lock.unlock()
        client.wake.signal()
        shutdown(client.fd, Int32(SHUT_RDWR))
        client.senderDone.wait()
        close(client.fd)
    }

    private func logLoop() {
        defer { logDone.signal() }
        while true {
            lock.lock()
            var chunk: [UInt8] = []
            swap(&chunk, &logPending)
            let ending = stopping
            lock.unlock()
            if !chunk.isEmpty {
                log?.append(chunk)
                continue
            }
            if ending { return }
            _ = logWake.wait(timeout: .now() + .milliseconds(500))
        }
    }

    /// Delivers what is queued (each client gets at most `timeout`), ends every client's stream,
    /// writes the log out and removes the socket.
    public func stop(timeout: Duration = .seconds(2)) {
        lock.lock()
        let already = stopping
        stopping = true
        let fd = listener
        listener = -1
        let current = clients
        let hadLog = logThreadStarted
        lock.unlock()
        guard !already else { return }
        if fd >= 0 {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
        unlink(socketPath)
        for client in current { client.wake.signal() }
        logWake.signal()
        let deadline = ContinuousClock.now + timeout
        while clientCount > 0, ContinuousClock.now < deadline { usleep(10_000) }
        lock.lock()
        for client in clients { shutdown(client.fd, Int32(SHUT_RDWR)) }
        lock.unlock()
        if hadLog { _ = logDone.wait(timeout: .now() + .seconds(5)) }
    }

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        DetachedThread.start(stackSize: 256 << 10) { body() }
    }
}

/// A client of a console socket: connects, asks for `replay` bytes of history (nil: all) as a
/// reader or the writer, and returns the connected descriptor once the hub said `ok`.
public enum ConsoleClient {
    public static func attach(_ socketPath: String, replay: ConsoleHub.Replay, writer: Bool) throws(StoreError) -> Int32 {
        let fd = try UnixSockets.connect(socketPath, timeout: 10)
        let request = "replay=\(replay.word) mode=\(writer ? "write" : "read-only")\n"
        guard UnixSockets.writeAll(fd, Array(request.utf8)), let answer = UnixSockets.readLine(fd) else {
            close(fd)
            throw StoreError(.system, "\(socketPath): the console did not answer")
        }
        guard answer == "ok" else {
            close(fd)
            throw StoreError(.running, answer.hasPrefix("error ") ? String(answer.dropFirst(6)) : answer)
        }
        // From here on reads wait as long as the guest is quiet.
        var none = timeval(tv_sec: 0, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }
}
