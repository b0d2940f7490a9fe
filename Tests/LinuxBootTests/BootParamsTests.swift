import LinuxBoot
import Testing
import VMMCore

@Suite struct BootParamsTests {
    @Test func addressesAbove4GiBUseTheExtFields() {
        var params = BootParams()
        params.setCommandLine(at: 0x1_2345_6000)
        params.setInitrd(at: 0x2_0000_1000, size: 0x1_0000_0010)
        #expect(params.value(UInt32.self, at: 0x228) == 0x2345_6000)
        #expect(params.value(UInt32.self, at: 0x0C8) == 1)
        #expect(params.value(UInt32.self, at: 0x218) == 0x1000)
        #expect(params.value(UInt32.self, at: 0x0C0) == 2)
        #expect(params.value(UInt32.self, at: 0x21C) == 0x10)
        #expect(params.value(UInt32.self, at: 0x0C4) == 1)
        #expect(params.commandLineAddress == 0x1_2345_6000)
        #expect(params.initrdAddress == 0x2_0000_1000)
        #expect(params.initrdSize == 0x1_0000_0010)
    }

    @Test func offsetsOutsideThePageAreIgnored() {
        var params = BootParams()
        params.set(UInt64.max, at: 4090)
        params.set(UInt8(1), at: -1)
        #expect(params.bytes == [UInt8](repeating: 0, count: 4096))
        #expect(params.value(UInt32.self, at: 4094) == 0)
    }

    @Test func offsetsMatchBootRst() {
        typealias O = BootParams.Offset
        #expect(O.setupSects == 0x1F1 && O.syssize == 0x1F4 && O.vidMode == 0x1FA && O.bootFlag == 0x1FE)
        #expect(O.header == 0x202 && O.version == 0x206 && O.typeOfLoader == 0x210 && O.loadflags == 0x211)
        #expect(O.ramdiskImage == 0x218 && O.ramdiskSize == 0x21C && O.heapEndPtr == 0x224 && O.cmdLinePtr == 0x228)
        #expect(O.initrdAddrMax == 0x22C && O.kernelAlignment == 0x230 && O.relocatableKernel == 0x234)
        #expect(O.xloadflags == 0x236 && O.cmdlineSize == 0x238 && O.prefAddress == 0x258 && O.initSize == 0x260)
        #expect(O.extRamdiskImage == 0x0C0 && O.extRamdiskSize == 0x0C4 && O.extCmdLinePtr == 0x0C8)
        #expect(O.e820Entries == 0x1E8 && O.e820Table == 0x2D0)
    }

    @Test func e820TableHoldsAll128Entries() throws {
        let entries = (0..<128).map { E820Entry(address: GuestAddress(UInt64($0) * 0x2000), size: 0x1000, type: .ram) }
        var params = BootParams()
        params.setE820(try E820Map(entries: entries))
        #expect(params.value(UInt8.self, at: 0x1E8) == 128)
        #expect(params.value(UInt64.self, at: 0x2D0 + 127 * 20) == 127 * 0x2000)
        #expect(params.value(UInt32.self, at: 0x2D0 + 127 * 20 + 16) == 1)
        #expect(params.value(UInt64.self, at: 0x2D0 + 128 * 20) == 0)  // eddbuf is untouched
    }
}
