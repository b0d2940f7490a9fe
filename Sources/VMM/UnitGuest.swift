import Devices
import KVM
import Synchronization
import VMMCore

/// A small guest program run in a fresh VM: the way tests (and `swiftkvm run --firmware`) run
/// firmware.
///
/// ```swift
/// let guest = try UnitGuest(contentsOf: "Firmware/build/hello-long.bin", mode: .long)
/// let run = try guest.run()
/// #expect(run.outcome == .exited(status: 0))
/// #expect(run.consoleText == "Hello from long mode!\n")
/// ```
///
/// The guest sees the unit-guest ABI (`Firmware/include/guest.S.inc`): COM1 at 0x3F8 prints,
/// a byte to port 0xF4 ends the run with that status, a 32-bit write to port 0xF8 reports a value,
/// and in the 64-bit modes an exception ends the run as `.exception`. The VMM's tables sit in the top
/// 64 KiB of RAM (`UnitGuestLayout`).
public struct UnitGuest: Sendable {
    public var program: [UInt8]
    public var mode: CPUMode
    /// Guest RAM in bytes, from guest address 0; a multiple of 4 KiB.
    public var memorySize: Int
    /// Where the program is copied.
    public var loadAddress: GuestAddress
    /// Where the first instruction is; the load address when nil.
    public var entry: GuestAddress?
    /// After this long the vCPU is kicked out of KVM_RUN and the outcome is `.timedOut`; nil waits forever.
    public var timeLimit: Duration?
    /// Where to write one line per exit; nil for none.
    public var trace: ExitTrace?
    /// How many vCPUs run the program. Each starts at the entry with the same registers (the stack
    /// included: a program for several vCPUs must not use the stack before it picks its own); each
    /// one's CPUID gives it its own APIC id (leaf 1, EBX[31:24]) and the count (EBX[23:16]). The run
    /// ends when any of them ends it (debug exit, HLT, an exception).
    public var cpus = 1

    public static let defaultMemorySize = 2 << 20

    public init(
        program: [UInt8], mode: CPUMode, memorySize: Int = UnitGuest.defaultMemorySize,
        loadAddress: GuestAddress = 0, entry: GuestAddress? = nil, timeLimit: Duration? = .seconds(30)
    ) {
        self.program = program
        self.mode = mode
        self.memorySize = memorySize
        self.loadAddress = loadAddress
        self.entry = entry
        self.timeLimit = timeLimit
    }

    /// A guest whose program is the flat binary at `path`.
    public init(
        contentsOf path: String, mode: CPUMode, memorySize: Int = UnitGuest.defaultMemorySize,
        loadAddress: GuestAddress = 0, entry: GuestAddress? = nil, timeLimit: Duration? = .seconds(30)
    ) throws(VMMError) {
        let bytes = try readHostFile(path, limit: UnitGuestLayout.maximumMemory)
        guard !bytes.isEmpty else { throw .file(path: path, problem: "the file is empty, there is no program to run") }
        self.init(
            program: bytes, mode: mode, memorySize: memorySize, loadAddress: loadAddress, entry: entry,
            timeLimit: timeLimit)
    }

    /// Checks that the program, its entry point and the VMM's tables fit the memory.
    public func validate() throws(VMMError) {
        guard cpus >= 1 else { throw .configuration("a unit guest needs at least one vCPU, not \(cpus)") }
        let minimum = UnitGuestLayout.minimumMemory(for: mode)
        guard memorySize >= minimum, memorySize <= UnitGuestLayout.maximumMemory, memorySize % 4096 == 0 else {
            throw .configuration(
                "guest memory of \(memorySize) bytes does not work for \(mode) mode: use a multiple of 4 KiB from \(minimum / 1024) KiB to 4 GiB")
        }
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        let usable = layout.reservedBase
        let (end, overflow) = loadAddress.rawValue.addingReportingOverflow(UInt64(program.count))
        guard !overflow, end <= usable else {
            throw .configuration(
                "a \(program.count)-byte program loaded at \(loadAddress) does not fit below \(GuestAddress(usable)) (guest RAM \(memorySize) bytes\(mode == .real ? "" : ", less the 64 KiB the VMM reserves at the top")): give more memory or a lower load address")
        }
        let start = entry ?? loadAddress
        guard start.rawValue < usable else {
            throw .configuration("the entry point \(start) lies outside the guest's usable RAM (below \(GuestAddress(usable)))")
        }
        if mode == .real, start.rawValue >= 0x10_0000 {
            throw .configuration("a real-mode entry point must lie below 1 MiB; \(start) does not")
        }
    }

    /// Builds the VM, runs the guest to its end and returns what happened.
    ///
    /// - Parameters:
    ///   - system: the `/dev/kvm` to use; the process's shared one by default.
    ///   - console: receives each byte the guest writes to COM1 as it is written (output is also collected in the result).
    ///   - prepare: runs after the program is loaded and before the guest starts: put test data in memory here.
    ///   - started: receives the machine just before its vCPU starts, e.g. to stop it from a signal handler.
    ///   - reused: the RAM of an earlier run of this guest, kept across a reset (the program is
    ///     copied in again; the rest stays as the guest left it). Its size must be `memorySize`.
    ///   - paused: start with the vCPUs parked, until `Machine.resume()`.
    ///   - snapshot: restore this snapshot instead of booting (`reused` is then its mapped memory
    ///     file): the program is not copied and `prepare` is not called; the vCPUs get the saved state.
    public func run(
        system: KVMSystem? = nil,
        memory reused: GuestMemory? = nil,
        paused: Bool = false,
        console: (@Sendable (UInt8) -> Void)? = nil,
        prepare: (GuestMemory) throws -> Void = { _ in },
        started: (Machine) -> Void = { _ in },
        restoring snapshot: MachineSnapshot? = nil
    ) throws -> GuestRun {
        try validate()
        let kvm: KVMSystem
        let cpuid: [CPUIDEntry]
        do {
            if let system { kvm = system } else { kvm = try HostKVM.system() }
            cpuid = try HostKVM.supportedCPUID()
        } catch {
            throw VMMError.kvm(error)
        }
        try kvm.checkVCPUCount(cpus)
        let memory: GuestMemory
        if let reused {
            guard reused.size == memorySize else {
                throw VMMError.configuration("the kept guest RAM has \(reused.size) bytes, the guest asks for \(memorySize)")
            }
            memory = reused
        } else {
            do { memory = try GuestMemory(size: memorySize) } catch { throw VMMError.memory(error) }
        }
        let layout = UnitGuestLayout(memorySize: memorySize, mode: mode)
        if snapshot == nil {
            do {
                try memory.write(program, at: loadAddress)
                try layout.install(in: memory)
            } catch {
                throw VMMError.memory(error)
            }
            try prepare(memory)
        }

        let machine = try Machine(system: kvm, memory: memory)
        machine.trace = trace
        let output = ConsoleBuffer(forward: console)
        let reports = ReportPort()
        try machine.addPortDevice(TransmitOnlySerial { output.append($0) }, at: TransmitOnlySerial.com1, count: TransmitOnlySerial.portCount)
        try machine.addPortDevice(DebugExitPort { [unowned machine] in machine.requestStop(.exited(status: $0)) }, at: DebugExitPort.port)
        try machine.addPortDevice(reports, at: ReportPort.port)
        if mode == .long || mode == .user {
            let stub = ExceptionStubPort(memory: memory, frame: GuestAddress(layout.exceptionFrame)) { [unowned machine] in
                machine.requestStop($0)
            }
            try machine.addPortDevice(stub, at: UnitGuestLayout.exceptionPort)
        }

        if let snapshot {
            // The snapshot's second entry into the same builder: the devices above are the
            // same (they hold no state in a unit guest), the program and tables are in the
            // mapped RAM already, and the vCPUs come from the saved state instead of the entry.
            guard snapshot.vcpus.count == cpus else {
                throw SnapshotError.format(.impossible("\(snapshot.vcpus.count) vCPU states for a VM of \(cpus) vCPUs"))
            }
            guard snapshot.devices.isEmpty else {
                throw SnapshotError.format(.impossible("device state '\(snapshot.devices[0].name)' for a unit guest, whose devices hold none"))
            }
            try machine.restoreKernelState(snapshot.vm)
            try machine.restoreVCPUs(snapshot.vcpus) { index in
                CPUIDPolicy().entries(from: cpuid, vcpu: UInt32(index), of: UInt32(cpus))
            }
        }
        for index in 0..<(snapshot == nil ? cpus : 0) {
            let vcpu = try machine.addVCPU(cpuid: CPUIDPolicy().entries(from: cpuid, vcpu: UInt32(index), of: UInt32(cpus)))
            do {
                let (registers, special) = layout.cpuState(entry: (entry ?? loadAddress).rawValue, from: try vcpu.specialRegisters())
                try vcpu.setSpecialRegisters(special)
                try vcpu.setRegisters(registers)
            } catch {
                throw VMMError.kvm(error)
            }
        }
        started(machine)
        let report = try machine.run(timeLimit: timeLimit, paused: paused)
        return GuestRun(
            outcome: report.outcome, console: output.bytes, reports: reports.values, registers: report.registers,
            specialRegisters: report.specialRegisters, memory: memory, statistics: report.statistics,
            duration: report.duration, vcpus: report.vcpus, stoppedBy: report.stoppedBy)
    }
}

/// What a unit guest left behind.
public struct GuestRun: @unchecked Sendable {
    public let outcome: GuestOutcome
    /// Every byte written to COM1, in order.
    public let console: [UInt8]
    /// The values written to the report port, in order.
    public let reports: [UInt32]
    /// The vCPU's registers at the end (nil only if KVM would not give them).
    public let registers: Registers?
    public let specialRegisters: SpecialRegisters?
    /// Guest RAM as the guest left it; still readable after the VM is gone.
    public let memory: GuestMemory
    public let statistics: ExitStatistics
    public let duration: Duration
    /// The vCPU's exits and where its time went.
    public let vcpus: [VCPUReport]
    /// The vCPU whose exit ended the run (nil when a device, the host or the time limit did).
    public let stoppedBy: Int?

    /// The console output decoded as UTF-8 (invalid bytes become U+FFFD).
    public var consoleText: String { String(decoding: console, as: UTF8.self) }
}

/// Collects console bytes (bounded, so a guest cannot exhaust host memory) and passes each on.
final class ConsoleBuffer: @unchecked Sendable {
    static let capacity = 16 << 20
    private let collected = Mutex<[UInt8]>([])
    private let forward: (@Sendable (UInt8) -> Void)?

    init(forward: (@Sendable (UInt8) -> Void)?) { self.forward = forward }

    func append(_ byte: UInt8) {
        collected.withLock { if $0.count < Self.capacity { $0.append(byte) } }
        forward?(byte)
    }

    var bytes: [UInt8] { collected.withLock { $0 } }
}

/// Port 0xF9, written by the unit-guest exception stub once the CPU's interrupt frame (and the
/// vector the stub pushed) sits at a fixed place on the exception stack. The frame is guest memory,
/// so it is read with bounds checks; a guest that writes the port itself gets whatever it left there.
final class ExceptionStubPort: BusDevice {
    let memory: GuestMemory
    let frame: GuestAddress
    let report: (GuestOutcome) -> Void

    init(memory: GuestMemory, frame: GuestAddress, report: @escaping (GuestOutcome) -> Void) {
        self.memory = memory
        self.frame = frame
        self.report = report
    }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0xFF)
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        do {
            let vector = try memory.load(UInt64.self, at: frame)
            let errorCode = try memory.load(UInt64.self, at: GuestAddress(frame.rawValue + 8))
            let rip = try memory.load(UInt64.self, at: GuestAddress(frame.rawValue + 16))
            report(.exception(vector: UInt8(truncatingIfNeeded: vector), errorCode: errorCode, rip: rip))
        } catch {
            report(.vmmError("the exception frame at \(frame) is not in guest RAM"))
        }
    }
}
