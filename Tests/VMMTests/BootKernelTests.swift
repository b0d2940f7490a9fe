import Foundation
import Glibc
import KernelDecompression
import LinuxBoot
import Testing
import VMMCore

@testable import VMM

/// The configuration error `body` throws, or nil.
private func configurationError(_ body: () throws -> Void) -> String? {
    do {
        try body()
        return nil
    } catch VMMError.configuration(let message) {
        return message
    } catch {
        Issue.record("expected a configuration error, got \(error)")
        return nil
    }
}

/// A minimal x86-64 ELF executable with one PT_LOAD segment at 16 MiB and, if `pvh`, a Xen
/// PHYS32_ENTRY note (offsets from the ELF-64 specification).
private func elfKernel(pvh: UInt32?) -> [UInt8] {
    func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
    let note: [UInt8] = pvh.map { le(UInt32(4)) + le(UInt32(4)) + le(UInt32(18)) + Array("Xen\0".utf8) + le($0) } ?? []
    let headers = note.isEmpty ? 1 : 2
    let dataOffset = UInt64(64 + headers * 56)
    let code: [UInt8] = [0xF4, 0xEB, 0xFD] + [UInt8](repeating: 0x90, count: 13)
    var bytes: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
    bytes += le(UInt16(2)) + le(UInt16(62)) + le(UInt32(1)) + le(UInt64(0x100_0000)) + le(UInt64(64)) + le(UInt64(0))
    bytes += le(UInt32(0)) + le(UInt16(64)) + le(UInt16(56)) + le(UInt16(headers)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
    bytes += le(UInt32(1)) + le(UInt32(5)) + le(dataOffset) + le(UInt64(0xFFFF_FFFF_8100_0000)) + le(UInt64(0x100_0000))
        + le(UInt64(code.count)) + le(UInt64(0x1_0000)) + le(UInt64(0x1000))
    if !note.isEmpty {
        bytes += le(UInt32(4)) + le(UInt32(4)) + le(dataOffset + UInt64(code.count)) + le(UInt64(0)) + le(UInt64(0))
            + le(UInt64(note.count)) + le(UInt64(0)) + le(UInt64(4))
    }
    return bytes + code + note
}

/// A bzImage (protocol 2.15) whose payload is `payload`.
private func bzImage(payload: [UInt8]) -> [UInt8] {
    let setup = 5 * 512
    let code = (payload.count + 15) / 16 * 16
    var bytes = [UInt8](repeating: 0, count: setup + code)
    func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
        for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
    put(UInt8(4), 0x1F1)
    put(UInt32(code / 16), 0x1F4)
    put(UInt16(0xAA55), 0x1FE)
    put(UInt8(0x6A), 0x201)
    put(UInt32(0x5372_6448), 0x202)
    put(UInt16(0x020F), 0x206)
    put(UInt8(0x01), 0x211)
    put(UInt32(0x7FFF_FFFF), 0x22C)
    put(UInt32(0x20_0000), 0x230)
    put(UInt16(0x0003), 0x236)
    put(UInt32(2047), 0x238)
    put(UInt32(payload.count), 0x24C)
    put(UInt64(0x100_0000), 0x258)
    put(UInt32(0x40_0000), 0x260)
    bytes.replaceSubrange(setup..<setup + payload.count, with: payload)
    return bytes
}

/// gzip of `bytes`, by the gzip tool.
private func gzip(_ bytes: [UInt8]) throws -> [UInt8] {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("swiftkvm-bootkernel-\(UUID().uuidString)").path
    defer { unlink(path) }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["gzip", "-9", "-c", path]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return [UInt8](output)
}

@Suite struct BootKernelTests {
    @Test func aVmlinuxBootsDirectOrThroughPVHButNotThroughTheBzImageEntries() throws {
        let direct = try BootKernel(bytes: elfKernel(pvh: 0x100_0008), name: "vmlinux", entry: .direct, cache: nil)
        #expect(direct.entry == .direct && direct.note == nil && direct.decompressedFromCache == nil)
        #expect(direct.commandLineSize == 2047)
        let memory = try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: 64 << 20))
        let info = try direct.load(initrd: nil, commandLine: KernelCommandLine(maximumLength: 2047), memory: memory, reserved: [])
        #expect(direct.entryAddress(info) == 0x100_0000)
        #expect(try memory.load(UInt8.self, at: 0x100_0000) == 0xF4)

        let pvh = try BootKernel(bytes: elfKernel(pvh: 0x100_0008), name: "vmlinux", entry: .pvh, cache: nil)
        let pvhInfo = try pvh.load(initrd: [1, 2, 3], commandLine: KernelCommandLine(maximumLength: 2047), memory: memory, reserved: [])
        #expect(pvh.entryAddress(pvhInfo) == 0x100_0008)
        #expect(try memory.load(UInt32.self, at: PVHStartInfo.address) == PVHStartInfo.magic)
        #expect(try memory.load(UInt64.self, at: GuestAddress(PVHStartInfo.address.rawValue + 0x18)) == 0x2_0000)

        #expect(configurationError { _ = try BootKernel(bytes: elfKernel(pvh: nil), name: "vmlinux", entry: .pvh, cache: nil) }
            == "vmlinux has no PVH entry (no XEN_ELFNOTE_PHYS32_ENTRY note: the kernel was built without CONFIG_PVH): use the direct entry")
        #expect(configurationError { _ = try BootKernel(bytes: elfKernel(pvh: nil), name: "vmlinux", entry: .bits64, cache: nil) }
            == "vmlinux is an ELF vmlinux, which has no 64-bit bzImage entry: boot it through the direct or the pvh entry")
    }

    @Test func aBzImageIsDecompressedInTheHostAndItsHeaderKept() throws {
        let image = bzImage(payload: try gzip(elfKernel(pvh: 0x100_0004)))
        let kernel = try BootKernel(bytes: image, name: "bzImage", entry: .direct, cache: nil)
        #expect(kernel.entry == .direct && kernel.note == nil && kernel.decompressedFromCache == false)
        let memory = try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: 64 << 20))
        let info = try kernel.load(initrd: nil, commandLine: KernelCommandLine(maximumLength: 2047), memory: memory, reserved: [])
        #expect(kernel.entryAddress(info) == 0x100_0000)
        #expect(try memory.load(UInt32.self, at: 0x7260) == 0x40_0000)  // init_size, from the bzImage's header
        // The old entries keep the in-guest decompressor.
        let old = try BootKernel(bytes: image, name: "bzImage", entry: .bits64, cache: nil)
        #expect(old.entry == .bits64 && old.decompressedFromCache == nil)
    }

    @Test func aPayloadThisBuildCannotReadFallsBackWithANote() throws {
        // Every format KernelCompression names decodes (lzo too), so: a payload with no known magic.
        let image = bzImage(payload: [0xAB, 0xCD, 0xEF, 0x01] + [UInt8](repeating: 0, count: 64))
        let kernel = try BootKernel(bytes: image, name: "bzImage", entry: .direct, cache: nil)
        #expect(kernel.entry == .bits64)
        #expect(kernel.note == "bzImage: its payload's format is not recognised; booting it through its own (in-guest) decompressor instead")
        #expect(configurationError { _ = try BootKernel(bytes: image, name: "bzImage", entry: .pvh, cache: nil) } != nil)
    }

    @Test func aHostilePayloadIsRefusedInOneLine() throws {
        // A gzip bomb: 64 MiB of zeros against a 4 MiB init_size.
        let bomb = bzImage(payload: try gzip([UInt8](repeating: 0, count: 64 << 20)))
        #expect(configurationError { _ = try BootKernel(bytes: bomb, name: "bzImage", entry: .direct, cache: nil) }
            == "bzImage's gzip payload decompresses to more than its 4194304-byte limit (init_size): the image is corrupt or hostile; copy or rebuild it")
        // A truncated payload: the stream is cut, the header claims what is there.
        let whole = try gzip(elfKernel(pvh: nil) + [UInt8](repeating: 7, count: 100_000))
        let cut = bzImage(payload: Array(whole.prefix(whole.count / 2)))
        #expect(configurationError { _ = try BootKernel(bytes: cut, name: "bzImage", entry: .direct, cache: nil) }
            == "bzImage's gzip payload ends before its compressed stream does: the image is truncated; copy or rebuild it")
        // A payload that is not an ELF kernel.
        let notELF = bzImage(payload: try gzip([UInt8](repeating: 1, count: 1000)))
        #expect(configurationError { _ = try BootKernel(bytes: notELF, name: "bzImage", entry: .direct, cache: nil) }?
            .hasPrefix("bzImage's decompressed kernel is not an ELF file") == true)
    }
}

@Suite struct ResidentMemoryTests {
    @Test func countsGuestMappingsApart() {
        let smaps = """
            00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/swiftkvm
            Size:                328 kB
            Rss:                 300 kB
            Anonymous:             0 kB
            7f0000000000-7f0010000000 rw-p 00000000 00:00 0
            Size:             262144 kB
            Rss:               20480 kB
            Pss:               20480 kB
            Anonymous:         20480 kB
            7f1000000000-7f1000100000 rw-p 00000000 00:00 0      [heap]
            Rss:                1024 kB
            Anonymous:          1000 kB
            """
        let status = "Name:\tswiftkvm\nVmHWM:\t   30000 kB\nVmRSS:\t 21804 kB\n"
        let memory = ResidentMemory.parse(smaps: smaps, status: status, guestRanges: [0x7F00_0000_0000..<0x7F00_1000_0000])
        #expect(memory.total == (300 + 20480 + 1024) * 1024)
        #expect(memory.guest == 20480 * 1024)
        #expect(memory.overhead == 1324 * 1024)
        #expect(memory.anonymousOverhead == 1000 * 1024, "guest RAM's anonymous pages are not the VMM's")
        #expect(memory.peakTotal == 30000 * 1024)
    }

    @Test func measuresThisProcess() throws {
        let memory = try GuestMemory(size: 4 << 20)
        try memory.fill(1, count: 2 << 20, at: 0)  // 2 MiB of guest RAM made resident
        let measured = try #require(ResidentMemory.measure(guestMemory: memory))
        #expect(measured.guest >= 2 << 20 && measured.guest <= 4 << 20)
        #expect(measured.total > measured.guest)
        #expect(measured.peakTotal.map { $0 >= measured.guest } == true)
    }
}

@Suite struct DirectEntryLayoutTests {
    @Test func theDirectEntryIsLongModeAndPVHIsProtectedModeWithEBX() throws {
        let memory = try GuestMemory(size: 16 << 20)
        try LinuxEntryLayout(entry: .direct).install(in: memory)
        #expect(try memory.load(UInt64.self, at: GuestAddress(LinuxEntryLayout.gdtAddress + 0x10)) == 0x00AF_9B00_0000_FFFF)
        let (registers, special) = LinuxEntryLayout(entry: .direct).cpuState(entry: 0x100_0000, zeroPage: 0x7000, from: SpecialRegisters())
        #expect(registers.rip == 0x100_0000 && registers.rsi == 0x7000)
        #expect(special.cs.longMode && special.efer == 0x500 && special.cr0 & 0x8000_0001 == 0x8000_0001)
        #expect(special.cr3 == LinuxEntryLayout.pageTablesAddress)

        try LinuxEntryLayout(entry: .pvh).install(in: memory)
        #expect(try memory.load(UInt64.self, at: GuestAddress(LinuxEntryLayout.gdtAddress + 0x10)) == 0x00CF_9B00_0000_FFFF)
        let (pvhRegisters, pvhSpecial) = LinuxEntryLayout(entry: .pvh).cpuState(entry: 0x100_1240, zeroPage: 0x7000, from: SpecialRegisters())
        #expect(pvhRegisters.rip == 0x100_1240 && pvhRegisters.rbx == PVHStartInfo.address.rawValue)
        #expect(pvhRegisters.rflags & 0x200 == 0)
        #expect(!pvhSpecial.cs.longMode && pvhSpecial.cs.defaultSize32 && pvhSpecial.cs.selector == 0x10)
        #expect(pvhSpecial.cr0 & 0x8000_0001 == 0x1 && pvhSpecial.efer == 0)
    }
}
