import Glibc
import Testing
import VMM

/// Disk images for a Linux boot, in temporary files: `vda` (random bytes, read-write) and `vdb`
/// (random bytes, attached read-only). The checks run from the guest's shell, and on the host
/// files after the VMM has exited.
struct LinuxDiskChecks {
    static let sectors = 8192  // 4 MiB
    let directory: String
    let writable: String
    let readOnly: String
    let writableBytes: [UInt8]
    let readOnlyBytes: [UInt8]

    init() throws {
        var template = Array("/tmp/swiftkvm-disks-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw VMMError.system(call: "mkdtemp", errno: errno)
        }
        directory = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        writable = "\(directory)/vda.img"
        readOnly = "\(directory)/vdb.img"
        writableBytes = HostFiles.randomBytes(Self.sectors * 512, seed: 11)
        readOnlyBytes = HostFiles.randomBytes(Self.sectors * 512, seed: 12)
        try HostFiles.write(writableBytes, to: writable)
        try HostFiles.write(readOnlyBytes, to: readOnly)
    }

    var configurations: [DiskConfiguration] {
        [DiskConfiguration(path: writable), DiskConfiguration(path: readOnly, readOnly: true)]
    }

    func remove() {
        unlink(writable)
        unlink(readOnly)
        rmdir(directory)
    }

    /// From the shell: the driver found both disks with the right sizes, `md5sum` of each matches
    /// the host's, a `dd` copy from vdb into vda at 64 KiB with `conv=fsync` (a FLUSH) is written, and a
    /// write to the read-only vdb fails.
    func checkInGuest(_ session: LinuxSession) throws {
        let output = session.output
        #expect(output.contains("virtio-mmio: Registering device virtio-mmio.0 at 0xd0000000-0xd0000fff, IRQ 5."))
        #expect(output.contains("virtio-mmio: Registering device virtio-mmio.1 at 0xd0001000-0xd0001fff, IRQ 6."))
        #expect(output.contains("[vda] \(Self.sectors) 512-byte logical blocks"), "the kernel's virtio_blk found vda")

        session.send("cat /sys/block/vda/size /sys/block/vdb/size /sys/block/vdb/ro; echo SIZES-$((1 + 1))")
        let sizes = try session.waitFor("SIZES-2", timeout: .seconds(300))
        #expect(sizes.contains("\(Self.sectors)\r\n\(Self.sectors)\r\n1\r\n"), "sizes and vdb read-only: \(sizes)")

        session.send("md5sum /dev/vda /dev/vdb; echo MD5-$((2 + 2))")
        let sums = try session.waitFor("MD5-4", timeout: .seconds(300))
        #expect(sums.contains("\(HostFiles.md5(writableBytes))  /dev/vda"), "\(sums)")
        #expect(sums.contains("\(HostFiles.md5(readOnlyBytes))  /dev/vdb"), "\(sums)")

        session.send("dd if=/dev/vdb of=/dev/vda bs=4096 count=16 seek=16 conv=fsync && echo COPIED-$((3 + 3))")
        let copied = try session.waitFor("COPIED-6", timeout: .seconds(300))
        #expect(copied.contains("16+0 records out"), "\(copied)")

        session.send("dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync; echo READONLY-WRITE-$((4 + 4))-$?")
        let refused = try session.waitFor("READONLY-WRITE-8-", timeout: .seconds(300))
        try session.waitFor("# ", timeout: .seconds(60))
        #expect(!session.output.contains("READONLY-WRITE-8-0"), "dd to the read-only disk must fail: \(refused)")
    }

    /// After the VMM exited: vda holds exactly its old bytes with vdb's first 64 KiB at 64 KiB,
    /// vdb is byte-identical, and the guest's fsync reached the device as a FLUSH.
    func checkOnHost(_ guest: LinuxGuest) throws {
        var expected = writableBytes
        expected.replaceSubrange(65536..<131072, with: readOnlyBytes[0..<65536])
        let vda = try readHostFile(writable)
        #expect(vda.count == expected.count)
        #expect(vda == expected, "vda differs from what the guest wrote at byte \(vda.indices.first { $0 < expected.count && vda[$0] != expected[$0] } ?? -1)")
        #expect(try readHostFile(readOnly) == readOnlyBytes, "the read-only disk is unchanged")
        let statistics = guest.disks[0].device.statistics
        #expect(statistics.writes >= 1 && statistics.bytesWritten >= 65536, "\(statistics)")
        #expect(statistics.flushes >= 1, "fsync reached the disk as a FLUSH: \(statistics)")
        #expect(guest.disks[1].device.statistics.bytesWritten == 0)
    }
}

/// Host-side helpers for the disk tests.
enum HostFiles {
    static func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed
        var bytes = [UInt8](repeating: 0, count: count)
        for index in bytes.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            bytes[index] = UInt8(truncatingIfNeeded: state >> 56)
        }
        return bytes
    }

    static func write(_ bytes: [UInt8], to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw VMMError.file(path: path, problem: String(cString: strerror(errno))) }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw VMMError.file(path: path, problem: "short write") }
    }

    /// Copies `source` to a new temporary file and returns its path.
    static func temporaryCopy(of source: String, name: String) throws -> String {
        let path = "/tmp/swiftkvm-\(getpid())-\(name)"
        try write(try readHostFile(source), to: path)
        return path
    }

    /// The MD5 of `bytes` as `md5sum` prints it, from the host's md5sum.
    static func md5(_ bytes: [UInt8]) -> String {
        let path = "/tmp/swiftkvm-md5-\(getpid())-\(bytes.count)"
        defer { unlink(path) }
        guard (try? write(bytes, to: path)) != nil else { return "?" }
        return String(run("md5sum", path).output.prefix(32))
    }

    /// Runs a host command and returns its exit status and standard output.
    @discardableResult
    static func run(_ arguments: String...) -> (status: Int32, output: String) {
        let command = arguments.map { "'\($0)'" }.joined(separator: " ")
        guard let pipe = popen("\(command) 2>&1", "r") else { return (-1, "") }
        var output = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), pipe) != nil {
            output += buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        }
        let status = pclose(pipe)
        return ((status >> 8) & 0xFF, output)
    }
}
