#if canImport(Glibc)
import Glibc
#endif

/// The control API's server: HTTP/1.1 over a Unix stream socket, served by one OS thread of its
/// own (a `pthread` named `api-server`, never Swift's cooperative pool) that waits in `poll(2)` on
/// the listening socket, every client and a wake-up pipe.
///
/// - The socket file is created mode 0600 (the socket's inode is `fchmod`ed before `bind`, which
///   Linux's `unix_bind` applies less the umask, then the file is `fchmodat`ed to 0600 before
///   `listen`, so no one can connect to a wider file). It is removed by `stop()` — only if it is still
///   the file this server made.
/// - `start()` refuses a path where a live server answers, and replaces a stale socket file (one
///   whose server died: a connection is refused) or nothing; anything else at the path is refused.
/// - Clients are nonblocking; each has a bounded input (a request's head and body, `HTTPLimits`)
///   and output; a client idle for `Options.idleTimeout` is closed (a request left half-sent gets a
///   408 first). At most `Options.maximumClients` are served at once; more wait in the backlog.
/// - Responses are written with `MSG_NOSIGNAL`: a client that hung up cannot raise SIGPIPE.
/// - The controller (`VMController`) is called on the server thread, one request at a time.
public final class ControlServer: @unchecked Sendable {
    public struct Options: Sendable {
        /// Seconds a client may stay without sending or receiving before it is closed.
        public var idleTimeout: Double
        public var maximumClients: Int
        public var limits: HTTPLimits

        public init(idleTimeout: Double = 30, maximumClients: Int = 32, limits: HTTPLimits = HTTPLimits()) {
            self.idleTimeout = idleTimeout
            self.maximumClients = maximumClients
            self.limits = limits
        }
    }

    public let path: String
    public let options: Options
    private let router: APIRouter

    // Set by start(); after that owned by the server thread until it has been joined.
    private var socketPath: UnixSocketPath?
    private var listener: Int32 = -1
    private var socketFile: (device: UInt64, inode: UInt64)?
    private var wakeRead: Int32 = -1
    private var wakeWrite: Int32 = -1
    private var thread: pthread_t?
    private var mutex = pthread_mutex_t()
    private var stopped = false

    public init(path: String, controller: any VMController, options: Options = Options()) {
        self.path = path
        self.options = options
        self.router = APIRouter(controller: controller)
        pthread_mutex_init(&mutex, nil)
    }

    /// The server thread holds a reference while it runs, so this runs only after it has ended
    /// (or was never started): the wake-up pipe is closed here, never while `stop()` may write to it.
    deinit {
        stop()
        if wakeRead >= 0 { close(wakeRead) }
        if wakeWrite >= 0 { close(wakeWrite) }
        pthread_mutex_destroy(&mutex)
    }

    /// Binds the socket and starts the server thread. Throws `ControlServerError` when the path
    /// cannot be used; nothing is left behind then. A server serves once: after `stop()`, make a
    /// new one (`start()` then throws `ControlServerError.stopped`); a second `start()` while it
    /// runs does nothing.
    public func start() throws(ControlServerError) {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard !stopped else { throw .stopped }
        guard thread == nil else { return }
        let socketPath = try UnixSocketPath(path)
        if let existing = try socketPath.status() {
            guard existing.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path: path) }
            guard try !socketPath.hasLiveServer() else { throw .inUse(path: path) }
            _ = socketPath.unlink()
        }
        guard var address = socketPath.address() else { throw .badPath(path, "the socket address does not fit") }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno, path: path) }
        var bound = false
        func fail(_ call: String) -> ControlServerError {
            let error = ControlServerError.system(call: call, errno: errno, path: path)
            close(fd)
            if bound { _ = socketPath.unlink() }
            return error
        }
        guard fchmod(fd, 0o600) == 0 else { throw fail("fchmod") }
        let bindResult = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bindResult == 0 else {
            if errno == EADDRINUSE {
                close(fd)
                throw .inUse(path: path)
            }
            throw fail("bind")
        }
        bound = true
        guard fchmodat(socketPath.directory, socketPath.name, 0o600, 0) == 0 else { throw fail("fchmodat") }
        guard let info = try? socketPath.status() else { throw fail("fstatat") }
        guard listen(fd, 64) == 0 else { throw fail("listen") }
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { throw fail("pipe") }
        for end in pipeFDs { Self.setNonblockingAndCloseOnExec(end) }
        self.listener = fd
        self.wakeRead = pipeFDs[0]
        self.wakeWrite = pipeFDs[1]
        self.socketFile = (UInt64(info.st_dev), UInt64(info.st_ino))
        self.socketPath = socketPath
        var created = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(&created, nil, { context in
            let server = Unmanaged<ControlServer>.fromOpaque(context!).takeRetainedValue()
            server.serve()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<ControlServer>.fromOpaque(context).release()
            errno = result
            close(pipeFDs[0])
            close(pipeFDs[1])
            (self.wakeRead, self.wakeWrite, self.listener) = (-1, -1, -1)
            self.socketPath = nil
            throw fail("pthread_create")
        }
        thread = created
    }

    /// Stops serving: wakes the thread, which closes every client and the socket and removes the
    /// socket file; waits for it unless called from the server thread itself (from a controller
    /// method: then the thread ends after the current response). Calling it again does nothing.
    public func stop() {
        pthread_mutex_lock(&mutex)
        let running = thread
        let first = !stopped
        stopped = true
        if first, running != nil {
            var byte: UInt8 = 1
            _ = write(wakeWrite, &byte, 1)
        }
        pthread_mutex_unlock(&mutex)
        guard first, let running, pthread_equal(running, pthread_self()) == 0 else { return }
        pthread_join(running, nil)
    }

    // MARK: - The server thread

    private final class Client {
        let fd: Int32
        var parser: HTTPRequestParser
        var output: [UInt8] = []
        var written = 0
        var lastActivity: Double
        /// No more requests are answered: the response in `output` is the last.
        var closing = false
        /// The client sent its end of the stream (hung up or half-closed): what it sent is still answered.
        var readClosed = false

        init(fd: Int32, limits: HTTPLimits, now: Double) {
            self.fd = fd
            self.parser = HTTPRequestParser(limits: limits)
            self.lastActivity = now
        }

        var pendingOutput: Int { output.count - written }
    }

    /// Output beyond which a client's further requests wait until it reads (pipelining is bounded).
    private static let outputHighWater = 1 << 20

    private func serve() {
        Self.nameThisThread("api-server")
        var clients: [Client] = []
        var scratch = [UInt8](repeating: 0, count: 64 << 10)
        let readCap = options.limits.maximumHeaderBytes + options.limits.maximumBodyBytes + (64 << 10)
        // After accept fails for want of descriptors (EMFILE, ENFILE, ENOBUFS) the listener stays
        // readable: it rests for 100 ms instead of spinning.
        var acceptRestsUntil = 0.0
        serving: while true {
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let accepting = clients.count < options.maximumClients && Self.monotonicSeconds() >= acceptRestsUntil
            fds.append(pollfd(fd: accepting ? listener : -1, events: Int16(POLLIN), revents: 0))
            for client in clients {
                var events: Int16 = 0
                if !client.closing, !client.readClosed, client.parser.bufferedByteCount < readCap, client.pendingOutput < Self.outputHighWater { events |= Int16(POLLIN) }
                if client.pendingOutput > 0 { events |= Int16(POLLOUT) }
                fds.append(pollfd(fd: client.fd, events: events, revents: 0))
            }
            let now = Self.monotonicSeconds()
            let nextExpiry = clients.map { $0.lastActivity + options.idleTimeout }.min().map { max(0, $0 - now) } ?? 1
            let timeout = Int32(min(accepting ? 1000 : 100, max(1, nextExpiry * 1000)))
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0, errno != EINTR { break serving }
            if fds[0].revents != 0 { break serving }
            let clock = Self.monotonicSeconds()
            var keep: [Client] = []
            for (index, client) in clients.enumerated() {
                let events = fds[index + 2].revents
                if service(client, events: events, now: clock, scratch: &scratch) {
                    keep.append(client)
                } else {
                    close(client.fd)
                }
            }
            clients = keep
            if fds[1].revents & Int16(POLLIN) != 0 {
                while clients.count < options.maximumClients {
                    let fd = accept(listener, nil, nil)
                    guard fd >= 0 else {
                        if errno != EAGAIN, errno != EWOULDBLOCK, errno != EINTR, errno != ECONNABORTED { acceptRestsUntil = clock + 0.1 }
                        break
                    }
                    Self.setNonblockingAndCloseOnExec(fd)
                    clients.append(Client(fd: fd, limits: options.limits, now: clock))
                }
            }
        }
        for client in clients { close(client.fd) }
        close(listener)
        if let socketPath, let socketFile, let info = try? socketPath.status(),
            UInt64(info.st_dev) == socketFile.device, UInt64(info.st_ino) == socketFile.inode
        {
            _ = socketPath.unlink()
        }
        socketPath = nil
    }

    /// Reads, answers and writes for one client; false when it is to be closed.
    private func service(_ client: Client, events: Int16, now: Double, scratch: inout [UInt8]) -> Bool {
        if events & Int16(POLLNVAL) != 0 { return false }
        if !client.readClosed, events & (Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
            let count = scratch.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count == 0 {
                // The client hung up or half-closed: answer the whole requests it sent, then close.
                client.readClosed = true
            } else if count < 0 {
                if errno != EAGAIN, errno != EWOULDBLOCK, errno != EINTR { return false }
            } else {
                client.lastActivity = now
                client.parser.append(scratch[0..<count])
            }
        }
        answerRequests(of: client)
        if client.pendingOutput > 0 {
            let sent = client.output.withUnsafeBytes { raw in
                send(client.fd, raw.baseAddress! + client.written, raw.count - client.written, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if sent < 0 {
                if errno != EAGAIN, errno != EWOULDBLOCK, errno != EINTR { return false }
            } else {
                client.written += sent
                client.lastActivity = now
                if client.written == client.output.count {
                    client.output.removeAll(keepingCapacity: true)
                    client.written = 0
                    answerRequests(of: client)  // pipelined requests held back by a full output
                }
            }
        }
        if client.closing || client.readClosed, client.pendingOutput == 0 {
            shutdown(client.fd, Int32(SHUT_WR))
            return false
        }
        if now - client.lastActivity >= options.idleTimeout {
            if client.parser.isInsideRequest, !client.closing {
                let response = HTTPResponse.fault(.requestTimeout, "the request was not completed within \(options.idleTimeout) seconds")
                let bytes = response.serialized(keepAlive: false)
                bytes.withUnsafeBytes { _ = send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
            }
            return false
        }
        return true
    }

    /// Takes whole requests out of the client's parser while its output has room.
    private func answerRequests(of client: Client) {
        while !client.closing, client.pendingOutput < Self.outputHighWater, let result = client.parser.next() {
            switch result {
            case .success(let request):
                let response = router.respond(to: request)
                client.output += response.serialized(keepAlive: request.keepAlive)
                if !request.keepAlive { client.closing = true }
            case .failure(let error):
                client.output += HTTPResponse.fault(error.status, error.message).serialized(keepAlive: false)
                client.closing = true
            }
        }
        if !client.closing, client.parser.takeContinueRequest() {
            client.output += Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
        }
    }

    /// O_NONBLOCK and FD_CLOEXEC (accept4 and pipe2 are GNU extensions Glibc's module does not export).
    static func setNonblockingAndCloseOnExec(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    /// Names the calling thread for ps and gdb through /proc/thread-self/comm (proc(5); at most 15 bytes).
    static func nameThisThread(_ name: String) {
        let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = Array(name.utf8.prefix(15)).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
