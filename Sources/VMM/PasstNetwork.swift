import CNet
import Glibc
import VMConfig
import Virtio

/// User-mode networking: a passt process (https://passt.top, Debian's `passt`) on one end of a
/// socket pair, the guest's NIC on the other (`StreamBackend`). passt answers the guest's DHCP,
/// ARP and DNS itself and carries its TCP, UDP and ICMP over ordinary sockets of the VMM's
/// network namespace, so it needs no privileges; the gateway address it hands out reaches the
/// host's loopback. Ports listed in `forwards` are listened on by passt and forwarded into the guest.
///
/// passt runs in the foreground (`-f`) with `--fd` (which implies `--one-off`): it quits when the
/// VMM closes its end of the pair, so it never outlives the VMM.
final class PasstProcess: @unchecked Sendable {
    // @unchecked: `processID` changes only in stop(), called once by the thread that owns the VM.
    let backend: StreamBackend
    private(set) var processID: pid_t
    /// passt's pidfd (-1 if the kernel has none): stop() signals passt through it, never by pid.
    private var processDescriptor: Int32 = -1
    /// The descriptor number passt is given its end of the pair as.
    static let childDescriptor: Int32 = 3

    /// Checks that passt exists and every forwarded port is free, then starts passt.
    init(forwards: [PortForward], interfaceName: String) throws(VMMError) {
        guard let executable = Self.findExecutable("passt") else {
            throw .configuration("passt is not installed (Debian: apt-get install passt); user-mode networking runs through it")
        }
        for forward in forwards { try Self.checkFree(forward) }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw .system(call: "socketpair", errno: errno)
        }
        var arguments = [executable, "-f", "-q", "--fd", "\(Self.childDescriptor)"]
        for forward in forwards {
            let host = forward.hostAddress.map { "\($0)/" } ?? ""
            arguments += ["-t", "\(host)\(forward.hostPort):\(forward.guestPort)"]
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 clears FD_CLOEXEC on the copy (and glibc clears it when the numbers are equal).
        posix_spawn_file_actions_adddup2(&actions, pair[1], Self.childDescriptor)
        var pid: pid_t = 0
        let cArguments = arguments.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        let result = posix_spawn(&pid, executable, &actions, nil, cArguments, environ)
        Glibc.close(pair[1])
        guard result == 0 else {
            Glibc.close(pair[0])
            throw .configuration("cannot start \(executable): \(String(cString: strerror(result)))")
        }
        processID = pid
        processDescriptor = cnet_pidfd_open(pid)
        backend = StreamBackend(descriptor: pair[0], peerName: "passt (\(interfaceName))")
        // passt checks its options and the namespace's interfaces at once; one that exits within
        // the first moments has said why on standard error.
        for _ in 0..<20 {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                processID = 0
                if processDescriptor >= 0 { Glibc.close(processDescriptor) }
                processDescriptor = -1
                backend.close()
                throw .configuration(
                    "passt exited at once (status \(status >> 8)): see its message above; it needs a network interface with a default route")
            }
            usleep(5000)
        }
    }

    deinit { stop() }

    /// Closes the VMM's end (passt then quits) and reaps passt, ending it if it lingers.
    func stop() {
        backend.close()
        guard processID > 0 else { return }
        let pid = processID
        processID = 0
        let descriptor = processDescriptor
        processDescriptor = -1
        defer { if descriptor >= 0 { Glibc.close(descriptor) } }
        // Through the pidfd: until passt is reaped its pid is ours, but the seccomp filter allows
        // no kill(2) (a pid is any process); pidfd_send_signal reaches this process only.
        func signal(_ number: Int32) {
            if descriptor >= 0 { _ = cnet_pidfd_send_signal(descriptor, number) } else { kill(pid, number) }
        }
        for attempt in 0..<200 {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { return }
            if attempt == 100 { signal(SIGTERM) }
            usleep(5000)
        }
        signal(SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    /// The first executable `name` on PATH.
    static func findExecutable(_ name: String) -> String? {
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") where !directory.isEmpty {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        for directory in ["/usr/bin", "/usr/sbin", "/bin"] where access("\(directory)/\(name)", X_OK) == 0 {
            return "\(directory)/\(name)"
        }
        return nil
    }

    /// Binds the forward's host port once, to report a port in use before passt would fail on it.
    static func checkFree(_ forward: PortForward) throws(VMMError) {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(truncatingIfNeeded: forward.hostPort)).bigEndian
        if let host = forward.hostAddress {
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
                throw .configuration("'\(host)' is not an IPv4 address to forward port \(forward.hostPort) from")
            }
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        defer { Glibc.close(fd) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let error = errno
            let place = "\(forward.hostAddress ?? "0.0.0.0"):\(forward.hostPort)"
            switch error {
            case EADDRINUSE: throw .configuration("host port \(place) is already in use: pick another port to forward")
            case EACCES: throw .configuration("host port \(place) needs privileges (ports below 1024): pick a higher one")
            case EADDRNOTAVAIL: throw .configuration("\(forward.hostAddress ?? "") is not an address of this host, cannot forward port \(forward.hostPort) from it")
            default: throw .configuration("cannot listen on host port \(place): \(String(cString: strerror(error)))")
            }
        }
    }
}
