import LinuxBoot
import Testing
import VMMCore

@Suite struct LinuxLoaderTests {
    private func memory(_ size: Int) throws -> GuestMemory {
        try GuestMemory(layout: LinuxBootLayout.guestMemoryLayout(size: size))
    }

    private func initrd(_ size: Int) -> [UInt8] { patterned(count: size, seed: 0x3C) }

    private func commandLine(_ text: String, for kernel: BzImage) throws -> KernelCommandLine {
        var line = KernelCommandLine(for: kernel)
        try line.append(text)
        return line
    }

    @Test func loadsKernelCommandLineInitrdAndZeroPage() throws {
        let fake = FakeKernel()
        let kernel = try fake.parse()
        let memory = try memory(64 * MiB)
        let ramdisk = initrd(MiB + 123)
        let info = try LinuxLoader.load(
            kernel: kernel, initrd: ramdisk, commandLine: try commandLine("console=ttyS0 panic=-1", for: kernel), memory: memory)

        #expect(info.zeroPage == GuestAddress(0x7000))
        #expect(info.entryPoint == GuestAddress(0x10_0200))
        #expect(info.kernelLoadAddress == GuestAddress(0x10_0000))
        #expect(info.kernelMemory == GuestAddress(0x10_0000)..<GuestAddress(0x180_0000))
        #expect(try memory.read(count: fake.payloadSize, at: 0x10_0000) == fake.payload)
        #expect(try memory.read(count: 23, at: 0x2_0000) == Array("console=ttyS0 panic=-1".utf8) + [0])
        #expect(info.commandLine == GuestAddress(0x2_0000)..<GuestAddress(0x2_0017))
        let placed = try #require(info.initrd)
        #expect(try memory.read(count: ramdisk.count, at: placed.address) == ramdisk)
        #expect(info.e820 == (try E820Map(memory: memory)))
    }

    @Test func zeroPageFieldsReadBackAtTheirOffsets() throws {
        let fake = FakeKernel()
        let kernel = try fake.parse()
        let memory = try memory(64 * MiB)
        let info = try LinuxLoader.load(
            kernel: kernel, initrd: initrd(3 * MiB), commandLine: try commandLine("quiet", for: kernel), memory: memory)
        let placed = try #require(info.initrd)
        let page: UInt64 = 0x7000
        func at(_ offset: UInt64) -> GuestAddress { GuestAddress(page + offset) }

        #expect(try memory.load(UInt8.self, at: at(0x210)) == 0xFF)  // type_of_loader
        #expect(try memory.load(UInt32.self, at: at(0x228)) == 0x2_0000)  // cmd_line_ptr
        #expect(try memory.load(UInt32.self, at: at(0x0C8)) == 0)  // ext_cmd_line_ptr
        #expect(try memory.load(UInt32.self, at: at(0x218)) == UInt32(placed.address.rawValue))  // ramdisk_image
        #expect(try memory.load(UInt32.self, at: at(0x21C)) == UInt32(3 * MiB))  // ramdisk_size
        #expect(try memory.load(UInt32.self, at: at(0x0C0)) == 0)  // ext_ramdisk_image
        #expect(try memory.load(UInt32.self, at: at(0x0C4)) == 0)  // ext_ramdisk_size
        #expect(try memory.load(UInt16.self, at: at(0x1FA)) == 0xFFFF)  // vid_mode
        #expect(try memory.load(UInt16.self, at: at(0x1FE)) == 0xAA55)  // boot_flag
        #expect(try memory.load(UInt32.self, at: at(0x202)) == 0x5372_6448)  // "HdrS"
        #expect(try memory.load(UInt16.self, at: at(0x206)) == 0x020F)  // version
        #expect(try memory.load(UInt8.self, at: at(0x211)) == 0x01)  // loadflags: LOADED_HIGH, no CAN_USE_HEAP
        #expect(try memory.load(UInt16.self, at: at(0x224)) == 0)  // heap_end_ptr
        #expect(try memory.load(UInt32.self, at: at(0x238)) == 2047)  // cmdline_size
        #expect(try memory.load(UInt64.self, at: at(0x258)) == 0x100_0000)  // pref_address
        #expect(try memory.load(UInt32.self, at: at(0x260)) == 0x80_0000)  // init_size
        #expect(try memory.load(UInt32.self, at: at(0x268)) == 0x1234)  // kernel_info_offset, the header's last field
        #expect(try memory.load(UInt8.self, at: at(0x1EF)) == 0)  // sentinel
        #expect(try memory.load(UInt64.self, at: at(0x250)) == 0)  // setup_data

        // The rest of the header is the image's, byte for byte.
        let header = try memory.read(count: 0x26C - 0x1F1, at: at(0x1F1))
        var expected = Array(fake.bytes[0x1F1..<0x26C])
        expected[0x1FA - 0x1F1] = 0xFF; expected[0x1FB - 0x1F1] = 0xFF  // vid_mode
        expected[0x210 - 0x1F1] = 0xFF  // type_of_loader
        for (index, byte) in [UInt8](arrayLiteral: 0x00, 0x00, 0x02, 0x00).enumerated() { expected[0x228 - 0x1F1 + index] = byte }
        for (index, byte) in withUnsafeBytes(of: UInt32(placed.address.rawValue).littleEndian, Array.init).enumerated() {
            expected[0x218 - 0x1F1 + index] = byte
        }
        for (index, byte) in withUnsafeBytes(of: UInt32(3 * MiB).littleEndian, Array.init).enumerated() { expected[0x21C - 0x1F1 + index] = byte }
        #expect(header == expected)
        // Nothing past the header end (the 0xCC setup code) was copied.
        #expect(try memory.read(count: 0x290 - 0x26C, at: at(0x26C)) == [UInt8](repeating: 0, count: 0x290 - 0x26C))

        // e820_entries and each 20-byte entry of e820_table.
        #expect(try memory.load(UInt8.self, at: at(0x1E8)) == 3)
        let expectedEntries: [(UInt64, UInt64, UInt32)] = [(0, 0x9_FC00, 1), (0x9_FC00, 0x6_0400, 2), (0x10_0000, UInt64(63 * MiB), 1)]
        for (index, entry) in expectedEntries.enumerated() {
            let base = 0x2D0 + UInt64(index) * 20
            #expect(try memory.load(UInt64.self, at: at(base)) == entry.0)
            #expect(try memory.load(UInt64.self, at: at(base + 8)) == entry.1)
            #expect(try memory.load(UInt32.self, at: at(base + 16)) == entry.2)
        }
        #expect(try memory.load(UInt64.self, at: at(0x2D0 + 3 * 20)) == 0)
        #expect(try memory.read(count: 4096, at: at(0)) == info.bootParams.bytes)
    }

    @Test func setupSectsZeroIsWrittenAsFour() throws {
        var fake = FakeKernel()
        fake.setupSects = 0
        let kernel = try fake.parse()
        let memory = try memory(64 * MiB)
        _ = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: memory)
        #expect(try memory.load(UInt8.self, at: 0x71F1) == 4)
        #expect(try memory.read(count: fake.payloadSize, at: 0x10_0000) == fake.payload)
    }

    @Test func heapAndKeepSegmentsFlagsAreCleared() throws {
        var fake = FakeKernel()
        fake.loadflags = 0xE1  // LOADED_HIGH, QUIET, KEEP_SEGMENTS, CAN_USE_HEAP
        let kernel = try fake.parse()
        let memory = try memory(64 * MiB)
        _ = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: memory)
        #expect(try memory.load(UInt8.self, at: 0x7211) == 0x21)
    }

    @Test func noInitrdLeavesTheRamdiskFieldsZero() throws {
        let kernel = try FakeKernel().parse()
        let memory = try memory(64 * MiB)
        let info = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: memory)
        #expect(info.initrd == nil)
        #expect(try memory.load(UInt32.self, at: 0x7218) == 0)
        #expect(try memory.load(UInt32.self, at: 0x721C) == 0)
        #expect(try memory.load(UInt8.self, at: 0x2_0000) == 0)  // an empty command line is just the NUL
    }

    // MARK: Initrd placement

    @Test(arguments: [1, 4096, MiB, MiB + 123, 5 * MiB - 1])
    func initrdGoesAsHighAsRAMAllows(size: Int) throws {
        let kernel = try FakeKernel().parse()
        let memory = try memory(64 * MiB)
        let info = try LinuxLoader.load(kernel: kernel, initrd: initrd(size), commandLine: KernelCommandLine(for: kernel), memory: memory)
        let placed = try #require(info.initrd)
        let address = placed.address.rawValue
        #expect(address % 4096 == 0)
        #expect(address + UInt64(size) <= UInt64(64 * MiB))
        #expect(address >= info.kernelMemory.upperBound.rawValue)
        #expect(address == (UInt64(64 * MiB) - UInt64(size)) & ~0xFFF)  // the highest such address
    }

    @Test func initrdStaysBelowInitrdAddrMax() throws {
        var fake = FakeKernel()
        fake.initrdAddrMax = 0x1FF_FFFF  // 32 MiB - 1: the last byte it may use
        let kernel = try fake.parse()
        let memory = try memory(64 * MiB)
        let size = 2 * MiB + 10
        let info = try LinuxLoader.load(kernel: kernel, initrd: initrd(size), commandLine: KernelCommandLine(for: kernel), memory: memory)
        let address = try #require(info.initrd).address.rawValue
        #expect(address + UInt64(size) - 1 <= 0x1FF_FFFF)
        #expect(address == (0x200_0000 - UInt64(size)) & ~0xFFF)
        #expect(address % 4096 == 0)
        #expect(address >= 0x180_0000)
    }

    @Test func initrdStaysBelowTheMMIOHoleInABigGuest() throws {
        let kernel = try FakeKernel().parse()
        let memory = try memory(6 * GiB)
        let size = 3 * MiB
        let info = try LinuxLoader.load(kernel: kernel, initrd: initrd(size), commandLine: KernelCommandLine(for: kernel), memory: memory)
        #expect(try #require(info.initrd).address.rawValue == 0x8000_0000 - UInt64(size))
        #expect(try memory.load(UInt8.self, at: 0x71E8) == 4)
        #expect(try memory.load(UInt64.self, at: GuestAddress(0x7000 + 0x2D0 + 3 * 20)) == 0x1_0000_0000)
        #expect(try memory.load(UInt64.self, at: GuestAddress(0x7000 + 0x2D0 + 3 * 20 + 8)) == 0xC000_0000)
    }

    @Test func initrdAvoidsRangesTheVMMReserved() throws {
        let kernel = try FakeKernel().parse()
        let memory = try memory(64 * MiB)
        let reserved = GuestAddress(UInt64(64 * MiB - 64 * KiB))..<GuestAddress(UInt64(64 * MiB))
        let info = try LinuxLoader.load(
            kernel: kernel, initrd: initrd(MiB), commandLine: KernelCommandLine(for: kernel), memory: memory, reserved: [reserved])
        let placed = try #require(info.initrd)
        #expect(placed.range.upperBound <= reserved.lowerBound)
        #expect(placed.address.rawValue == UInt64(64 * MiB - 64 * KiB - MiB))
    }

    @Test func initrdThatDoesNotFitSaysSo() throws {
        let kernel = try FakeKernel().parse()  // occupies up to 24 MiB
        let memory = try memory(64 * MiB)
        let error = linuxBootError {
            _ = try LinuxLoader.load(kernel: kernel, initrd: initrd(41 * MiB), commandLine: KernelCommandLine(for: kernel), memory: memory)
        }
        #expect(error == .initrdDoesNotFit(size: 41 * MiB, ceiling: 0x400_0000, kernelEnd: 0x180_0000))
        #expect(error?.description == "initrd of 41 MiB does not fit below 0x4000000 above the kernel (which ends at 0x1800000): give the VM more memory (--memory)")
        // 40 MiB does fit, exactly between the kernel and the top of RAM.
        let info = try LinuxLoader.load(kernel: kernel, initrd: initrd(40 * MiB), commandLine: KernelCommandLine(for: kernel), memory: memory)
        #expect(info.initrd?.address == GuestAddress(0x180_0000))
    }

    @Test func initrdAddrMaxBelowTheKernelLeavesNoRoom() throws {
        var fake = FakeKernel()
        fake.initrdAddrMax = 0xFF_FFFF  // 16 MiB: inside the kernel's memory
        let kernel = try fake.parse()
        let memory = try memory(64 * MiB)
        let error = linuxBootError {
            _ = try LinuxLoader.load(kernel: kernel, initrd: initrd(4096), commandLine: KernelCommandLine(for: kernel), memory: memory)
        }
        #expect(error == .initrdDoesNotFit(size: 4096, ceiling: 0x100_0000, kernelEnd: 0x180_0000))
    }

    @Test func nothingIsWrittenWhenLoadingFails() throws {
        let kernel = try FakeKernel().parse()
        let memory = try memory(64 * MiB)
        #expect(linuxBootError {
            _ = try LinuxLoader.load(kernel: kernel, initrd: initrd(63 * MiB), commandLine: KernelCommandLine(for: kernel), memory: memory)
        } != nil)
        #expect(try memory.read(count: 16, at: 0x10_0000) == [UInt8](repeating: 0, count: 16))
        #expect(try memory.load(UInt32.self, at: 0x7202) == 0)
    }

    @Test func emptyInitrdIsRefused() throws {
        let kernel = try FakeKernel().parse()
        let memory64 = try memory(64 * MiB)
        let error = linuxBootError {
            _ = try LinuxLoader.load(kernel: kernel, initrd: [], commandLine: KernelCommandLine(for: kernel), memory: memory64)
        }
        #expect(error == .initrdEmpty)
    }

    // MARK: Memory and limits

    @Test func memoryTooSmallForTheKernel() throws {
        let kernel = try FakeKernel().parse()  // needs up to 16 MiB + 8 MiB
        let memory = try memory(20 * MiB)
        let error = linuxBootError {
            _ = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: memory)
        }
        #expect(error == .kernelDoesNotFit(start: 0x10_0000, end: 0x180_0000, ramEnd: 0x140_0000))
        #expect(error?.description.contains("--memory") == true)
        #expect(error?.description.contains("24 MiB") == true)
        #expect(try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: try self.memory(24 * MiB)).entryPoint == 0x10_0200)
    }

    @Test func memoryTooSmallForTheImageItself() throws {
        var fake = FakeKernel()
        fake.syssize = 0x10_0000  // a 16 MiB image in 8 MiB of RAM
        let kernel = try fake.parse()
        let memory = try memory(8 * MiB)
        guard case .kernelDoesNotFit = linuxBootError({
            _ = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: memory)
        }) else {
            Issue.record("expected kernelDoesNotFit")
            return
        }
    }

    @Test func commandLineLongerThanTheKernelAcceptsIsRefused() throws {
        var fake = FakeKernel()
        fake.cmdlineSize = 10
        let kernel = try fake.parse()
        let line = try KernelCommandLine("console=ttyS0", maximumLength: 100)  // built without the kernel's limit
        let memory64 = try memory(64 * MiB)
        let error = linuxBootError {
            _ = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: line, memory: memory64)
        }
        #expect(error == .commandLineTooLong(length: 13, maximum: 10))
        let fits = try KernelCommandLine("console=tt", maximumLength: 100)
        _ = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: fits, memory: try memory(64 * MiB))
    }

    @Test func memoryWithoutTheFirstMegabyteIsRefused() throws {
        let kernel = try FakeKernel().parse()
        let memory = try GuestMemory(layout: [(start: 0x10_0000, size: 64 * MiB)])
        let error = linuxBootError {
            _ = try LinuxLoader.load(kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: memory)
        }
        #expect(error == .notInGuestRAM(what: "zero page", start: 0x7000, end: 0x8000))
    }

    @Test func aReservedRangeOnAFixedStructureIsRefused() throws {
        let kernel = try FakeKernel().parse()
        let memory64 = try memory(64 * MiB)
        let error = linuxBootError {
            _ = try LinuxLoader.load(
                kernel: kernel, initrd: nil, commandLine: KernelCommandLine(for: kernel), memory: memory64,
                reserved: [0x7800..<0x9000])
        }
        #expect(error == .overlap(first: "zero page (0x7000..<0x8000)", second: "range the VMM reserved (0x7800..<0x9000)"))
    }
}
