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
    /// Port and MMIO exits by the device that took them, keyed by `Bus.Entry.label`.
    public var deviceExits: [String: Int] = [:]

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
        sum.deviceExits.merge(rhs.deviceExits, uniquingKeysWith: +)
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
    private var counts = ExitStatistics()
    /// Exits taken by each entry of `ports` and of `mmio`, by position (cheaper than a dictionary per exit).
    private var portEntryExits: [Int]
    private var mmioEntryExits: [Int]
    /// Each entry's `Bus.Entry.label`, made once: a label asks the runtime for the device's type
    /// name, far too slow to do on every exit.
    private let portLabels: [String]
    private let mmioLabels: [String]
    /// Where the last port or MMIO exit went, by position in its bus (nil: unclaimed, or another exit).
    private enum Target { case port(Int), mmio(Int) }
    private var lastTarget: Target?

    public init(ports: Bus, mmio: Bus) {
        self.ports = ports
        self.mmio = mmio
        portEntryExits = Array(repeating: 0, count: ports.entries.count)
        mmioEntryExits = Array(repeating: 0, count: mmio.entries.count)
        portLabels = ports.entries.map(\.label)
        mmioLabels = mmio.entries.map(\.label)
    }

    /// The label of the device the last port or MMIO exit went to (nil: unclaimed, or another exit).
    public var lastDevice: String? {
        switch lastTarget {
        case .port(let index): portLabels[index]
        case .mmio(let index): mmioLabels[index]
        case nil: nil
        }
    }

    /// What the guest made the VMM do so far.
    public var statistics: ExitStatistics {
        var result = counts
        for (label, exits) in zip(portLabels, portEntryExits) where exits > 0 { result.deviceExits["\(label) (ports)", default: 0] += exits }
        for (label, exits) in zip(mmioLabels, mmioEntryExits) where exits > 0 { result.deviceExits["\(label) (MMIO)", default: 0] += exits }
        return result
    }

    public mutating func handle(_ exit: VCPUExit) -> ExitAction {
        lastTarget = nil
        switch exit {
        case .portIO(let io):
            handlePortIO(io)
            return .resume
        case .mmio(let access):
            handleMMIO(access)
            return .resume
        case .halt:
            counts.halts += 1
            return .stop(.halted)
        case .interrupted:
            counts.interruptions += 1
            return .resume
        case .shutdown:
            counts.other += 1
            return .stop(.shutdown)
        case .failedEntry(let reason, _):
            counts.other += 1
            return .stop(.failedEntry(hardwareReason: reason))
        case .internalError(let suberror, _):
            counts.other += 1
            return .stop(.internalError(suberror: suberror))
        case .systemEvent:
            counts.other += 1
            return .stop(.shutdown)
        case .unhandled(let reason):
            counts.other += 1
            return .stop(.unhandledExit(reason: reason))
        }
    }

    @inline(__always)
    mutating func handlePortIO(_ io: PortIOExit) {
        let length = io.size
        if io.direction == .read { counts.portReads += 1 } else { counts.portWrites += 1 }
        // `decode` guarantees the buffer holds count × size bytes; an exit built by hand might not.
        guard length > 0, io.count > 0, io.data.count >= io.count * length, let index = ports.entryIndex(at: UInt64(io.port))
        else {
            counts.unclaimedPortAccesses += 1
            if io.direction == .read { io.data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            return
        }
        let entry = ports.entries[index]
        let target = (device: entry.device, offset: UInt64(io.port) - entry.start)
        portEntryExits[index] += 1
        lastTarget = .port(index)
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
        if access.direction == .read { counts.mmioReads += 1 } else { counts.mmioWrites += 1 }
        guard let index = mmio.entryIndex(at: access.address) else {
            counts.unclaimedMMIOAccesses += 1
            if access.direction == .read { access.data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            return
        }
        let entry = mmio.entries[index]
        let target = (device: entry.device, offset: access.address - entry.start)
        mmioEntryExits[index] += 1
        lastTarget = .mmio(index)
        if access.direction == .read {
            access.data.initializeMemory(as: UInt8.self, repeating: 0)
            target.device.read(offset: target.offset, data: access.data)
        } else {
            target.device.write(offset: target.offset, data: UnsafeRawBufferPointer(access.data))
        }
    }
}
