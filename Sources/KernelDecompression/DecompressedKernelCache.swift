import CCrypto
import CMalloc
import Glibc
import LinuxBoot

/// Decompressed kernels kept on disk, one file per bzImage, named by the SHA-256 of the whole
/// bzImage file: `<directory>/vmlinux/<64 hex digits>`. The second boot of the same file reads
/// the result instead of decompressing again.
///
/// A file is written to a temporary name in the same folder and renamed into place, so a reader
/// sees either no file or a whole one, even with several VMMs starting at once. Failing to write
/// the cache (a read-only folder, a full disk) is not an error: the boot goes on without it. What
/// is read back is parsed like any other kernel by its consumer, and must fit the bzImage's
/// `init_size`, so a damaged cache file cannot do more than a damaged kernel could.
public struct DecompressedKernelCache: Sendable {
    /// The folder holding `vmlinux/`.
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// The project's cache folder: `$SWIFTKVM_CACHE` if set; else /var/cache/swiftkvm for root;
    /// else `$XDG_CACHE_HOME/swiftkvm`, or `~/.cache/swiftkvm`.
    public static var defaultDirectory: String {
        func environment(_ name: String) -> String? {
            getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        }
        if let folder = environment("SWIFTKVM_CACHE") { return folder }
        if geteuid() == 0 { return "/var/cache/swiftkvm" }
        if let folder = environment("XDG_CACHE_HOME") { return folder + "/swiftkvm" }
        return (environment("HOME") ?? "/tmp") + "/.cache/swiftkvm"
    }

    /// The SHA-256 of `bytes`, as 64 lowercase hex digits.
    public static func sha256(_ bytes: [UInt8]) -> String {
        var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
        bytes.withUnsafeBufferPointer { input in
            _ = SHA256(input.baseAddress, input.count, &digest)
        }
        return digest.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Where the decompressed kernel of a bzImage with this content hash lives.
    public func path(forHash hash: String) -> String { "\(directory)/vmlinux/\(hash)" }

    /// `kernel`'s payload decompressed: from the cache if it holds it, otherwise decompressed now
    /// and stored. `fromCache` says which.
    public func decompressedKernel(
        of kernel: BzImage, payload: KernelPayload
    ) throws(KernelDecompressionError) -> (vmlinux: [UInt8], fromCache: Bool) {
        let file = path(forHash: Self.sha256(kernel.bytes))
        if let cached = Self.read(file, limit: payload.decompressedLimit), !cached.isEmpty {
            return (cached, true)
        }
        let output = try KernelDecompressor.decompress(payload, name: kernel.name)
        store(output, at: file)
        return (output, false)
    }

    /// The file's bytes if it is a regular file of at most `limit` bytes, else nil.
    static func read(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG, status.st_size > 0, status.st_size <= limit else {
            return nil
        }
        let size = Int(status.st_size)
        var complete = false
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            count = 0
            guard let base = buffer.baseAddress else { return }
            var done = 0
            while done < size {
                let result = Glibc.read(fd, base + done, size - done)
                if result < 0, errno == EINTR { continue }
                guard result > 0 else { break }
                done += result
            }
            complete = done == size
            count = complete ? size : 0
        }
        return complete ? bytes : nil
    }

    /// Writes `bytes` to `path` through a temporary file and a rename; any failure leaves no file.
    func store(_ bytes: [UInt8], at path: String) {
        let folder = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
        mkdir(directory, 0o755)
        mkdir(folder, 0o755)
        // Unique per process and per call: several VMMs (or tests) may store the same kernel at once.
        let temporary = "\(path).tmp-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        var done = 0
        let written = bytes.withUnsafeBytes { buffer -> Bool in
            guard let base = buffer.baseAddress else { return false }
            while done < buffer.count {
                let result = write(fd, base + done, buffer.count - done)
                if result < 0, errno == EINTR { continue }
                guard result > 0 else { return false }
                done += result
            }
            return true
        }
        let closed = close(fd) == 0
        if !written || !closed || rename(temporary, path) != 0 { unlink(temporary) }
    }
}

/// Returns memory the allocator keeps in its free lists to the system (glibc holds on to large
/// freed blocks once its mmap threshold has grown past them): after a kernel image and its
/// decompressed copy are freed, so the VMM's resident memory does not keep carrying them.
public func releaseFreedHeapMemory() { _ = malloc_trim(0) }
