import KVM
import Testing
import VMM
import VMMCore

/// The state file as untrusted input: each kind of corruption is refused with one line, before
/// anything reaches KVM. No /dev/kvm needed: the snapshot here is made up.
struct StateFileTests {
    static func blob<T>(_ type: KVMStateBlob<T>.Type, _ fill: (inout [UInt8]) -> Void = { _ in }) throws -> KVMStateBlob<T> {
        var bytes = [UInt8](repeating: 0, count: KVMStateBlob<T>.size)
        fill(&bytes)
        return try KVMStateBlob<T>(bytes: bytes, name: "test")
    }

    /// Offsets of the fields the checks look at, in the C structures (<linux/kvm.h>, x86).
    static let rflagsOffset = 17 * 8
    static let eventsFlagsOffset = 20  // struct kvm_vcpu_events: exception (8), interrupt (4), nmi (4), sipi_vector (4), flags

    static func vcpu() throws -> VCPUState {
        VCPUState(
            cpuid: [CPUIDEntry(function: 0, eax: 0xD, ebx: 0, ecx: 0, edx: 0), CPUIDEntry(function: 1, eax: 0, ebx: 0, ecx: 0, edx: 0)],
            mpState: try blob(MPState.self),
            registers: try blob(RawRegisters.self) { $0[rflagsOffset] = 0x2 },
            specialRegisters: try blob(RawSpecialRegisters.self),
            xsave: XSaveState(bytes: [UInt8](repeating: 0, count: 4096)), fpu: nil, xcrs: try blob(XCRState.self),
            debugRegisters: try blob(DebugRegisterState.self), localAPIC: nil,
            msrs: [MSRValue(index: 0x10, value: 12345), MSRValue(index: 0xC000_0080, value: 0x500)],
            events: try blob(VCPUEventState.self), tscKHz: 2_000_000)
    }

    static func snapshot() throws -> MachineSnapshot {
        MachineSnapshot(
            configuration: Array(#"{"boot":{"firmware":{"path":"x","mode":"user"}}}"#.utf8),
            memory: [.init(guestAddress: 0, size: 2 << 20, fileOffset: 0)],
            vm: VMKernelState(irqchips: [], pit: nil, clock: try blob(ClockState.self)), vcpus: [try vcpu()],
            devices: [.init(name: "COM1", state: [1, 2, 3])])
    }

    /// Decodes `bytes`, expecting a refusal whose one-line text contains `words`.
    static func expectRefusal(_ bytes: [UInt8], _ words: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try MachineSnapshot(decoding: bytes)
            Issue.record("a corrupt state file was accepted (expected: \(words))", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description.contains(words), "\(error.description)", sourceLocation: sourceLocation)
            #expect(!error.description.contains("\n"), sourceLocation: sourceLocation)
        }
    }

    /// Re-frames a changed payload with a correct checksum: the checks past the frame are what is tested.
    static func reframed(_ change: (inout MachineSnapshot) -> Void) throws -> [UInt8] {
        var value = try snapshot()
        change(&value)
        return value.encoded()
    }

    @Test func aSnapshotRoundTrips() throws {
        let value = try Self.snapshot()
        #expect(try MachineSnapshot(decoding: value.encoded()) == value)
    }

    @Test func everyTruncationIsRefused() throws {
        let bytes = try Self.snapshot().encoded()
        for length in stride(from: 0, to: bytes.count, by: 7) {
            Self.expectRefusal(Array(bytes.prefix(length)), "truncated")
        }
        Self.expectRefusal(Array(bytes.dropLast()), "truncated")
        Self.expectRefusal(Array(bytes.prefix(30)), "truncated")
    }

    @Test func trailingBytesAreRefused() throws {
        Self.expectRefusal(try Self.snapshot().encoded() + [0], "after the checksum")
    }

    @Test func anotherVersionIsRefused() throws {
        var bytes = try Self.snapshot().encoded()
        bytes[8] = 2
        Self.expectRefusal(bytes, "format version 2; this swiftkvm reads version 1 only")
    }

    @Test func somethingElseIsNotAStateFile() throws {
        var bytes = try Self.snapshot().encoded()
        bytes[0] = UInt8(ascii: "X")
        Self.expectRefusal(bytes, "not a swiftkvm snapshot state file")
        Self.expectRefusal(Array("{\"hello\": 1}".utf8), "not a swiftkvm snapshot state file")
    }

    @Test func everyFlippedBitIsCaughtByTheChecksum() throws {
        let bytes = try Self.snapshot().encoded()
        // Every byte past the version field (a flipped version or length says so itself).
        for position in stride(from: 24, to: bytes.count, by: 13) {
            var damaged = bytes
            damaged[position] ^= 0x10
            Self.expectRefusal(damaged, "damaged")
        }
    }

    @Test func aHugePayloadLengthIsRefusedBeforeReading() throws {
        var bytes = try Self.snapshot().encoded()
        for index in 16..<24 { bytes[index] = 0xFF }
        Self.expectRefusal(bytes, "impossible value: a payload of")
    }

    @Test func impossibleRegisterValuesAreRefused() throws {
        Self.expectRefusal(
            try Self.reframed { $0.vcpus[0].registers = try! Self.blob(RawRegisters.self) }, "RFLAGS of vCPU 0 is 0x0")
        Self.expectRefusal(
            try Self.reframed {
                $0.vcpus[0].registers = try! Self.blob(RawRegisters.self) {
                    $0[Self.rflagsOffset] = 2
                    $0[Self.rflagsOffset + 7] = 0x80
                }
            }, "which no x86 CPU can hold")
        Self.expectRefusal(
            try Self.reframed { $0.vcpus[0].mpState = try! Self.blob(MPState.self) { $0[0] = 77 } }, "MP state of vCPU 0 is 77")
        Self.expectRefusal(try Self.reframed { $0.vcpus[0].tscKHz = 0 }, "TSC frequency of vCPU 0 is 0 kHz")
    }

    @Test func impossibleEventsAreRefused() throws {
        Self.expectRefusal(
            try Self.reframed { $0.vcpus[0].events = try! Self.blob(VCPUEventState.self) { $0[Self.eventsFlagsOffset] = 0x80 } },
            "unknown flags 0x80")
        Self.expectRefusal(
            try Self.reframed {
                $0.vcpus[0].events = try! Self.blob(VCPUEventState.self) {
                    $0[0] = 1  // exception.injected
                    $0[1] = 200  // exception.nr
                }
            }, "exception vector 200")
    }

    @Test func inconsistentVCPUStateIsRefused() throws {
        Self.expectRefusal(try Self.reframed { $0.vcpus[0].fpu = try! Self.blob(FPUState.self) }, "exactly one of an XSAVE area and an FPU state")
        Self.expectRefusal(try Self.reframed { $0.vcpus[0].xsave = XSaveState(bytes: [1, 2, 3]) }, "XSAVE area of vCPU 0 has 3 bytes")
        Self.expectRefusal(
            try Self.reframed { $0.vcpus[0].localAPIC = try! Self.blob(LocalAPICState.self) }, "has a local APIC but the VM has no irqchip")
        Self.expectRefusal(
            try Self.reframed { $0.vcpus[0].msrs.append(MSRValue(index: 0x10, value: 1)) }, "MSR 0x10 appears twice")
        Self.expectRefusal(try Self.reframed { $0.vcpus[0].cpuid = [] }, "no CPUID entries")
        Self.expectRefusal(try Self.reframed { $0.vcpus = [] }, "no vCPU")
        Self.expectRefusal(
            try Self.reframed { $0.vcpus[0].xcrs = try! Self.blob(XCRState.self) { $0[0] = 99 } }, "99 XCRs")
    }

    @Test func impossibleVMStateIsRefused() throws {
        Self.expectRefusal(
            try Self.reframed { $0.vm.irqchips = [try! Self.blob(IRQChipState.self)] }, "1 interrupt controllers")
        Self.expectRefusal(
            try Self.reframed { $0.vm.irqchips = (0..<3).map { _ in try! Self.blob(IRQChipState.self) } },
            "interrupt controller 1 says it is chip 0")
    }

    @Test func impossibleMemoryLayoutsAreRefused() throws {
        Self.expectRefusal(try Self.reframed { $0.memory = [] }, "no guest memory region")
        Self.expectRefusal(try Self.reframed { $0.memory[0].size = 4095 }, "not 4 KiB aligned")
        Self.expectRefusal(try Self.reframed { $0.memory[0].fileOffset = 4096 }, "starts at byte 4096 of the memory file, not 0")
        Self.expectRefusal(
            try Self.reframed { $0.memory.append(.init(guestAddress: 4096, size: 4096, fileOffset: 2 << 20)) }, "overlaps")
        Self.expectRefusal(try Self.reframed { $0.memory[0].guestAddress = UInt64.max - 4095 }, "overlaps another or lies beyond")
    }

    @Test func hugeCountsAreRefusedBeforeAllocating() throws {
        var writer = StateWriter()
        writer.section("CONF") { $0.data([]) }
        writer.section("MEMR") { $0.u32(0xFFFF_FFFF) }
        Self.expectRefusal(StateFile.encode(payload: writer.bytes), "4294967295 memory regions (at most 16)")
        var config = StateWriter()
        config.section("CONF") { $0.u32(0x7FFF_FFFF) }
        Self.expectRefusal(StateFile.encode(payload: config.bytes), "the configuration of 2147483647 bytes")
    }

    @Test func sectionsOutOfOrderAreRefused() throws {
        var writer = StateWriter()
        writer.section("VCPU") { $0.u32(0) }
        Self.expectRefusal(StateFile.encode(payload: writer.bytes), "section 'VCPU' where 'CONF' belongs")
    }

    @Test func theChecksumIsCRC32() {
        // The standard check value of CRC-32/ISO-HDLC.
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
    }
}
