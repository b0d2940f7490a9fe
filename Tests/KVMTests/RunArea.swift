import CKVM
import KVM

/// A made-up `kvm_run` area: zeroed, 16-byte aligned, owned by the test, never mapped from /dev/kvm.
///
/// Tests fill `exit_reason` and the union through `run`, then decode it with `VCPUExit.decode`.
final class RunArea {
    /// The number of bytes handed to `decode` as the area's size.
    let size: Int
    let base: UnsafeMutableRawPointer

    init(size: Int = 4096) {
        precondition(size >= MemoryLayout<kvm_run>.size, "RunArea backs a whole struct kvm_run")
        self.size = size
        base = .allocate(byteCount: size, alignment: 16)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        base.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit { base.deallocate() }

    var run: UnsafeMutablePointer<kvm_run> { base.assumingMemoryBound(to: kvm_run.self) }

    /// Sets `exit_reason`.
    func exit(_ reason: Int32) { run.pointee.exit_reason = UInt32(bitPattern: reason) }

    /// Fills the `io` member for a KVM_EXIT_IO.
    func portIO(out: Bool, port: UInt16, size: UInt8, count: UInt32, dataOffset: UInt64) {
        exit(KVM_EXIT_IO)
        run.pointee.io.direction = UInt8(out ? KVM_EXIT_IO_OUT : KVM_EXIT_IO_IN)
        run.pointee.io.port = port
        run.pointee.io.size = size
        run.pointee.io.count = count
        run.pointee.io.data_offset = dataOffset
    }

    /// Fills the `mmio` member for a KVM_EXIT_MMIO.
    func mmio(write: Bool, address: UInt64, length: UInt32) {
        exit(KVM_EXIT_MMIO)
        run.pointee.mmio.phys_addr = address
        run.pointee.mmio.len = length
        run.pointee.mmio.is_write = write ? 1 : 0
    }

    func decode() throws(KVMError) -> VCPUExit { try VCPUExit.decode(run: base, size: size) }

    /// The bytes of the area, for checking what a decode or a device changed.
    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: base, count: size)) }
}
