import Glibc
import Synchronization

/// Why a disk cannot be opened, or an I/O on it failed. The description is one line for the user.
public enum BlockStorageError: Error, Equatable, CustomStringConvertible, Sendable {
    case cannotOpen(path: String, problem: String)
    case io(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let problem): "disk \(path): \(problem)"
        case .io(let operation, let errno): "disk \(operation) failed: \(String(cString: strerror(errno)))"
        }
    }
}

/// What a block device stores its sectors in. The virtio-blk device sees only this; tests use
/// `MemoryBlockStorage`, the VMM uses `FileBlockStorage`.
///
/// Offsets and lengths arrive already checked against `size` by the device.
public protocol BlockStorage: AnyObject, Sendable {
    /// Bytes the guest may address.
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Fills the buffers, in order, from `offset`.
    func read(into buffers: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockStorageError)
    /// Writes the buffers, in order, at `offset`.
    func write(from buffers: [UnsafeRawBufferPointer], at offset: UInt64) throws(BlockStorageError)
    /// Makes every completed write durable (fdatasync for a file).
    func flush() throws(BlockStorageError)
}

/// A disk image on the host: a regular file, read and written in place with `preadv`/`pwritev`
/// through the page cache (QEMU's default `cache=writeback`). A guest FLUSH becomes `fdatasync`,
/// and `close()` syncs once more, so a clean stop loses nothing the guest wrote.
public final class FileBlockStorage: BlockStorage, @unchecked Sendable {
    // @unchecked: `descriptor` is written only by init and close(); every other member is immutable.
    public let path: String
    public let size: UInt64
    public let isReadOnly: Bool
    private let descriptor: Mutex<Int32>

    /// Opens `path`: a missing file, a directory, a device node or a file this user may not open
    /// (read-write unless `readOnly`) is an error that names the file and what to do.
    public init(path: String, readOnly: Bool) throws(BlockStorageError) {
        self.path = path
        isReadOnly = readOnly
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw .cannotOpen(path: path, problem: "\(String(cString: strerror(errno))) (give the path of a disk image file)")
        }
        switch status.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw .cannotOpen(path: path, problem: "is a directory, not a disk image file")
        default: throw .cannotOpen(path: path, problem: "is not a regular file (disk images must be files)")
        }
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else {
            let error = errno
            let hint =
                error == EACCES || error == EROFS
                ? (readOnly ? " (check the file's permissions)" : " (check the file's permissions, or add ,readonly)") : ""
            throw .cannotOpen(path: path, problem: "\(String(cString: strerror(error)))\(hint)")
        }
        // Only whole 512-byte sectors are addressable; a partial tail sector is left alone.
        size = UInt64(status.st_size) / 512 * 512
        descriptor = Mutex(fd)
    }

    deinit { close() }

    /// Syncs and closes the file. Later I/O fails with EBADF; calling it twice does nothing.
    public func close() {
        descriptor.withLock { fd in
            guard fd >= 0 else { return }
            if !isReadOnly { fsync(fd) }
            Glibc.close(fd)
            fd = -1
        }
    }

    private var fd: Int32 { descriptor.withLock { $0 } }

    public func read(into buffers: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        var vectors = buffers.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        try transfer(&vectors, at: offset, "read") { fd, vectors, count, offset in preadv(fd, vectors, count, offset) }
    }

    public func write(from buffers: [UnsafeRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        guard !isReadOnly else { throw .io(operation: "write", errno: EROFS) }
        var vectors = buffers.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        try transfer(&vectors, at: offset, "write") { fd, vectors, count, offset in pwritev(fd, vectors, count, offset) }
    }

    public func flush() throws(BlockStorageError) {
        guard !isReadOnly else { return }
        guard fdatasync(fd) == 0 else { throw .io(operation: "flush", errno: errno) }
    }

    /// Repeats a vectored transfer until every byte moved: partial transfers resume where they
    /// stopped, EINTR retries, end of file is EIO.
    private func transfer(
        _ vectors: inout [iovec], at offset: UInt64, _ operation: String,
        _ call: (Int32, UnsafePointer<iovec>, Int32, Int) -> Int
    ) throws(BlockStorageError) {
        let fd = self.fd
        var first = 0
        var position = offset
        while first < vectors.count {
            if vectors[first].iov_len == 0 {
                first += 1
                continue
            }
            let count = min(vectors.count - first, 1024)  // IOV_MAX on Linux
            let done = vectors.withUnsafeBufferPointer { call(fd, $0.baseAddress! + first, Int32(count), Int(position)) }
            if done < 0 {
                if errno == EINTR { continue }
                throw .io(operation: operation, errno: errno)
            }
            guard done > 0 else { throw .io(operation: operation, errno: EIO) }
            position += UInt64(done)
            var left = done
            while left > 0, first < vectors.count {
                let length = vectors[first].iov_len
                if left >= length {
                    left -= length
                    first += 1
                } else {
                    vectors[first].iov_base += left
                    vectors[first].iov_len -= left
                    left = 0
                }
            }
        }
    }
}

/// Sectors in host memory, for tests and examples.
public final class MemoryBlockStorage: BlockStorage, @unchecked Sendable {
    // @unchecked: `bytes` is behind `lock`.
    private let lock = Mutex(())
    private var bytes: [UInt8]
    public let isReadOnly: Bool
    public private(set) var flushCount = 0

    public init(bytes: [UInt8], readOnly: Bool = false) {
        self.bytes = bytes
        isReadOnly = readOnly
    }

    public var size: UInt64 { UInt64(lock.withLock { _ in bytes.count }) }
    public var contents: [UInt8] { lock.withLock { _ in bytes } }

    public func read(into buffers: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        lock.withLock { _ in
            var position = Int(offset)
            for buffer in buffers {
                bytes.withUnsafeBytes { source in buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[position..<position + buffer.count])) }
                position += buffer.count
            }
        }
    }

    public func write(from buffers: [UnsafeRawBufferPointer], at offset: UInt64) throws(BlockStorageError) {
        guard !isReadOnly else { throw .io(operation: "write", errno: EROFS) }
        lock.withLock { _ in
            var position = Int(offset)
            for buffer in buffers {
                bytes.replaceSubrange(position..<position + buffer.count, with: buffer)
                position += buffer.count
            }
        }
    }

    public func flush() throws(BlockStorageError) {
        lock.withLock { _ in flushCount += 1 }
    }
}
