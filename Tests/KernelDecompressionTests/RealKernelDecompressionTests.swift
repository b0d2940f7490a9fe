import Foundation
import KernelDecompression
import LinuxBoot
import Testing

/// The guest cache `make guest` fills (CI builds it before the tests).
let guestCache = ProcessInfo.processInfo.environment["SWIFTKVM_CACHE"] ?? "/var/cache/swiftkvm"
let isCI = ProcessInfo.processInfo.environment["CI"].map { !$0.isEmpty && $0 != "0" && $0 != "false" } ?? false
func cached(_ path: String) -> String? {
    let full = "\(guestCache)/\(path)"
    return FileManager.default.isReadableFile(atPath: full) ? full : nil
}

/// `scripts/extract-vmlinux` from Debian's linux-source-6.1 tarball, taken out of it once per
/// test run (it is not part of this repository), or nil if the tarball is not installed.
let extractVmlinux: String? = {
    let tarball = "/usr/src/linux-source-6.1.tar.xz"
    guard FileManager.default.isReadableFile(atPath: tarball) else { return nil }
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-extract-vmlinux-\(UUID().uuidString)").path
    guard let script = try? runTool(["tar", "-xJf", tarball, "--wildcards", "*/scripts/extract-vmlinux", "-O"]), !script.isEmpty,
        FileManager.default.createFile(atPath: path, contents: Data(script), attributes: [.posixPermissions: 0o755])
    else { return nil }
    return path
}()

/// What the kernel's own tooling makes of `bzImage`: `extract-vmlinux` where the source tarball
/// is installed; otherwise the same command it would run (the format's CLI decoder from the
/// payload's offset: `tail -c+$pos | unxz` and so on).
func referenceVmlinux(bzImage path: String, payload: KernelPayload) throws -> [UInt8] {
    if let extractVmlinux { return try runTool([extractVmlinux, path]) }
    let decoder: [String] =
        switch payload.compression {
        case .lz4: ["lz4", "-dc"]
        case .xz: ["xz", "-dc"]
        case .gzip: ["gzip", "-dc"]
        case .zstd: ["zstd", "-dc"]
        case .bzip2: ["bzip2", "-dc"]
        case .lzo: ["lzop", "-dc"]
        default: ["false"]
        }
    // xz and gzip complain about the size trailer after the stream but write everything first.
    return (try? runTool(decoder, input: Array(payload.bytes))) ?? []
}

@Suite(.serialized) struct RealKernelDecompressionTests {
    @Test(.enabled(if: cached("test-kernel/bzImage") != nil || isCI, "no test kernel in \(guestCache) (make test-guest)"))
    func theTestKernelDecompressesToItsVmlinux() throws {
        let path = try #require(cached("test-kernel/bzImage"))
        let kernel = try BzImage(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: path))), name: path)
        let payload = try KernelPayload(of: kernel)
        #expect(payload.compression == .lz4)
        let output = try KernelDecompressor.decompress(payload, name: path)
        #expect(output.starts(with: [0x7F, 0x45, 0x4C, 0x46, 2, 1]))  // ELF64, little-endian
        #expect(output.count <= Int(kernel.initSize))
        #expect(output == (try referenceVmlinux(bzImage: path, payload: payload)))
        // The payload is vmlinux.bin: the kernel's vmlinux as `objcopy -R .comment -S` leaves it
        // (arch/x86/boot/compressed/Makefile, OBJCOPYFLAGS_vmlinux.bin); the test kernel is not
        // relocatable, so no relocation table follows.
        if let vmlinux = cached("test-kernel/vmlinux") {
            let stripped = try runTool(["sh", "-c", "t=$(mktemp); objcopy -R .comment -S \"$0\" \"$t\" && cat \"$t\"; rm -f \"$t\"", vmlinux])
            #expect(output == stripped)
        }
    }

    @Test(.enabled(if: cached("stock-kernel/bzImage") != nil || isCI, "no stock kernel in \(guestCache) (make guest)"))
    func theStockKernelDecompressesAsExtractVmlinuxDoes() throws {
        let path = try #require(cached("stock-kernel/bzImage"))
        let kernel = try BzImage(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: path))), name: path)
        let payload = try KernelPayload(of: kernel)
        #expect(payload.compression == .xz)
        let output = try KernelDecompressor.decompress(payload, name: path)
        #expect(output.starts(with: [0x7F, 0x45, 0x4C, 0x46, 2, 1]))
        let reference = try referenceVmlinux(bzImage: path, payload: payload)
        // extract-vmlinux stops at the xz stream's end; the stock kernel is relocatable, so the
        // payload is vmlinux.bin followed by its relocations, and both tools give all of it.
        #expect(output.count == reference.count)
        #expect(output == reference)
    }

    /// No cached kernel is lzo-compressed, and building one is not cheap: the test kernel's
    /// vmlinux.bin is compressed as the kernel's build does for CONFIG_KERNEL_LZO (scripts/Makefile.lib's
    /// cmd_lzo: `lzop -9` and the size trailer) and put in a bzImage header with its init_size.
    @Test(.enabled(if: cached("test-kernel/bzImage") != nil || isCI, "no test kernel in \(guestCache) (make test-guest)"))
    func theTestKernelRecompressedWithLzopDecompressesAsExtractVmlinuxDoes() throws {
        let path = try #require(cached("test-kernel/bzImage"))
        let kernel = try BzImage(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: path))), name: path)
        let vmlinux = try KernelDecompressor.decompress(try KernelPayload(of: kernel), name: path)
        let compressed = try runTool(["lzop", "-9", "-c"], input: vmlinux) + sizeTrailer(vmlinux.count)
        #expect(compressed.count > 1 << 20)  // many 256 KiB blocks
        let image = try bzImage(payload: compressed, initSize: kernel.initSize)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-lzo-bzImage-\(UUID().uuidString)").path
        #expect(FileManager.default.createFile(atPath: file, contents: Data(image.bytes)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let payload = try KernelPayload(of: image)
        #expect(payload.compression == .lzo)
        let output = try KernelDecompressor.decompress(payload, name: file)
        #expect(output == vmlinux)
        #expect(output == (try referenceVmlinux(bzImage: file, payload: payload)))
    }
}

@Suite struct RealKernelELFTests {
    /// Both cached kernels decompress to ELF kernels whose segments start at their link address
    /// (16 MiB, CONFIG_PHYSICAL_START) and which carry a PVH entry below 4 GiB.
    @Test(arguments: ["test-kernel/bzImage", "stock-kernel/bzImage"])
    func decompressedKernelsAreLoadableELF(path: String) throws {
        guard let file = cached(path) else {
            #expect(!isCI, "\(path) missing from \(guestCache) in CI")
            return
        }
        let kernel = try BzImage(bytes: [UInt8](Data(contentsOf: URL(fileURLWithPath: file))), name: file)
        let vmlinux = try KernelDecompressor.decompress(try KernelPayload(of: kernel), name: file)
        let elf = try ELFKernel(bytes: vmlinux, name: file)
        #expect(elf.entry == 0x100_0000)
        #expect(elf.memory.lowerBound == 0x100_0000)
        #expect(elf.memory.upperBound.rawValue - 0x100_0000 <= UInt64(kernel.initSize))
        let pvh = try #require(elf.pvhEntry)
        #expect(elf.memory.contains(pvh))
    }
}
