import CKVM

/// The direction of a port or MMIO access, seen from the guest.
public enum AccessDirection: Equatable, Sendable {
    /// The guest reads (`in`, a load): the VMM fills the data.
    case read
    /// The guest writes (`out`, a store): the VMM consumes the data.
    case write
}

/// A port I/O exit (KVM_EXIT_IO). For string instructions (`rep outsb` and friends) `count` is
/// greater than one and `data` holds `count * size` bytes: element `i` is at `i * size`. The port
/// stays the same for every element; only the data pointer advances.
public struct PortIOExit: @unchecked Sendable {
    public var direction: AccessDirection
    public var port: UInt16
    /// The width of one access: 1, 2 or 4 bytes.
    public var size: Int
    public var count: Int
    /// Points into the vCPU's `kvm_run` area; valid until the next KVM_RUN.
    public var data: UnsafeMutableRawBufferPointer

    public init(direction: AccessDirection, port: UInt16, size: Int, count: Int, data: UnsafeMutableRawBufferPointer) {
        self.direction = direction
        self.port = port
        self.size = size
        self.count = count
        self.data = data
    }
}

/// An MMIO exit (KVM_EXIT_MMIO): an access to guest-physical memory that no memory slot backs.
public struct MMIOExit: @unchecked Sendable {
    public var direction: AccessDirection
    public var address: UInt64
    /// Points into the vCPU's `kvm_run` area (1 to 8 bytes); valid until the next KVM_RUN.
    public var data: UnsafeMutableRawBufferPointer

    public init(direction: AccessDirection, address: UInt64, data: UnsafeMutableRawBufferPointer) {
        self.direction = direction
        self.address = address
        self.data = data
    }
}

/// Why KVM_RUN returned: a typed view of `kvm_run.exit_reason` and its union.
public enum VCPUExit: Sendable {
    case portIO(PortIOExit)
    case mmio(MMIOExit)
    /// The guest executed HLT and no in-kernel interrupt controller handles it (KVM_EXIT_HLT).
    case halt
    /// Triple fault or another reset-causing event (KVM_EXIT_SHUTDOWN).
    case shutdown
    /// VM entry failed: the guest state was invalid (KVM_EXIT_FAIL_ENTRY).
    case failedEntry(hardwareReason: UInt64, cpu: UInt32)
    /// KVM could not handle the exit, e.g. an instruction its emulator does not know (KVM_EXIT_INTERNAL_ERROR).
    case internalError(suberror: UInt32, data: [UInt64])
    /// KVM_RUN was interrupted by a signal or `immediate_exit` (EINTR or KVM_EXIT_INTR): the vCPU was kicked.
    case interrupted
    /// A platform event such as a reset or power-off requested through PSCI/ACPI-like paths (KVM_EXIT_SYSTEM_EVENT).
    case systemEvent(type: UInt32)
    /// Any other exit reason, by number.
    case unhandled(reason: UInt32)

    /// The exit's name for statistics and traces.
    public var name: String {
        switch self {
        case .portIO: "io"
        case .mmio: "mmio"
        case .halt: "hlt"
        case .shutdown: "shutdown"
        case .failedEntry: "fail_entry"
        case .internalError: "internal_error"
        case .interrupted: "intr"
        case .systemEvent: "system_event"
        case .unhandled(let reason): "exit_\(reason)"
        }
    }

    /// Decodes the exit from a `kvm_run` area of `size` bytes at `run`.
    ///
    /// Every offset and length the area names is checked against `size`, so a made-up buffer in a
    /// test (or a kernel that disagrees with our headers) cannot make us read outside it.
    public static func decode(run: UnsafeMutableRawPointer, size: Int) throws(KVMError) -> VCPUExit {
        guard size >= MemoryLayout<kvm_run>.size else {
            throw KVMError(call: "decode kvm_run", errno: 0, hint: "the run area is \(size) bytes, smaller than struct kvm_run")
        }
        let area = run.assumingMemoryBound(to: kvm_run.self)
        switch Int32(bitPattern: area.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = area.pointee.io
            let width = Int(io.size)
            let count = Int(io.count)
            let (length, overflow) = width.multipliedReportingOverflow(by: count)
            guard [1, 2, 4].contains(width), count >= 1, !overflow, io.data_offset <= UInt64(size),
                let offset = Int(exactly: io.data_offset), length <= size - offset
            else {
                throw KVMError(
                    call: "decode KVM_EXIT_IO", errno: 0,
                    hint: "size \(width) × count \(count) at offset \(io.data_offset) does not fit the \(size)-byte run area")
            }
            return .portIO(
                PortIOExit(
                    direction: io.direction == UInt8(KVM_EXIT_IO_OUT) ? .write : .read, port: io.port,
                    size: width, count: count, data: UnsafeMutableRawBufferPointer(start: run + offset, count: length)))
        case KVM_EXIT_MMIO:
            let length = Int(area.pointee.mmio.len)
            guard (1...8).contains(length) else {
                throw KVMError(call: "decode KVM_EXIT_MMIO", errno: 0, hint: "access length \(length) is not 1 to 8 bytes")
            }
            let dataOffset = Int(CKVM_RUN_MMIO_DATA_OFFSET)
            return .mmio(
                MMIOExit(
                    direction: area.pointee.mmio.is_write != 0 ? .write : .read, address: area.pointee.mmio.phys_addr,
                    data: UnsafeMutableRawBufferPointer(start: run + dataOffset, count: length)))
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_FAIL_ENTRY:
            return .failedEntry(
                hardwareReason: area.pointee.fail_entry.hardware_entry_failure_reason, cpu: area.pointee.fail_entry.cpu)
        case KVM_EXIT_INTERNAL_ERROR:
            let details = area.pointee.`internal`
            let count = min(Int(details.ndata), 16)
            let data = withUnsafeBytes(of: details.data) { raw in (0..<count).map { raw.load(fromByteOffset: $0 * 8, as: UInt64.self) } }
            return .internalError(suberror: details.suberror, data: data)
        case KVM_EXIT_INTR:
            return .interrupted
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: area.pointee.system_event.type)
        default:
            return .unhandled(reason: area.pointee.exit_reason)
        }
    }
}
