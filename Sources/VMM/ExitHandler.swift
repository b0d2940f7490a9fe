import KVM
import VMMCore

/// Counts of what the guest made the VMM do, by exit reason.
public struct ExitStatistics: Equatable, Sendable {
    public var portReads = 0
    public var portWrites = 0
    public var mmioReads = 0
    public var mmioWrites = 0
    public var halts = 0
    public var interruptions = 0
    public var other = 0
    /// Accesses to ports no device claims: reads returned all ones, writes were dropped.
    public var unclaimedPortAccesses = 0
    /// Accesses to guest-physical addresses that neither RAM nor a device claims.
    public var unclaimedMMIOAccesses = 0

    public init() {}

    /// Every exit counted, whatever its reason.
    public var total: Int { portReads + portWrites + mmioReads + mmioWrites + halts + interruptions + other }

    public static func + (lhs: ExitStatistics, rhs: ExitStatistics) -> ExitStatistics {
        var sum = lhs
        sum.portReads += rhs.portReads
        sum.portWrites += rhs.portWrites
        sum.mmioReads += rhs.mmioReads
        sum.mmioWrites += rhs.mmioWrites
        sum.halts += rhs.halts
        sum.interruptions += rhs.interruptions
        sum.other += rhs.other
        sum.unclaimedPortAccesses += rhs.unclaimedPortAccesses
        sum.unclaimedMMIOAccesses += rhs.unclaimedMMIOAccesses
        return sum
    }
}

/// What the vCPU loop does after an exit.
public enum ExitAction: Equatable, Sendable {
    /// Enter the guest again (unless a stop was requested meanwhile).
    case resume
    /// End the run with this outcome.
    case stop(GuestOutcome)
}

/// Exit dispatch: a plain function of an exit and the buses, callable from a test with a made-up
/// exit and no vCPU (Firecracker's `handle_kvm_exit` shape).
///
/// Port and MMIO accesses go to the device whose bus range holds the address, with the offset in
/// that range. String port I/O is `count` accesses of `size` bytes at one port, each with the next
/// slice of the data buffer. Nothing the guest chooses is fatal: unclaimed reads give all ones,
/// unclaimed writes are dropped, and both are counted.
public struct ExitHandler {
    public var ports: Bus
    public var mmio: Bus
    public var statistics = ExitStatistics()

    public init(ports: Bus, mmio: Bus) {
        self.ports = ports
        self.mmio = mmio
    }

    public mutating func handle(_ exit: VCPUExit) -> ExitAction {
        switch exit {
        case .portIO(let io):
            handlePortIO(io)
            return .resume
        case .mmio(let access):
            handleMMIO(access)
            return .resume
        case .halt:
            statistics.halts += 1
            return .stop(.halted)
        case .interrupted:
            statistics.interruptions += 1
            return .resume
        case .shutdown:
            statistics.other += 1
            return .stop(.shutdown)
        case .failedEntry(let reason, _):
            statistics.other += 1
            return .stop(.failedEntry(hardwareReason: reason))
        case .internalError(let suberror, _):
            statistics.other += 1
            return .stop(.internalError(suberror: suberror))
        case .systemEvent:
            statistics.other += 1
            return .stop(.shutdown)
        case .unhandled(let reason):
            statistics.other += 1
            return .stop(.unhandledExit(reason: reason))
        }
    }

    @inline(__always)
    mutating func handlePortIO(_ io: PortIOExit) {
        let length = io.size
        if io.direction == .read { statistics.portReads += 1 } else { statistics.portWrites += 1 }
        // `decode` guarantees the buffer holds count × size bytes; an exit built by hand might not.
        guard length > 0, io.count > 0, io.data.count >= io.count * length, let target = ports.device(at: UInt64(io.port))
        else {
            statistics.unclaimedPortAccesses += 1
            if io.direction == .read { io.data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            return
        }
        for element in 0..<io.count {
            let slice = UnsafeMutableRawBufferPointer(rebasing: io.data[element * length..<(element + 1) * length])
            if io.direction == .read {
                slice.initializeMemory(as: UInt8.self, repeating: 0)
                target.device.read(offset: target.offset, data: slice)
            } else {
                target.device.write(offset: target.offset, data: UnsafeRawBufferPointer(slice))
            }
        }
    }

    @inline(__always)
    mutating func handleMMIO(_ access: MMIOExit) {
        if access.direction == .read { statistics.mmioReads += 1 } else { statistics.mmioWrites += 1 }
        guard let target = mmio.device(at: access.address) else {
            statistics.unclaimedMMIOAccesses += 1
            if access.direction == .read { access.data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            return
        }
        if access.direction == .read {
            access.data.initializeMemory(as: UInt8.self, repeating: 0)
            target.device.read(offset: target.offset, data: access.data)
        } else {
            target.device.write(offset: target.offset, data: UnsafeRawBufferPointer(access.data))
        }
    }
}
