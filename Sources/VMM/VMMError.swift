import Glibc
import KVM
import VMMCore

/// An error setting up or running a machine, as one line a user can act on.
public enum VMMError: Error, CustomStringConvertible, Equatable {
    case kvm(KVMError)
    case memory(GuestMemoryError)
    case bus(BusError)
    /// A system call other than a KVM ioctl failed.
    case system(call: String, errno: Int32)
    /// The configuration cannot work (sizes that do not fit, a bad entry point, …); the text says why and what to do.
    case configuration(String)
    /// A file the user named cannot be used.
    case file(path: String, problem: String)
    /// A snapshot could not be restored (a refused state file, another host).
    indirect case snapshot(SnapshotError)

    public var description: String {
        switch self {
        case .kvm(let error): error.description
        case .memory(let error): error.description
        case .bus(let error): error.description
        case .system(let call, let errno): "\(call) failed: \(String(cString: strerror(errno)))"
        case .configuration(let text): text
        case .file(let path, let problem): "\(path): \(problem)"
        case .snapshot(let error): error.description
        }
    }
}

/// Reads a whole host file, with errors that name the file and the problem.
public func readHostFile(_ path: String, limit: Int = 1 << 32) throws(VMMError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
    defer { close(fd) }
    var status = stat()
    guard fstat(fd, &status) == 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
    guard (status.st_mode & S_IFMT) == S_IFREG else { throw .file(path: path, problem: "not a regular file") }
    guard status.st_size <= limit else { throw .file(path: path, problem: "\(status.st_size) bytes is larger than the \(limit)-byte limit") }
    var bytes = [UInt8](repeating: 0, count: Int(status.st_size))
    var done = 0
    while done < bytes.count {
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
        if count < 0 {
            if errno == EINTR { continue }
            throw .file(path: path, problem: String(cString: strerror(errno)))
        }
        if count == 0 { break }
        done += count
    }
    return done == bytes.count ? bytes : Array(bytes.prefix(done))  // no second copy of a whole file
}
