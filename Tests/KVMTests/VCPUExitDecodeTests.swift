import CKVM
import Glibc
import KVM
import Testing

/// `VCPUExit.decode` over made-up `kvm_run` areas: every exit reason the VMM handles, and malformed
/// areas that must be refused with an error rather than read outside the buffer.
@Suite struct VCPUExitDecodeTests {
    // MARK: - Port I/O

    @Test(arguments: [UInt8(1), 2, 4], [UInt32(1), 3, 16])
    func portOutputSlicesTheDataAtItsOffset(size: UInt8, count: UInt32) throws {
        let area = RunArea()
        let offset = 0x980
        let length = Int(size) * Int(count)
        for index in 0..<length { area.base.storeBytes(of: UInt8(truncatingIfNeeded: index &+ 0x31), toByteOffset: offset + index, as: UInt8.self) }
        area.portIO(out: true, port: 0x3F8, size: size, count: count, dataOffset: UInt64(offset))

        let io = try requirePortIO(area.decode())
        #expect(io.direction == .write)
        #expect(io.port == 0x3F8)
        #expect(io.size == Int(size))
        #expect(io.count == Int(count))
        #expect(io.data.baseAddress == area.base + offset, "the data must point into the run area, not a copy")
        #expect(io.data.count == length)
        #expect(Array(io.data) == (0..<length).map { UInt8(truncatingIfNeeded: $0 &+ 0x31) })
    }

    @Test(arguments: [UInt8(1), 2, 4], [UInt32(1), 2, 7])
    func portInputDataWritesIntoTheRunArea(size: UInt8, count: UInt32) throws {
        let area = RunArea()
        let offset = 0x400
        let length = Int(size) * Int(count)
        area.portIO(out: false, port: 0x60, size: size, count: count, dataOffset: UInt64(offset))

        let io = try requirePortIO(area.decode())
        #expect(io.direction == .read)
        #expect(io.port == 0x60)
        #expect(io.data.count == length)
        for index in io.data.indices { io.data[index] = 0xC0 | UInt8(index & 0x3F) }
        let bytes = area.bytes
        #expect(Array(bytes[offset..<offset + length]) == (0..<length).map { 0xC0 | UInt8($0 & 0x3F) })
        #expect(bytes[offset + length] == 0, "nothing past count * size is touched")
        #expect(bytes[offset - 1] == 0)
    }

    @Test func portDataMayEndExactlyAtTheEndOfTheArea() throws {
        let area = RunArea()
        area.portIO(out: true, port: 0xF8, size: 4, count: 8, dataOffset: UInt64(area.size - 32))
        let io = try requirePortIO(area.decode())
        #expect(io.data.baseAddress == area.base + (area.size - 32))
        #expect(io.data.count == 32)
    }

    /// Sizes, counts and offsets a kernel would never report: each must be refused, not trusted.
    @Test(arguments: [
        (UInt8(1), UInt32(1), UInt64(4097)),  // offset past the end
        (1, 1, 4096),  // offset at the end: the single byte lies outside
        (2, 1, 4095),  // the second byte lies outside
        (4, 1, 4094),
        (4, 2, 4092),  // the second element lies outside
        (4, 1025, 0),  // count * size = 4100 > 4096
        (4, UInt32.max, 0),  // count * size far past the end
        (255, UInt32.max, 0),
        (1, 1, UInt64(Int.max)),  // the largest offset that is still an Int
        (3, 1, 0),  // not a port width
        (0, 1, 0),
        (8, 1, 0),
        (1, 0, 0),  // no element at all
        (4, 0, 0),
    ])
    func malformedPortIOIsRefused(size: UInt8, count: UInt32, dataOffset: UInt64) {
        let area = RunArea()
        area.portIO(out: true, port: 0x80, size: size, count: count, dataOffset: dataOffset)
        let before = area.bytes
        let error = #expect(throws: KVMError.self) { try area.decode() }
        #expect(error?.call == "decode KVM_EXIT_IO")
        #expect(error?.errno == 0)
        #expect(area.bytes == before)
    }

    /// `data_offset` is a `__u64`; one above `Int.max` must be refused like any other bad offset.
    /// The check runs in a child process (an exit test), so a trap would fail it without taking
    /// the suite down.
    @Test func portDataOffsetAboveIntMaxIsRefusedWithoutCrashing() async {
        await #expect(processExitsWith: .success) {
            let area = RunArea()
            area.portIO(out: true, port: 0x80, size: 1, count: 1, dataOffset: UInt64(Int.max) + 1)
            do {
                _ = try area.decode()
                Glibc.exit(1)  // decoded: wrong, the offset is far outside the area
            } catch {
                Glibc.exit((error as? KVMError)?.call == "decode KVM_EXIT_IO" ? 0 : 2)
            }
        }
    }

    // MARK: - MMIO

    @Test(arguments: [false, true], UInt32(1)...8)
    func mmioReportsDirectionAddressAndLength(isWrite: Bool, length: UInt32) throws {
        let area = RunArea()
        area.mmio(write: isWrite, address: 0xD000_0FF8, length: length)
        let access = try requireMMIO(area.decode())
        #expect(access.direction == (isWrite ? .write : .read))
        #expect(access.address == 0xD000_0FF8)
        #expect(access.data.count == Int(length))
        let start = try #require(access.data.baseAddress)
        #expect(start >= area.base)
        #expect(start + Int(length) <= area.base + area.size, "the data lies inside the run area")
    }

    /// The MMIO data is `kvm_run.mmio.data` (offset 40 in <linux/kvm.h>): a store's bytes come from
    /// there, and a load's result must go there, without touching `immediate_exit` or `exit_reason`.
    @Test(arguments: [UInt32(1), 4, 8])
    func mmioDataIsTheMMIODataField(length: UInt32) throws {
        let area = RunArea()
        area.mmio(write: true, address: 0x1000, length: length)
        area.run.pointee.mmio.data = (0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88)
        let store = try requireMMIO(area.decode())
        #expect(Array(store.data) == Array([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88].prefix(Int(length))))

        area.mmio(write: false, address: 0x1000, length: length)
        area.run.pointee.mmio.data = (0, 0, 0, 0, 0, 0, 0, 0)
        let load = try requireMMIO(area.decode())
        for index in load.data.indices { load.data[index] = 0xA0 | UInt8(index) }
        let field = withUnsafeBytes(of: area.run.pointee.mmio.data) { Array($0) }
        #expect(Array(field.prefix(Int(length))) == (0..<Int(length)).map { 0xA0 | UInt8($0) })
        #expect(area.run.pointee.immediate_exit == 0, "an MMIO load must not set immediate_exit")
        #expect(area.run.pointee.request_interrupt_window == 0)
        #expect(area.run.pointee.exit_reason == UInt32(KVM_EXIT_MMIO))
    }

    @Test(arguments: [UInt32(0), 9, 16, UInt32.max])
    func mmioLengthOutsideOneToEightIsRefused(length: UInt32) {
        for isWrite in [false, true] {
            let area = RunArea()
            area.mmio(write: isWrite, address: 0xFEE0_0000, length: length)
            let error = #expect(throws: KVMError.self) { try area.decode() }
            #expect(error?.call == "decode KVM_EXIT_MMIO")
        }
    }

    // MARK: - Exits without data

    @Test func haltAndShutdown() throws {
        let area = RunArea()
        area.exit(KVM_EXIT_HLT)
        guard case .halt = try area.decode() else { Issue.record("KVM_EXIT_HLT is not .halt"); return }
        area.exit(KVM_EXIT_SHUTDOWN)
        guard case .shutdown = try area.decode() else { Issue.record("KVM_EXIT_SHUTDOWN is not .shutdown"); return }
    }

    @Test func failedEntryCarriesReasonAndCPU() throws {
        let area = RunArea()
        area.exit(KVM_EXIT_FAIL_ENTRY)
        area.run.pointee.fail_entry.hardware_entry_failure_reason = 0x8000_0021
        area.run.pointee.fail_entry.cpu = 3
        guard case .failedEntry(let reason, let cpu) = try area.decode() else {
            Issue.record("KVM_EXIT_FAIL_ENTRY is not .failedEntry")
            return
        }
        #expect(reason == 0x8000_0021)
        #expect(cpu == 3)
    }

    @Test(arguments: [0, 1, 3, 16])
    func internalErrorCarriesSuberrorAndData(count: Int) throws {
        let area = RunArea()
        area.exit(KVM_EXIT_INTERNAL_ERROR)
        area.run.pointee.`internal`.suberror = UInt32(KVM_INTERNAL_ERROR_EMULATION)
        area.run.pointee.`internal`.ndata = UInt32(count)
        withUnsafeMutableBytes(of: &area.run.pointee.`internal`.data) { raw in
            for index in 0..<16 { raw.storeBytes(of: 0x1000 + UInt64(index), toByteOffset: index * 8, as: UInt64.self) }
        }
        guard case .internalError(let suberror, let data) = try area.decode() else {
            Issue.record("KVM_EXIT_INTERNAL_ERROR is not .internalError")
            return
        }
        #expect(suberror == UInt32(KVM_INTERNAL_ERROR_EMULATION))
        #expect(data == (0..<count).map { 0x1000 + UInt64($0) })
    }

    @Test func internalErrorDataIsCappedAtTheSixteenSlotsThereAre() throws {
        let area = RunArea()
        area.exit(KVM_EXIT_INTERNAL_ERROR)
        area.run.pointee.`internal`.suberror = 2
        area.run.pointee.`internal`.ndata = UInt32.max
        guard case .internalError(let suberror, let data) = try area.decode() else {
            Issue.record("KVM_EXIT_INTERNAL_ERROR is not .internalError")
            return
        }
        #expect(suberror == 2)
        #expect(data.count == 16)
    }

    @Test func interruptSystemEventAndUnknownReasons() throws {
        let area = RunArea()
        area.exit(KVM_EXIT_INTR)
        guard case .interrupted = try area.decode() else { Issue.record("KVM_EXIT_INTR is not .interrupted"); return }

        area.exit(KVM_EXIT_SYSTEM_EVENT)
        area.run.pointee.system_event.type = UInt32(KVM_SYSTEM_EVENT_RESET)
        guard case .systemEvent(let type) = try area.decode() else { Issue.record("not .systemEvent"); return }
        #expect(type == UInt32(KVM_SYSTEM_EVENT_RESET))

        for reason: UInt32 in [0xBEEF, UInt32.max, UInt32(KVM_EXIT_UNKNOWN)] {
            area.run.pointee.exit_reason = reason
            let exit = try area.decode()
            guard case .unhandled(let decoded) = exit else { Issue.record("reason \(reason) is not .unhandled"); continue }
            #expect(decoded == reason)
            #expect(exit.name == "exit_\(reason)")
        }
    }

    // MARK: - The area itself

    @Test(arguments: [0, 1, 64, MemoryLayout<kvm_run>.size - 1])
    func anAreaSmallerThanKVMRunIsRefused(size: Int) {
        // A real allocation of just `size` bytes: decode must refuse before reading any of it.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: max(size, 1))
        let error = #expect(throws: KVMError.self) { try VCPUExit.decode(run: buffer, size: size) }
        #expect(error?.call == "decode kvm_run")
        #expect(error?.description.contains("\(size) bytes") == true)
    }

    @Test func anAreaOfExactlyKVMRunDecodes() throws {
        let area = RunArea(size: MemoryLayout<kvm_run>.size)
        area.exit(KVM_EXIT_HLT)
        guard case .halt = try area.decode() else { Issue.record("KVM_EXIT_HLT is not .halt"); return }
        // The port data must then fit in those bytes too.
        area.portIO(out: true, port: 1, size: 1, count: 1, dataOffset: UInt64(area.size))
        #expect(throws: KVMError.self) { try area.decode() }
    }

    @Test func exitNames() {
        #expect(VCPUExit.halt.name == "hlt")
        #expect(VCPUExit.shutdown.name == "shutdown")
        #expect(VCPUExit.interrupted.name == "intr")
        #expect(VCPUExit.failedEntry(hardwareReason: 0, cpu: 0).name == "fail_entry")
        #expect(VCPUExit.internalError(suberror: 1, data: []).name == "internal_error")
        #expect(VCPUExit.unhandled(reason: 42).name == "exit_42")
    }
}

// MARK: - Helpers

private func requirePortIO(_ exit: VCPUExit) throws -> PortIOExit {
    guard case .portIO(let io) = exit else {
        throw DecodeMismatch(expected: "io", actual: exit.name)
    }
    return io
}

private func requireMMIO(_ exit: VCPUExit) throws -> MMIOExit {
    guard case .mmio(let access) = exit else {
        throw DecodeMismatch(expected: "mmio", actual: exit.name)
    }
    return access
}

private struct DecodeMismatch: Error, CustomStringConvertible {
    let expected: String
    let actual: String
    var description: String { "decoded a \(actual) exit, expected \(expected)" }
}
