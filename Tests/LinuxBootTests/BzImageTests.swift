import LinuxBoot
import Testing
import VMMCore

@Suite struct BzImageTests {
    @Test func parsesEveryHeaderField() throws {
        let fake = FakeKernel()
        let kernel = try fake.parse()
        #expect(kernel.version == BootProtocolVersion(rawValue: 0x020F))
        #expect(kernel.version.description == "2.15")
        #expect(kernel.setupSectsField == 4)
        #expect(kernel.setupSectors == 4)
        #expect(kernel.syssize == 0x1000)
        #expect(kernel.loadFlags == [.loadedHigh])
        #expect(kernel.xloadFlags == [.kernel64, .canBeLoadedAbove4G])
        #expect(kernel.hasSixtyFourBitEntry)
        #expect(kernel.canBeLoadedAbove4G)
        #expect(kernel.code32Start == 0x10_0000)
        #expect(kernel.initrdAddressMax == 0x7FFF_FFFF)
        #expect(kernel.kernelAlignment == 0x20_0000)
        #expect(kernel.isRelocatable)
        #expect(kernel.minAlignment == 21)
        #expect(kernel.commandLineSize == 2047)
        #expect(kernel.preferredAddress == GuestAddress(0x100_0000))
        #expect(kernel.initSize == 0x80_0000)
        #expect(kernel.setupHeaderEnd == 0x26C)
        #expect(kernel.kernelVersion == "6.1.0-fake (tests@swiftkvm) #1 SMP")
        #expect(kernel.protectedModeOffset == 5 * 512)
        #expect(kernel.protectedModeSize == 0x1000 * 16)
        #expect(Array(kernel.protectedModeKernel) == fake.payload)
        #expect(Array(kernel.setupHeader) == Array(fake.bytes[0x1F1..<0x26C]))
    }

    @Test func setupSectsZeroMeansFour() throws {
        var fake = FakeKernel()
        fake.setupSects = 0
        let kernel = try fake.parse()
        #expect(kernel.setupSectsField == 0)
        #expect(kernel.setupSectors == 4)
        #expect(kernel.protectedModeOffset == 2560)
        #expect(Array(kernel.protectedModeKernel) == fake.payload)
    }

    @Test func otherSetupSizesMoveTheProtectedModeKernel() throws {
        var fake = FakeKernel()
        fake.setupSects = 27
        let kernel = try fake.parse()
        #expect(kernel.protectedModeOffset == 28 * 512)
        #expect(Array(kernel.protectedModeKernel) == fake.payload)
    }

    @Test func bytesAfterTheProtectedModeKernelAreNotPartOfIt() throws {
        var fake = FakeKernel()
        fake.trailingBytes = 1472  // the size of the signature on Debian's kernels
        let kernel = try fake.parse()
        #expect(kernel.protectedModeKernel.count == fake.payloadSize)
        #expect(Array(kernel.protectedModeKernel) == fake.payload)
    }

    @Test func noHdrSMagicIsNotABzImage() {
        var fake = FakeKernel()
        fake.magic = Array("HdrZ".utf8)
        let error = linuxBootError { _ = try fake.parse(name: "vmlinux") }
        #expect(error == .notBzImage(name: "vmlinux"))
        #expect(error?.description == "vmlinux is not a Linux bzImage (no HdrS signature): pass the kernel's arch/x86/boot/bzImage or /boot/vmlinuz-*")
    }

    @Test(arguments: [0, 1, 0x200, 0x205])
    func filesTooShortForTheMagicAreNotBzImages(length: Int) {
        let bytes = Array(FakeKernel().bytes.prefix(length))
        #expect(linuxBootError { _ = try BzImage(bytes: bytes, name: "tiny") } == .notBzImage(name: "tiny"))
    }

    @Test func missingBootSignature() {
        var fake = FakeKernel()
        fake.bootFlag = 0x0000
        let error = linuxBootError { _ = try fake.parse() }
        #expect(error == .missingBootFlag(name: "bzImage", found: 0))
        #expect(error?.description.contains("0xAA55") == true)
    }

    @Test func protocol2_05IsTooOld() {
        var fake = FakeKernel()
        fake.version = 0x0205
        let error = linuxBootError { _ = try fake.parse() }
        #expect(error == .protocolTooOld(name: "bzImage", version: BootProtocolVersion(rawValue: 0x0205), minimum: BootProtocolVersion.minimumSupported))
        #expect(error?.description.contains("boot protocol 2.05") == true)
        #expect(error?.description.contains("2.06") == true)
    }

    @Test func protocol2_06IsNotTooOldButHasNo64BitEntry() {
        var fake = FakeKernel()
        fake.version = 0x0206
        let error = linuxBootError { _ = try fake.parse() }
        #expect(error == .notSixtyFourBit(name: "bzImage", version: BootProtocolVersion(rawValue: 0x0206)))
        #expect(error?.description.contains("2.12") == true)
    }

    @Test func protocolsBefore2_12IgnoreTheXloadflagsBytes() {
        var fake = FakeKernel()
        fake.version = 0x020A  // 2.10: 0x236 was padding, whatever it holds
        #expect(linuxBootError { _ = try fake.parse() } == .notSixtyFourBit(name: "bzImage", version: BootProtocolVersion(rawValue: 0x020A)))
        fake.version = 0x020C
        #expect(linuxBootError { _ = try fake.parse() } == nil)
    }

    @Test func withoutXLFKernel64ThereIsNo64BitEntry() {
        var fake = FakeKernel()
        fake.xloadflags = 0x0002
        let error = linuxBootError { _ = try fake.parse() }
        #expect(error == .notSixtyFourBit(name: "bzImage", version: BootProtocolVersion(rawValue: 0x020F)))
        #expect(error?.description.contains("XLF_KERNEL_64") == true)
    }

    @Test func withoutLoadedHighItIsAZImage() {
        var fake = FakeKernel()
        fake.loadflags = 0
        #expect(linuxBootError { _ = try fake.parse() } == .notLoadableHigh(name: "bzImage"))
    }

    @Test func shorterThanTheSetupItDeclares() {
        var fake = FakeKernel()
        fake.setupSects = 30
        let bytes = Array(fake.bytes.prefix(20 * 512))
        let error = linuxBootError { _ = try BzImage(bytes: bytes, name: "k") }
        guard case .truncated(name: "k", size: 20 * 512, needed: 31 * 512, _) = error else {
            Issue.record("expected truncated setup, got \(String(describing: error))")
            return
        }
        #expect(error?.description.contains("is truncated") == true)
    }

    @Test func shorterThanTheHeaderArea() {
        let bytes = Array(FakeKernel().bytes.prefix(0x28F))
        guard case .truncated(_, 0x28F, 0x290, _) = linuxBootError({ _ = try BzImage(bytes: bytes) }) else {
            Issue.record("expected truncated header")
            return
        }
    }

    @Test func shorterThanSyssize() throws {
        let fake = FakeKernel()
        let full = fake.bytes
        #expect(linuxBootError { _ = try BzImage(bytes: full) } == nil)
        let error = linuxBootError { _ = try BzImage(bytes: Array(full.dropLast()), name: "k") }
        guard case .truncated(name: "k", size: full.count - 1, needed: full.count, _) = error else {
            Issue.record("expected truncated kernel, got \(String(describing: error))")
            return
        }
    }

    @Test func hugeSyssizeIsTruncationNotACrash() {
        var fake = FakeKernel()
        fake.syssize = 1
        var bytes = fake.bytes
        for index in 0..<4 { bytes[0x1F4 + index] = 0xFF }  // syssize 0xFFFFFFFF
        guard case .truncated = linuxBootError({ _ = try BzImage(bytes: bytes) }) else {
            Issue.record("expected truncated")
            return
        }
    }

    @Test func syssizeZeroIsRejected() {
        var fake = FakeKernel()
        fake.syssize = 0
        guard case .invalidHeaderField(_, "syssize", 0, _) = linuxBootError({ _ = try fake.parse() }) else {
            Issue.record("expected invalid syssize")
            return
        }
    }

    @Test(arguments: [UInt8(0x50), 0x61, 0x8F])
    func aSetupHeaderEndOutsideTheHeaderAreaIsRejected(jump: UInt8) {
        var fake = FakeKernel()
        fake.jumpOffset = jump
        guard case .invalidHeaderField(_, _, let value, _) = linuxBootError({ _ = try fake.parse() }) else {
            Issue.record("expected invalid header end")
            return
        }
        #expect(value == 0x202 + UInt64(jump))
    }

    @Test(arguments: [UInt8(0x62), 0x6A, 0x8E])
    func setupHeaderEndsFromInitSizeToTheHeaderAreaAreAccepted(jump: UInt8) throws {
        var fake = FakeKernel()
        fake.jumpOffset = jump
        #expect(try fake.parse().setupHeaderEnd == 0x202 + Int(jump))
    }

    @Test(arguments: [UInt32(0), 0x30_0000])
    func aRelocatableKernelNeedsAPowerOfTwoAlignment(alignment: UInt32) throws {
        var fake = FakeKernel()
        fake.kernelAlignment = alignment
        guard case .invalidHeaderField(_, "kernel_alignment", UInt64(alignment), _) = linuxBootError({ _ = try fake.parse() }) else {
            Issue.record("expected invalid kernel_alignment")
            return
        }
        fake.relocatable = 0
        #expect(try fake.parse().isRelocatable == false)
    }

    @Test func aNonRelocatableKernelMustRunAbove1MiB() throws {
        var fake = FakeKernel()
        fake.relocatable = 0
        fake.prefAddress = 0x1_0000  // would run over the zero page and the command line
        #expect(linuxBootError { _ = try fake.parse() } == .invalidHeaderField(
            name: "bzImage", field: "pref_address", value: 0x1_0000,
            requirement: "a non-relocatable kernel must run at or above 1 MiB (0x100000)"))
        fake.prefAddress = 0x10_0000
        #expect(try fake.parse().preferredAddress == 0x10_0000)
    }

    @Test func initSizeZeroIsRejected() {
        var fake = FakeKernel()
        fake.initSize = 0
        guard case .invalidHeaderField(_, "init_size", 0, _) = linuxBootError({ _ = try fake.parse() }) else {
            Issue.record("expected invalid init_size")
            return
        }
    }

    @Test func aVersionPointerOutsideTheSetupCodeGivesNoVersion() throws {
        var bytes = FakeKernel().bytes
        bytes[0x20E] = 0xFF
        bytes[0x20F] = 0xFF
        #expect(try BzImage(bytes: bytes).kernelVersion == nil)
    }

    @Test func versionsPrintAsBootRstWritesThem() {
        #expect(BootProtocolVersion(rawValue: 0x0205).description == "2.05")
        #expect(BootProtocolVersion(rawValue: 0x020F).description == "2.15")
        #expect(BootProtocolVersion(major: 2, minor: 12) == .v2_12)
        #expect(BootProtocolVersion(rawValue: 0x0A11).description == "10.17")
    }

    // MARK: Where the kernel runs (boot.rst, init_size)

    @Test func relocatableKernelRunsAtPrefAddress() throws {
        let kernel = try FakeKernel().parse()
        let memory = kernel.kernelMemory(loadedAt: 0x10_0000)
        #expect(memory == GuestAddress(0x10_0000)..<GuestAddress(0x100_0000 + 0x80_0000))
    }

    @Test func relocatableKernelWithoutPrefAddressRunsAlignedUp() throws {
        var fake = FakeKernel()
        fake.prefAddress = 0
        let kernel = try fake.parse()
        #expect(kernel.kernelMemory(loadedAt: 0x10_0000) == GuestAddress(0x10_0000)..<GuestAddress(0x20_0000 + 0x80_0000))
        #expect(kernel.kernelMemory(loadedAt: 0x20_0000) == GuestAddress(0x20_0000)..<GuestAddress(0x20_0000 + 0x80_0000))
    }

    @Test func nonRelocatableKernelRunsAtPrefAddress() throws {
        var fake = FakeKernel()
        fake.relocatable = 0
        fake.prefAddress = 0x10_0000
        fake.initSize = 0x8000  // smaller than the image: the image's end counts
        let kernel = try fake.parse()
        #expect(kernel.kernelMemory(loadedAt: 0x10_0000) == GuestAddress(0x10_0000)..<GuestAddress(0x10_0000 + 0x1_0000))
    }

    @Test func kernelMemoryPastTheAddressSpaceIsNil() throws {
        var fake = FakeKernel()
        fake.prefAddress = UInt64.max - 0x1000
        #expect(try fake.parse().kernelMemory(loadedAt: 0x10_0000) == nil)
        fake.relocatable = 0
        #expect(try fake.parse().kernelMemory(loadedAt: 0x10_0000) == nil)
    }
}
