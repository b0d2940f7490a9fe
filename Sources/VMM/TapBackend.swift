import CNet
import Glibc
import Virtio

/// A network backend the VMM's I/O worker can wait on: the descriptor that turns readable when a
/// frame arrives, and a way to let go of it.
protocol PollableNetworkBackend: NetworkBackend {
    /// The descriptor to poll for input, or nil once the backend has closed (its peer went away).
    var readableDescriptor: Int32? { get }
    /// Whether a whole frame is already buffered in the process (no poll would report it).
    var hasBufferedFrame: Bool { get }
    /// Closes the backend's descriptors and ends anything it started.
    func close()
}

/// A virtio-net backend on a Linux tap device (Documentation/networking/tuntap.rst): opened with
/// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and TUNSETVNETHDRSZ 12, so every frame crosses with the
/// guest's own `virtio_net_hdr` and checksum and TSO offloads reach the host stack untouched.
/// Frames go out with one writev(2) straight from guest memory.
///
/// `name` may be an existing tap (made with `ip tuntap add NAME mode tap [user U]`), which stays
/// after the VMM exits, or a name not in use, which creates a tap (this needs CAP_NET_ADMIN) that
/// the kernel removes when the VMM closes it.
public final class TapBackend: PollableNetworkBackend, @unchecked Sendable {
    // @unchecked: `descriptor` changes only in close(); `vectors` is used only by the thread that
    // serves the transmit queue.
    public let name: String
    /// Whether this VMM created the tap (it disappears when closed) rather than attaching to one.
    public let created: Bool
    public let carriesVirtioHeader = true
    private var descriptor: Int32
    private var vectors: [iovec] = []

    /// Opens (or creates) tap `name`. Errors say what is wrong with the tap and what to do.
    public init(name: String) throws(VMMError) {
        guard !name.isEmpty, name.utf8.count < Int(CNET_IFNAMSIZ), !name.contains("/"), !name.contains(" "), name != ".", name != ".." else {
            throw .configuration("'\(name)' is not an interface name (1 to \(CNET_IFNAMSIZ - 1) characters, no '/' or spaces)")
        }
        self.name = name
        // Asked through a socket, so in this thread's network namespace (/sys may show another).
        let existed = if_nametoindex(name) != 0
        let fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let error = errno
            throw .configuration(
                error == ENOENT
                    ? "/dev/net/tun does not exist: load the tun module (modprobe tun) to use a tap"
                    : "cannot open /dev/net/tun: \(String(cString: strerror(error)))")
        }
        var request = [UInt8](repeating: 0, count: Int(CNET_IFREQ_SIZE))
        for (index, byte) in name.utf8.enumerated() { request[index] = byte }
        let flags = UInt16(bitPattern: CNET_IFF_TAP | CNET_IFF_NO_PI | CNET_IFF_VNET_HDR)
        request[Int(CNET_IFREQ_FLAGS_OFFSET)] = UInt8(truncatingIfNeeded: flags)
        request[Int(CNET_IFREQ_FLAGS_OFFSET) + 1] = UInt8(truncatingIfNeeded: flags >> 8)
        if request.withUnsafeMutableBytes({ cnet_ioctl_pointer(fd, CNET_TUNSETIFF, $0.baseAddress) }) < 0 {
            let error = errno
            Glibc.close(fd)
            switch error {
            case EPERM where existed:
                throw .configuration(
                    "no permission to use tap \(name): it belongs to another user (ip tuntap add \(name) mode tap user $USER), or run with CAP_NET_ADMIN")
            case EPERM:
                throw .configuration(
                    "tap \(name) does not exist and creating one needs CAP_NET_ADMIN: create it first (ip tuntap add \(name) mode tap user $USER)")
            case EBUSY: throw .configuration("tap \(name) is in use by another process")
            case EINVAL where existed: throw .configuration("\(name) exists and is not a tap device (or not one made for IFF_VNET_HDR)")
            default: throw .configuration("cannot attach tap \(name): \(String(cString: strerror(error)))")
            }
        }
        var headerSize = Int32(VirtioNet.headerLength)
        guard cnet_ioctl_pointer(fd, CNET_TUNSETVNETHDRSZ, &headerSize) == 0 else {
            let error = errno
            Glibc.close(fd)
            throw .system(call: "TUNSETVNETHDRSZ on tap \(name)", errno: error)
        }
        // No offloads until the guest accepts some: the tap must not hand us what it cannot take.
        _ = cnet_ioctl_value(fd, CNET_TUNSETOFFLOAD, 0)
        descriptor = fd
        created = !existed
    }

    deinit { close() }

    var readableDescriptor: Int32? { descriptor >= 0 ? descriptor : nil }
    var hasBufferedFrame: Bool { false }

    func close() {
        guard descriptor >= 0 else { return }
        Glibc.close(descriptor)
        descriptor = -1
    }

    public func send(_ segments: [UnsafeRawBufferPointer]) throws(NetworkBackendError) {
        vectors.removeAll(keepingCapacity: true)
        for segment in segments {
            vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: segment.baseAddress), iov_len: segment.count))
        }
        while true {
            // A tap takes a frame whole or not at all; it never blocks (a full queue drops).
            let written = vectors.withUnsafeBufferPointer { writev(descriptor, $0.baseAddress, Int32($0.count)) }
            if written >= 0 { return }
            if errno == EINTR { continue }
            throw NetworkBackendError(operation: "writev to tap \(name)", reason: String(cString: strerror(errno)))
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(NetworkBackendError) -> Int? {
        while true {
            let count = read(descriptor, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            switch errno {
            case EINTR: continue
            case EAGAIN: return nil
            default: throw NetworkBackendError(operation: "read from tap \(name)", reason: String(cString: strerror(errno)))
            }
        }
    }

    /// TUNSETOFFLOAD: what the tap may hand the guest (checksum and TSO, as the guest accepted).
    public func setReceiveOffloads(_ offloads: NetworkOffloads) {
        var flags: UInt32 = 0
        if offloads.contains(.checksum) { flags |= CNET_TUN_F_CSUM }
        if offloads.contains(.tcp4Segmentation) { flags |= CNET_TUN_F_TSO4 }
        if offloads.contains(.tcp6Segmentation) { flags |= CNET_TUN_F_TSO6 }
        // Refused only for flags this kernel lacks: then the tap sends plain frames, which is safe.
        _ = cnet_ioctl_value(descriptor, CNET_TUNSETOFFLOAD, UInt(flags))
        receiveOffloads = offloads
    }

    /// The offloads last set with TUNSETOFFLOAD (for tests).
    public private(set) var receiveOffloads: NetworkOffloads = []
}

extension TapBackend {
    /// The tap requests a running VM makes (the seccomp filter allows them): TUNSETOFFLOAD, when the
    /// guest's driver accepts its features (which it may do again after a reset, at any time).
    public static let runtimeIoctlRequests: [UInt] = [UInt(CNET_TUNSETOFFLOAD)]
}
