import VMMCore

/// A boot protocol version: major in the high byte, minor in the low (0x020F is 2.15).
public struct BootProtocolVersion: RawRepresentable, Comparable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(major: UInt8, minor: UInt8) { rawValue = UInt16(major) << 8 | UInt16(minor) }

    public var major: UInt8 { UInt8(truncatingIfNeeded: rawValue >> 8) }
    public var minor: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
    /// "2.15": the minor number in decimal, two digits, as boot.rst writes versions.
    public var description: String { "\(major)." + (minor < 10 ? "0\(minor)" : "\(minor)") }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// 2.06: `cmdline_size` (and the 2.05 relocation fields) exist.
    public static let minimumSupported = BootProtocolVersion(major: 2, minor: 6)
    /// 2.10: `pref_address`, `init_size` and `min_alignment`.
    public static let v2_10 = BootProtocolVersion(major: 2, minor: 10)
    /// 2.12: `xloadflags`, hence XLF_KERNEL_64 and the 64-bit entry.
    public static let v2_12 = BootProtocolVersion(major: 2, minor: 12)
}

/// A parsed and validated Linux x86 bzImage (Documentation/arch/x86/boot.rst).
///
/// Every header field the loader relies on is checked here, with checked arithmetic, so a parsed
/// `BzImage` can be loaded without further validation of the image itself. The image is kept as
/// the bytes given (copy-on-write: no copy is made).
///
/// The loader boots through the 64-bit entry, so it needs `XLF_KERNEL_64`, which arrived with
/// protocol 2.12; parsing therefore also succeeds only for 2.12 or newer, and `pref_address` and
/// `init_size` (2.10+) are always present.
public struct BzImage: Sendable {
    /// The "HdrS" magic at 0x202, little-endian.
    public static let headerMagic: UInt32 = 0x5372_6448
    /// The boot sector signature at 0x1FE.
    public static let bootFlagValue: UInt16 = 0xAA55
    /// Bytes per setup sector.
    public static let sectorSize = 512

    /// What the image is called in error messages (its path, usually).
    public let name: String
    /// The whole file.
    public let bytes: [UInt8]

    /// The protocol version (`version`, 0x206).
    public let version: BootProtocolVersion
    /// `setup_sects` as stored (0x1F1); 0 means 4.
    public let setupSectsField: UInt8
    /// The number of setup sectors: `setup_sects`, or 4 where it is 0.
    public let setupSectors: Int
    /// `syssize` (0x1F4): the protected-mode code's size in 16-byte paragraphs.
    public let syssize: UInt32
    /// `loadflags` (0x211).
    public let loadFlags: BootParams.LoadFlags
    /// `xloadflags` (0x236).
    public let xloadFlags: BootParams.XLoadFlags
    /// `code32_start` (0x214).
    public let code32Start: UInt32
    /// `initrd_addr_max` (0x22C): the highest address the initrd may occupy.
    public let initrdAddressMax: UInt32
    /// `kernel_alignment` (0x230).
    public let kernelAlignment: UInt32
    /// `relocatable_kernel` (0x234) is non-zero.
    public let isRelocatable: Bool
    /// `min_alignment` (0x235): log2 of the least alignment the kernel accepts.
    public let minAlignment: UInt8
    /// `cmdline_size` (0x238): the longest command line, the terminating NUL excluded.
    public let commandLineSize: UInt32
    /// `pref_address` (0x258).
    public let preferredAddress: GuestAddress
    /// `init_size` (0x260): linear memory the kernel needs from its runtime start.
    public let initSize: UInt32
    /// Where the setup header ends in the file: `0x202 + the byte at 0x201`.
    public let setupHeaderEnd: Int
    /// The kernel version string that `kernel_version` points to, if it is present and readable.
    public let kernelVersion: String?

    /// XLF_KERNEL_64 is set (always, for a parsed image).
    public var hasSixtyFourBitEntry: Bool { xloadFlags.contains(.kernel64) }
    /// XLF_CAN_BE_LOADED_ABOVE_4G: the kernel accepts its initrd, zero page and command line above 4 GiB.
    /// (This loader places them below 4 GiB anyway.)
    public var canBeLoadedAbove4G: Bool { xloadFlags.contains(.canBeLoadedAbove4G) }
    /// The file offset of the protected-mode kernel: `(setup_sects + 1) * 512`.
    public var protectedModeOffset: Int { (setupSectors + 1) * Self.sectorSize }
    /// The protected-mode kernel's size: `syssize * 16` bytes (the file may hold more, such as a
    /// signature appended by a signing tool; that is not loaded).
    public var protectedModeSize: Int { Int(syssize) * 16 }
    /// The protected-mode kernel: what is copied to the load address.
    public var protectedModeKernel: ArraySlice<UInt8> {
        bytes[protectedModeOffset..<protectedModeOffset + protectedModeSize]
    }
    /// The setup header as the zero page takes it: file bytes 0x1F1 ..< `setupHeaderEnd`.
    public var setupHeader: ArraySlice<UInt8> { bytes[BootParams.Offset.setupHeader..<setupHeaderEnd] }

    /// Parses and validates `bytes` as a bzImage with a 64-bit entry point. `name` appears in errors.
    public init(bytes: [UInt8], name: String = "the kernel image") throws(LinuxBootError) {
        typealias Offset = BootParams.Offset
        self.name = name
        self.bytes = bytes

        // The magic first: anything without it is not a kernel at all, whatever else is wrong.
        guard let magic = bytes.littleEndian(UInt32.self, at: Offset.header), magic == Self.headerMagic else {
            throw .notBzImage(name: name)
        }
        // From here on the image claims to be a bzImage; it must hold the whole header area.
        guard bytes.count >= Offset.setupHeaderLimit else {
            throw .truncated(name: name, size: bytes.count, needed: Offset.setupHeaderLimit, what: "the setup header")
        }
        func field<T: FixedWidthInteger>(_ type: T.Type, _ offset: Int) -> T {
            bytes.littleEndian(T.self, at: offset) ?? 0  // in bounds: offset < setupHeaderLimit <= count
        }

        let bootFlag = field(UInt16.self, Offset.bootFlag)
        guard bootFlag == Self.bootFlagValue else { throw .missingBootFlag(name: name, found: bootFlag) }

        version = BootProtocolVersion(rawValue: field(UInt16.self, Offset.version))
        guard version >= .minimumSupported else {
            throw .protocolTooOld(name: name, version: version, minimum: .minimumSupported)
        }

        // The setup code and the protected-mode kernel must both be in the file.
        setupSectsField = field(UInt8.self, Offset.setupSects)
        setupSectors = setupSectsField == 0 ? 4 : Int(setupSectsField)
        let setupSize = (setupSectors + 1) * Self.sectorSize  // at most 256 * 512: no overflow
        guard bytes.count >= setupSize else {
            throw .truncated(
                name: name, size: bytes.count, needed: setupSize,
                what: "its setup code (setup_sects \(setupSectsField), \(setupSectors + 1) sectors)")
        }
        syssize = field(UInt32.self, Offset.syssize)
        guard syssize > 0 else {
            throw .invalidHeaderField(name: name, field: "syssize", value: 0, requirement: "a bzImage has protected-mode code")
        }
        let (kernelSize, sizeOverflow) = Int(syssize).multipliedReportingOverflow(by: 16)
        let (imageEnd, endOverflow) = setupSize.addingReportingOverflow(kernelSize)
        guard !sizeOverflow, !endOverflow, bytes.count >= imageEnd else {
            throw .truncated(
                name: name, size: bytes.count, needed: sizeOverflow || endOverflow ? Int.max : imageEnd,
                what: "its setup code and protected-mode kernel (syssize \(hex(syssize)) * 16 bytes)")
        }

        loadFlags = BootParams.LoadFlags(rawValue: field(UInt8.self, Offset.loadflags))
        guard loadFlags.contains(.loadedHigh) else { throw .notLoadableHigh(name: name) }

        // xloadflags exists from 2.12 on; in older headers those bytes are padding.
        let xloadflags = version >= .v2_12 ? field(UInt16.self, Offset.xloadflags) : 0
        xloadFlags = BootParams.XLoadFlags(rawValue: xloadflags)
        guard xloadFlags.contains(.kernel64) else { throw .notSixtyFourBit(name: name, version: version) }

        // The header copied into the zero page: up to 0x202 + the jump's offset byte. It must
        // cover every field this version defines that the loader reads (up to init_size, 2.10)
        // and fit in boot_params' header area.
        setupHeaderEnd = Offset.header + Int(field(UInt8.self, Offset.jump + 1))
        let neededEnd = Offset.initSize + 4
        guard setupHeaderEnd >= neededEnd, setupHeaderEnd <= Offset.setupHeaderLimit else {
            throw .invalidHeaderField(
                name: name, field: "the jump at 0x200 (setup header end)", value: UInt64(setupHeaderEnd),
                requirement: "protocol \(version) needs a header ending between \(hex(neededEnd)) and \(hex(Offset.setupHeaderLimit))")
        }

        code32Start = field(UInt32.self, Offset.code32Start)
        initrdAddressMax = field(UInt32.self, Offset.initrdAddrMax)
        kernelAlignment = field(UInt32.self, Offset.kernelAlignment)
        isRelocatable = field(UInt8.self, Offset.relocatableKernel) != 0
        minAlignment = field(UInt8.self, Offset.minAlignment)
        commandLineSize = field(UInt32.self, Offset.cmdlineSize)
        preferredAddress = GuestAddress(field(UInt64.self, Offset.prefAddress))
        initSize = field(UInt32.self, Offset.initSize)

        if isRelocatable {
            guard kernelAlignment != 0, kernelAlignment & (kernelAlignment - 1) == 0 else {
                throw .invalidHeaderField(
                    name: name, field: "kernel_alignment", value: UInt64(kernelAlignment),
                    requirement: "a relocatable kernel's alignment must be a power of two")
            }
        } else {
            // A kernel that cannot move runs at pref_address, which must be above the real-mode area.
            guard preferredAddress >= LinuxBootLayout.kernelLoad else {
                throw .invalidHeaderField(
                    name: name, field: "pref_address", value: preferredAddress.rawValue,
                    requirement: "a non-relocatable kernel must run at or above 1 MiB (0x100000)")
            }
        }
        guard initSize > 0 else {
            throw .invalidHeaderField(name: name, field: "init_size", value: 0, requirement: "protocol 2.10+ kernels declare the memory they need")
        }
        guard initrdAddressMax > 0 else {
            throw .invalidHeaderField(name: name, field: "initrd_addr_max", value: 0, requirement: "it must leave room for an initrd")
        }

        kernelVersion = Self.versionString(in: bytes, pointer: field(UInt16.self, Offset.kernelVersion), setupSize: setupSize)
    }

    /// The string `kernel_version` points to: NUL-terminated, at `pointer + 0x200`, inside the setup
    /// code. Nil if the pointer is 0 or leads outside the setup code.
    private static func versionString(in bytes: [UInt8], pointer: UInt16, setupSize: Int) -> String? {
        guard pointer != 0 else { return nil }
        let start = Int(pointer) + 0x200
        guard start < setupSize else { return nil }
        let limit = min(setupSize, start + 256)
        var end = start
        while end < limit, bytes[end] != 0 { end += 1 }
        guard end > start, end < limit else { return nil }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }

    /// Where the kernel runs and how much memory it takes when loaded at `loadAddress`: from the
    /// lower of the load address and the runtime start, to the higher of the loaded image's end and
    /// `runtime_start + init_size`. Nil if that passes the end of the address space.
    ///
    /// boot.rst (`init_size`): for a relocatable kernel `runtime_start` is the load address raised
    /// to at least `pref_address` and aligned up to `kernel_alignment`; otherwise it is `pref_address`.
    public func kernelMemory(loadedAt loadAddress: GuestAddress) -> Range<GuestAddress>? {
        guard let imageEnd = loadAddress.adding(UInt64(protectedModeSize)) else { return nil }
        let runtimeStart: UInt64
        if isRelocatable {
            let base = max(loadAddress.rawValue, preferredAddress.rawValue)
            let mask = UInt64(kernelAlignment) - 1  // kernelAlignment is a power of two, checked above
            let (raised, overflow) = base.addingReportingOverflow(mask)
            guard !overflow else { return nil }
            runtimeStart = raised & ~mask
        } else {
            runtimeStart = preferredAddress.rawValue
        }
        let (runtimeEnd, overflow) = runtimeStart.addingReportingOverflow(UInt64(initSize))
        guard !overflow else { return nil }
        let start = min(loadAddress.rawValue, runtimeStart)
        let end = max(imageEnd.rawValue, runtimeEnd)
        return GuestAddress(start)..<GuestAddress(end)
    }
}

extension Array where Element == UInt8 {
    /// The little-endian integer at `offset`, or nil if it does not lie inside the array.
    func littleEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T? {
        let width = MemoryLayout<T>.size
        guard offset >= 0, offset <= count - width else { return nil }
        var result: T = 0
        for index in 0..<width {
            result |= T(truncatingIfNeeded: self[offset + index]) << (8 * index)
        }
        return result
    }
}
