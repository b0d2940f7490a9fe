import FoundationEssentials
import Glibc

/// Unix stream sockets for the store's paths, which may be longer than the 107 bytes `sun_path`
/// holds (a deep `SWIFTKVM_HOME`): such a path is reached through its folder opened `O_PATH`, as
/// `/proc/self/fd/N/NAME` (the same way the control server binds; see ControlAPI's UnixSocketPath).
public enum UnixSockets {
    static let openPathOnly: Int32 = 0o10000000
    static let maximumAddressBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// Calls `body` with an address for `path` (and keeps the folder open while it runs).
    static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) throws(StoreError) -> T {
        var directory: Int32 = -1
        defer { if directory >= 0 { close(directory) } }
        var text = path
        if path.utf8.count > maximumAddressBytes {
            let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")).map { path.utf8.distance(from: path.utf8.startIndex, to: $0) } ?? -1
            guard slash >= 0 else { throw StoreError(.system, "\(path): the socket path is too long") }
            let folder = slash == 0 ? "/" : String(path.prefix(slash))
            let name = String(path.dropFirst(slash + 1))
            directory = open(folder, openPathOnly | O_DIRECTORY | O_CLOEXEC)
            guard directory >= 0 else { throw .system("open", folder) }
            text = "/proc/self/fd/\(directory)/\(name)"
            guard text.utf8.count <= maximumAddressBytes else { throw StoreError(.system, "\(path): the socket's file name is too long") }
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(text.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// A connected stream socket to `path` (close-on-exec), with send and receive timeouts.
    public static func connect(_ path: String, timeout seconds: Int = 30) throws(StoreError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("socket", path) }
        if seconds > 0 {
            var limit = timeval(tv_sec: seconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
        let result: Int32
        do { result = try withAddress(path) { Glibc.connect(fd, $0, $1) } } catch {
            close(fd)
            throw error
        }
        guard result == 0 else {
            let code = errno
            close(fd)
            throw .system("connect", path, code)
        }
        return fd
    }

    /// A listening socket at `path`, mode 0600. A file already there is removed first: call only
    /// while holding the VM's lock (only the lock holder owns the sockets).
    public static func listen(_ path: String) throws(StoreError) -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("socket", path) }
        let mask = umask(0o177)
        let bound: Int32
        do { bound = try withAddress(path) { bind(fd, $0, $1) } } catch {
            umask(mask)
            close(fd)
            throw error
        }
        umask(mask)
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw .system("bind", path, code)
        }
        guard Glibc.listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw .system("listen", path, code)
        }
        return fd
    }

    /// Writes all of `bytes`; false when the peer went or the timeout passed.
    @discardableResult
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let result = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if result < 0, errno == EINTR { continue }
            guard result > 0 else { return false }
            done += result
        }
        return true
    }

    /// Reads up to a newline (at most `limit` bytes); nil at EOF or error before one.
    public static func readLine(_ fd: Int32, limit: Int = 4096) -> String? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < limit {
            let count = read(fd, &byte, 1)
            if count < 0, errno == EINTR { continue }
            guard count == 1 else { return nil }
            if byte == 0x0A { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
        return nil
    }
}

/// A client of a VMM's control API (HTTP/1.1 + JSON on its Unix socket): one request a connection.
public struct ControlClient: Sendable {
    public let socketPath: String
    public let timeout: Int

    public init(socketPath: String, timeout: Int = 30) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    public struct Response: Sendable {
        public let status: Int
        public let body: [UInt8]
        public var text: String { String(decoding: body, as: UTF8.self) }
        /// The API's `fault_message`, or the body.
        public var faultMessage: String {
            struct Fault: Decodable { let fault_message: String? }
            if let message = (try? JSONDecoder().decode(Fault.self, from: Data(body)))?.fault_message {
                return message
            }
            return text
        }
    }

    public func request(_ method: String, _ path: String, json body: String? = nil) throws(StoreError) -> Response {
        let fd = try UnixSockets.connect(socketPath, timeout: timeout)
        defer { close(fd) }
        let payload = Array((body ?? "").utf8)
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if body != nil { head += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\n" }
        head += "\r\n"
        guard UnixSockets.writeAll(fd, Array(head.utf8) + payload) else { throw .system("send", socketPath) }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while received.count < 4 << 20 {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            if count < 0 { throw .system("read", socketPath) }
            if count == 0 { break }
            received += chunk[0..<count]
            if let parsed = Self.parse(received) { return parsed }
        }
        guard let parsed = Self.parse(received, atEnd: true) else { throw StoreError(.system, "\(socketPath): the VMM gave no HTTP answer") }
        return parsed
    }

    /// A whole response in `bytes`, or nil while more is needed.
    static func parse(_ bytes: [UInt8], atEnd: Bool = false) -> Response? {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, bytes.count - 3)).first(where: { Array(bytes[$0..<$0 + 4]) == separator }) else { return nil }
        let head = String(decoding: bytes[0..<end], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        guard let first = lines.first else { return nil }
        let parts = first.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { return nil }
        var length: Int?
        for line in lines.dropFirst() {
            let pair = line.split(separator: ":", maxSplits: 1)
            if pair.count == 2, pair[0].lowercased() == "content-length" { length = Int(pair[1].trimmingWhitespace()) }
        }
        let body = Array(bytes[(end + 4)...])
        if let length {
            guard body.count >= length else { return nil }
            return Response(status: status, body: Array(body.prefix(length)))
        }
        return atEnd || status == 204 ? Response(status: status, body: body) : nil
    }
}
