import Foundation
import LinuxBoot
import Testing
import VMMCore

/// A real distribution kernel: the file named by SWIFTKVM_TEST_KERNEL, Debian's stock kernel that
/// `make test` puts in the guest cache, or /boot/vmlinuz-*. The synthetic images are the main
/// evidence; this checks that a kernel someone else built passes the same checks.
private let realKernelPath: String? = {
    if let path = ProcessInfo.processInfo.environment["SWIFTKVM_TEST_KERNEL"], FileManager.default.isReadableFile(atPath: path) {
        return path
    }
    let cache = ProcessInfo.processInfo.environment["SWIFTKVM_CACHE"] ?? "/var/cache/swiftkvm"
    if FileManager.default.isReadableFile(atPath: "\(cache)/stock-kernel/bzImage") {
        return "\(cache)/stock-kernel/bzImage"
    }
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
    return names.filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/" + $0 }
        .flatMap { FileManager.default.isReadableFile(atPath: $0) ? $0 : nil }
}()

/// In CI, `make test` builds the cache, so a missing kernel is a failure, not a skip.
private let isCI = ProcessInfo.processInfo.environment["CI"].map { !$0.isEmpty && $0 != "0" && $0 != "false" } ?? false

@Suite struct RealKernelTests {
    @Test(.enabled(if: realKernelPath != nil || isCI, "no stock kernel in the guest cache (make guest), no /boot/vmlinuz-*, and SWIFTKVM_TEST_KERNEL is not set"))
    func parsesAndLoadsAnInstalledKernel() throws {
        let path = try #require(realKernelPath)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let kernel = try BzImage(bytes: bytes, name: path)
        #expect(kernel.version >= .v2_12)
        #expect(kernel.hasSixtyFourBitEntry)
        #expect(kernel.isRelocatable)
        #expect(kernel.setupHeaderEnd <= 0x290)
        #expect(kernel.commandLineSize >= 255)
        #expect(kernel.kernelVersion != nil)
        #expect(bytes.count >= kernel.protectedModeOffset + kernel.protectedModeSize)

        let memory = try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: 512 * MiB))
        var line = KernelCommandLine(for: kernel)
        try line.append("console=ttyS0 panic=-1")
        let info = try LinuxLoader.load(kernel: kernel, initrd: [UInt8](repeating: 0x42, count: MiB), commandLine: line, memory: memory)
        #expect(info.entryPoint == 0x10_0200)
        #expect(try memory.load(UInt32.self, at: 0x7202) == 0x5372_6448)
        let initrd = try #require(info.initrd)
        #expect(initrd.address >= info.kernelMemory.upperBound)
        #expect(initrd.range.upperBound.rawValue <= UInt64(512 * MiB))
    }
}
