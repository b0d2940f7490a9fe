#if canImport(Glibc)
import Glibc
#endif

/// A Unix socket path as the server binds, connects to and removes it: its folder held open
/// (`O_PATH`), and the file named inside it. `sun_path` holds at most 107 bytes and a NUL
/// (unix(7)); a longer path is reached through the open folder, `/proc/self/fd/N/NAME`, so deep
/// temporary folders work. Checks and the final unlink go through the folder too (`fstatat`,
/// `unlinkat`), so they name the same file even if the path's folders are renamed meanwhile.
final class UnixSocketPath {
    let path: String
    let name: String
    let directory: Int32

    /// O_PATH (open(2); asm-generic/fcntl.h: 010000000), which Glibc's module leaves out (a GNU extension).
    static let openPathOnly: Int32 = 0o10000000

    /// `sun_path`'s size (108) less its terminating NUL.
    static let maximumAddressBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    init(_ path: String) throws(ControlServerError) {
        guard !path.isEmpty, !path.utf8.contains(0) else { throw .badPath(path, "the socket path is empty or has a NUL byte") }
        guard !path.hasSuffix("/") else { throw .badPath(path, "the socket path names a folder: add a file name") }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        let name = String(parts[parts.count - 1])
        let folder = parts.count == 1 ? "." : (parts.count == 2 && parts[0].isEmpty ? "/" : parts.dropLast().joined(separator: "/"))
        guard name != ".", name != ".." else { throw .badPath(path, "the socket path must end in a file name") }
        guard path.utf8.count <= Self.maximumAddressBytes || "/proc/self/fd/1000000/\(name)".utf8.count <= Self.maximumAddressBytes else {
            throw .badPath(path, "the socket's file name is too long for a Unix socket address (at most about 85 bytes)")
        }
        let directory = open(folder, Self.openPathOnly | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { throw .system(call: "open", errno: errno, path: folder) }
        self.path = path
        self.name = name
        self.directory = directory
    }

    deinit { close(directory) }

    /// The address to bind or connect to: the path itself when it fits, else through the folder.
    func address() -> sockaddr_un? {
        let text = path.utf8.count <= Self.maximumAddressBytes ? path : "/proc/self/fd/\(directory)/\(name)"
        let bytes = Array(text.utf8)
        guard bytes.count <= Self.maximumAddressBytes else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// The file's status, or nil when there is none (`fstatat` without following a symlink).
    func status() throws(ControlServerError) -> stat? {
        var info = stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { return nil }
            throw .system(call: "fstatat", errno: errno, path: path)
        }
        return info
    }

    func unlink() -> Bool { unlinkat(directory, name, 0) == 0 }

    /// Whether a server accepts connections there now (a connection succeeds, or its backlog is full).
    func hasLiveServer() throws(ControlServerError) -> Bool {
        guard var address = address() else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno, path: path) }
        defer { close(fd) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if result == 0 { return true }
        switch errno {
        case EAGAIN, EINPROGRESS: return true
        case ECONNREFUSED, ENOENT: return false
        default: throw .system(call: "connect", errno: errno, path: path)
        }
    }
}

/// Why the control server could not start.
public enum ControlServerError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Another server answers on the socket: stop it, or choose another path.
    case inUse(path: String)
    /// Something that is not a socket has the path.
    case notASocket(path: String)
    case badPath(String, String)
    /// `start()` after `stop()`: a server serves once.
    case stopped
    /// A system call failed (`errno` as it was).
    case system(call: String, errno: Int32, path: String)

    public var description: String {
        switch self {
        case .inUse(let path): "\(path): another server is answering on this socket; stop it or choose another path"
        case .notASocket(let path): "\(path) exists and is not a socket; remove it or choose another path"
        case .badPath(let path, let why): "\(path): \(why)"
        case .stopped: "this control server was stopped; make a new one to serve again"
        case .system(let call, let code, let path): "\(path): \(call) failed: \(String(cString: strerror(code))) (errno \(code))"
        }
    }
}
