import LinuxBoot
import Testing
import VMMCore

/// A synthetic bzImage: a boot sector and setup header with every field the loader reads, setup
/// sectors, and a patterned protected-mode "kernel". Each property is one header field, so a test
/// changes exactly the field it is about. Offsets are written as literals from boot.rst, not taken
/// from `BootParams.Offset`, so a wrong constant in the library shows up as a failing test.
struct FakeKernel {
    var setupSects: UInt8 = 4
    var rootFlags: UInt16 = 1
    var syssize: UInt32 = 0x1000  // 64 KiB of protected-mode code
    var vidMode: UInt16 = 0xFFFD
    var rootDev: UInt16 = 0x0301
    var bootFlag: UInt16 = 0xAA55
    var jumpOffset: UInt8 = 0x6A  // header ends at 0x26C, as in Linux 6.x
    var magic: [UInt8] = Array("HdrS".utf8)
    var version: UInt16 = 0x020F
    var loadflags: UInt8 = 0x01
    var code32Start: UInt32 = 0x10_0000
    var initrdAddrMax: UInt32 = 0x7FFF_FFFF
    var kernelAlignment: UInt32 = 0x20_0000
    var relocatable: UInt8 = 1
    var minAlignment: UInt8 = 21
    var xloadflags: UInt16 = 0x0003  // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    var cmdlineSize: UInt32 = 2047
    var hardwareSubarch: UInt32 = 0
    var payloadOffset: UInt32 = 0x2CC
    var payloadLength: UInt32 = 0xABCD
    var prefAddress: UInt64 = 0x100_0000  // 16 MiB
    var initSize: UInt32 = 0x80_0000  // 8 MiB
    var handoverOffset: UInt32 = 0x190
    var kernelInfoOffset: UInt32 = 0x1234
    var versionString = "6.1.0-fake (tests@swiftkvm) #1 SMP"
    /// Bytes after the protected-mode code (a signature, say).
    var trailingBytes = 0

    static let sector = 512
    var effectiveSetupSects: Int { setupSects == 0 ? 4 : Int(setupSects) }
    var setupSize: Int { (effectiveSetupSects + 1) * Self.sector }
    var payloadSize: Int { Int(syssize) * 16 }

    /// The protected-mode code: position-dependent bytes, so a copy from the wrong offset shows.
    var payload: [UInt8] { patterned(count: payloadSize, seed: 7) }

    var bytes: [UInt8] {
        var image = [UInt8](repeating: 0, count: setupSize + payloadSize + trailingBytes)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            for index in 0..<MemoryLayout<T>.size { image[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        put(setupSects, 0x1F1)
        put(rootFlags, 0x1F2)
        put(syssize, 0x1F4)
        put(vidMode, 0x1FA)
        put(rootDev, 0x1FC)
        put(bootFlag, 0x1FE)
        put(UInt8(0xEB), 0x200)
        put(jumpOffset, 0x201)
        image.replaceSubrange(0x202..<0x202 + magic.count, with: magic)
        put(version, 0x206)
        put(UInt16(0x200), 0x20E)  // kernel_version: the string at 0x200 + 0x200
        put(loadflags, 0x211)
        put(UInt16(0x8000), 0x212)  // setup_move_size
        put(code32Start, 0x214)
        put(initrdAddrMax, 0x22C)
        put(kernelAlignment, 0x230)
        put(relocatable, 0x234)
        put(minAlignment, 0x235)
        put(xloadflags, 0x236)
        put(cmdlineSize, 0x238)
        put(hardwareSubarch, 0x23C)
        put(payloadOffset, 0x248)
        put(payloadLength, 0x24C)
        put(prefAddress, 0x258)
        put(initSize, 0x260)
        put(handoverOffset, 0x264)
        put(kernelInfoOffset, 0x268)
        // Setup code after the header: must not reach the zero page.
        for offset in 0x26C..<0x290 { image[offset] = 0xCC }
        let text = Array(versionString.utf8)
        if 0x400 + text.count < setupSize { image.replaceSubrange(0x400..<0x400 + text.count, with: text) }
        image.replaceSubrange(setupSize..<setupSize + payloadSize, with: payload)
        for offset in (setupSize + payloadSize)..<image.count { image[offset] = 0x5A }
        return image
    }

    func parse(name: String = "bzImage") throws(LinuxBootError) -> BzImage {
        try BzImage(bytes: bytes, name: name)
    }
}

/// The `LinuxBootError` that `body` throws, or nil if it throws nothing. Any other error is a test
/// failure.
func linuxBootError(_ body: () throws -> Void) -> LinuxBootError? {
    do {
        try body()
        return nil
    } catch let error as LinuxBootError {
        return error
    } catch {
        Issue.record("expected a LinuxBootError, got \(error)")
        return nil
    }
}

/// `count` bytes that differ with position: a filler, with every 251st byte (a prime, so the marks
/// fall at different offsets in each page) and the last byte set from its index. Cheap enough for
/// tens of MiB in a debug build.
func patterned(count: Int, seed: UInt8) -> [UInt8] {
    var bytes = [UInt8](repeating: seed, count: count)
    for index in stride(from: 0, to: count, by: 251) { bytes[index] = UInt8(truncatingIfNeeded: index / 251 &+ Int(seed)) }
    if count > 0 { bytes[count - 1] = seed &+ 0x80 }
    return bytes
}

let KiB = 1 << 10
let MiB = 1 << 20
let GiB = 1 << 30
