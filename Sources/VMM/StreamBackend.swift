import Glibc
import Virtio

/// A virtio-net backend on a connected stream socket speaking QEMU's "stream" netdev framing, which
/// passt uses with `--fd`: each frame is a 4-byte big-endian length, then the Ethernet frame, with no
/// `virtio_net_hdr` (so the device strips and adds it, and offers no offloads).
///
/// Bounded: at most one frame and the start of the next are buffered (`inbox`, allocated once). A
/// length the peer announces above `VirtioNet.maximumFrameLength` ends the stream, as does the peer
/// closing it; the backend then stops reporting a descriptor and the device's receive side goes quiet.
public final class StreamBackend: PollableNetworkBackend, @unchecked Sendable {
    // @unchecked: `inbox` and its indices are used only by the receiving thread, `prefix` and
    // `vectors` only by the sending one; `descriptor` changes only in close().
    public let carriesVirtioHeader = false
    /// What the stream is for, in errors ("passt").
    public let peerName: String
    private var descriptor: Int32
    private var inbox: [UInt8]
    private var start = 0
    private var end = 0
    /// The 4-byte length in front of a frame being sent (allocated once, freed in deinit).
    private let prefix = UnsafeMutableRawPointer.allocate(byteCount: 4, alignment: 4)
    private var vectors: [iovec] = []
    /// How long a send waits for the peer to make room before the stream is given up.
    static let sendTimeoutMilliseconds: Int32 = 5000
    /// The longest frame accepted from the peer: what the device can hold without the header.
    static let maximumFrame = VirtioNet.maximumFrameLength - VirtioNet.headerLength

    /// Takes ownership of `descriptor`, a connected SOCK_STREAM socket (made non-blocking here).
    public init(descriptor: Int32, peerName: String) {
        self.descriptor = descriptor
        self.peerName = peerName
        inbox = [UInt8](repeating: 0, count: 4 + Self.maximumFrame)
        let flags = fcntl(descriptor, F_GETFL)
        _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
    }

    deinit {
        close()
        prefix.deallocate()
    }

    var readableDescriptor: Int32? { descriptor >= 0 ? descriptor : nil }

    var hasBufferedFrame: Bool {
        guard end - start >= 4 else { return false }
        return end - start >= 4 + frameLength(at: start)
    }

    func close() {
        guard descriptor >= 0 else { return }
        Glibc.close(descriptor)
        descriptor = -1
    }

    private func frameLength(at index: Int) -> Int {
        Int(inbox[index]) << 24 | Int(inbox[index + 1]) << 16 | Int(inbox[index + 2]) << 8 | Int(inbox[index + 3])
    }

    private func failure(_ operation: String, _ reason: String) -> NetworkBackendError {
        NetworkBackendError(operation: "\(operation) \(peerName)", reason: reason)
    }

    public func send(_ segments: [UnsafeRawBufferPointer]) throws(NetworkBackendError) {
        guard descriptor >= 0 else { throw failure("send to", "the stream is closed") }
        let length = segments.reduce(0) { $0 + $1.count }
        guard length <= Self.maximumFrame else { throw failure("send to", "a \(length)-byte frame is too long") }
        prefix.storeBytes(of: UInt32(length).bigEndian, as: UInt32.self)
        var remaining = 4 + length
        do {
            vectors.removeAll(keepingCapacity: true)
            vectors.append(iovec(iov_base: prefix, iov_len: 4))
            for segment in segments where segment.count > 0 {
                vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: segment.baseAddress), iov_len: segment.count))
            }
            var first = 0
            while remaining > 0 {
                var message = msghdr()
                let sent = vectors.withUnsafeMutableBufferPointer { vectorBuffer -> Int in
                    message.msg_iov = vectorBuffer.baseAddress! + first
                    message.msg_iovlen = vectorBuffer.count - first
                    return sendmsg(descriptor, &message, Int32(MSG_NOSIGNAL))
                }
                if sent < 0 {
                    let error = errno
                    if error == EINTR { continue }
                    if error == EAGAIN {
                        var waiting = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                        if poll(&waiting, 1, Self.sendTimeoutMilliseconds) > 0 { continue }
                    }
                    // A frame cut short leaves the stream out of step: it cannot be used again.
                    if remaining < 4 + length { close() }
                    throw failure("send to", error == EAGAIN ? "no room for \(Self.sendTimeoutMilliseconds) ms" : String(cString: strerror(error)))
                }
                remaining -= sent
                // Step over the vectors sent whole, and into the one sent in part.
                var left = sent
                while left > 0, first < vectors.count {
                    if left >= vectors[first].iov_len {
                        left -= vectors[first].iov_len
                        first += 1
                    } else {
                        vectors[first].iov_base = vectors[first].iov_base! + left
                        vectors[first].iov_len -= left
                        left = 0
                    }
                }
            }
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(NetworkBackendError) -> Int? {
        while true {
            if end - start >= 4 {
                let length = frameLength(at: start)
                guard length <= Self.maximumFrame else {
                    close()
                    throw failure("receive from", "the peer announced a \(length)-byte frame (the stream is out of step)")
                }
                if end - start >= 4 + length {
                    let count = min(length, buffer.count)
                    inbox.withUnsafeBytes { bytes in
                        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[(start + 4)..<(start + 4 + count)]))
                    }
                    start += 4 + length
                    if start == end { (start, end) = (0, 0) }
                    return count
                }
            }
            guard descriptor >= 0 else { return nil }
            // Room for the rest of this frame: move what is buffered to the front.
            if start > 0 {
                inbox.withUnsafeMutableBytes { bytes in
                    let base = bytes.baseAddress!
                    memmove(base, base + start, end - start)
                }
                end -= start
                start = 0
            }
            let count = inbox.withUnsafeMutableBytes { bytes in
                recv(descriptor, bytes.baseAddress! + end, bytes.count - end, Int32(MSG_DONTWAIT))
            }
            if count > 0 {
                end += count
                continue
            }
            if count == 0 {
                close()
                throw failure("receive from", "the peer closed the stream")
            }
            switch errno {
            case EINTR: continue
            case EAGAIN: return nil
            default:
                let reason = String(cString: strerror(errno))
                close()
                throw failure("receive from", reason)
            }
        }
    }
}
