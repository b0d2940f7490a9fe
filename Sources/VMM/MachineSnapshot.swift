import Glibc
import KVM
import VMMCore

/// A full snapshot of a paused VM, as the state file holds it (the guest RAM is in the memory
/// file beside it). See docs/snapshots.md for what each piece is and why it is there.
///
/// Decoding is the first line of defence against a hostile or damaged state file: sizes, counts
/// and values that no VMM could have written are refused here with one line; what is left (a
/// device's registers, KVM's own structures) is checked again by the device that takes it and
/// by KVM itself.
public struct MachineSnapshot: Equatable, Sendable {
    /// The VM's configuration (`VMConfiguration`) as JSON: what the restored machine is built from.
    public var configuration: [UInt8]
    /// Where each RAM region lies in the guest and in the memory file.
    public var memory: [MemoryRegionRecord]
    /// The in-kernel interrupt controllers, PIT and clock.
    public var vm: VMKernelState
    /// One per vCPU, in id order.
    public var vcpus: [VCPUState]
    /// Each emulated device's state (`DeviceStateRecord`), in the order the machine was built.
    public var devices: [DeviceStateRecord]

    public init(
        configuration: [UInt8], memory: [MemoryRegionRecord], vm: VMKernelState, vcpus: [VCPUState], devices: [DeviceStateRecord]
    ) {
        self.configuration = configuration
        self.memory = memory
        self.vm = vm
        self.vcpus = vcpus
        self.devices = devices
    }

    public struct MemoryRegionRecord: Equatable, Sendable {
        public var guestAddress: UInt64
        public var size: UInt64
        public var fileOffset: UInt64

        public init(guestAddress: UInt64, size: UInt64, fileOffset: UInt64) {
            self.guestAddress = guestAddress
            self.size = size
            self.fileOffset = fileOffset
        }
    }

    /// One device: its name on the bus (`COM1`, `virtio-blk0`) and the bytes it exported.
    public struct DeviceStateRecord: Equatable, Sendable {
        public var name: String
        public var state: [UInt8]

        public init(name: String, state: [UInt8]) {
            self.name = name
            self.state = state
        }
    }

    // MARK: - Limits on what a state file may hold (checked before anything is allocated)

    static let maximumVCPUs = 255
    /// KVM_MAX_CPUID_ENTRIES.
    static let maximumCPUIDEntries = 256
    static let maximumMSRs = 4096
    static let maximumXSaveSize = 1 << 20
    static let maximumRegions = 16
    static let maximumDevices = 64
    static let maximumDeviceState = 1 << 20
    static let maximumConfiguration = 1 << 20

    // MARK: - Encoding

    /// The whole state file: header, payload, checksum.
    public func encoded() -> [UInt8] {
        var writer = StateWriter()
        writer.section("CONF") { $0.data(configuration) }
        writer.section("MEMR") { w in
            w.u32(UInt32(memory.count))
            for region in memory {
                w.u64(region.guestAddress)
                w.u64(region.size)
                w.u64(region.fileOffset)
            }
        }
        writer.section("VMST") { w in
            w.u32(UInt32(vm.irqchips.count))
            for chip in vm.irqchips { w.raw(chip.bytes) }
            w.optional(vm.pit) { $0.raw($1.bytes) }
            w.raw(vm.clock.bytes)
        }
        writer.section("VCPU") { w in
            w.u32(UInt32(vcpus.count))
            for vcpu in vcpus { Self.encode(vcpu, into: &w) }
        }
        writer.section("DEVS") { w in
            w.u32(UInt32(devices.count))
            for device in devices {
                w.string(device.name)
                w.data(device.state)
            }
        }
        return StateFile.encode(payload: writer.bytes)
    }

    static func encode(_ vcpu: VCPUState, into w: inout StateWriter) {
        w.u32(UInt32(vcpu.cpuid.count))
        for entry in vcpu.cpuid {
            for value in [entry.function, entry.index, entry.flags, entry.eax, entry.ebx, entry.ecx, entry.edx] { w.u32(value) }
        }
        w.raw(vcpu.mpState.bytes)
        w.raw(vcpu.registers.bytes)
        w.raw(vcpu.specialRegisters.bytes)
        w.optional(vcpu.xsave) { $0.data($1.bytes) }
        w.optional(vcpu.fpu) { $0.raw($1.bytes) }
        w.optional(vcpu.xcrs) { $0.raw($1.bytes) }
        w.raw(vcpu.debugRegisters.bytes)
        w.optional(vcpu.localAPIC) { $0.raw($1.bytes) }
        w.u32(UInt32(vcpu.msrs.count))
        for msr in vcpu.msrs {
            w.u32(msr.index)
            w.u64(msr.value)
        }
        w.raw(vcpu.events.bytes)
        w.u32(vcpu.tscKHz)
    }

    // MARK: - Decoding

    /// Reads and checks a whole state file. Every error is one line (`StateFormatError`).
    public init(decoding file: [UInt8]) throws(StateFormatError) {
        var reader = StateReader(try StateFile.decode(file))

        var conf = try reader.section("CONF")
        configuration = try conf.data(limit: Self.maximumConfiguration, "the configuration")
        try conf.finish("the configuration section")

        var regions = try reader.section("MEMR")
        let regionCount = try regions.count(limit: Self.maximumRegions, minimumSize: 24, "memory regions")
        guard regionCount >= 1 else { throw .impossible("no guest memory region") }
        var records: [MemoryRegionRecord] = []
        var nextOffset: UInt64 = 0
        var previousEnd: UInt64 = 0
        for index in 0..<regionCount {
            let record = MemoryRegionRecord(
                guestAddress: try regions.u64("memory region \(index)"), size: try regions.u64("memory region \(index)"),
                fileOffset: try regions.u64("memory region \(index)"))
            guard record.size > 0, record.size % 4096 == 0, record.guestAddress % 4096 == 0 else {
                throw .impossible("memory region \(index) (\(record.size) bytes at 0x\(String(record.guestAddress, radix: 16))) is empty or not 4 KiB aligned")
            }
            let (end, overflow) = record.guestAddress.addingReportingOverflow(record.size)
            guard !overflow, end <= 1 << 52, index == 0 || record.guestAddress >= previousEnd else {
                throw .impossible("memory region \(index) overlaps another or lies beyond 4 PiB")
            }
            guard record.fileOffset == nextOffset else {
                throw .impossible("memory region \(index) starts at byte \(record.fileOffset) of the memory file, not \(nextOffset)")
            }
            previousEnd = end
            nextOffset = record.fileOffset + record.size
            records.append(record)
        }
        try regions.finish("the memory section")
        memory = records

        var vmReader = try reader.section("VMST")
        let chipCount = try vmReader.count(limit: 3, minimumSize: IRQChipState.size, "interrupt controllers")
        guard chipCount == 0 || chipCount == 3 else { throw .impossible("\(chipCount) interrupt controllers (a PC has 0 or 3)") }
        var chips: [IRQChipState] = []
        for id in 0..<chipCount {
            let chip = try Self.blob(IRQChipState.self, &vmReader, "interrupt controller \(id)")
            guard chip.chipID == UInt32(id) else { throw .impossible("interrupt controller \(id) says it is chip \(chip.chipID)") }
            chips.append(chip)
        }
        let pit = try vmReader.optional("the in-kernel PIT") { (r: inout StateReader) throws(StateFormatError) in
            try Self.blob(PITState.self, &r, "the in-kernel PIT")
        }
        let clock = try Self.blob(ClockState.self, &vmReader, "the KVM clock")
        try vmReader.finish("the VM section")
        vm = VMKernelState(irqchips: chips, pit: pit, clock: clock)

        var vcpuReader = try reader.section("VCPU")
        let vcpuCount = try vcpuReader.count(limit: Self.maximumVCPUs, minimumSize: 512, "vCPUs")
        guard vcpuCount >= 1 else { throw .impossible("no vCPU") }
        var states: [VCPUState] = []
        for index in 0..<vcpuCount {
            states.append(try Self.decodeVCPU(&vcpuReader, index: index, hasIRQChip: chipCount == 3))
        }
        try vcpuReader.finish("the vCPU section")
        vcpus = states

        var deviceReader = try reader.section("DEVS")
        let deviceCount = try deviceReader.count(limit: Self.maximumDevices, minimumSize: 8, "devices")
        var records2: [DeviceStateRecord] = []
        for index in 0..<deviceCount {
            let name = try deviceReader.string(limit: 64, "the name of device \(index)")
            let state = try deviceReader.data(limit: Self.maximumDeviceState, "the state of device '\(name)'")
            records2.append(DeviceStateRecord(name: name, state: state))
        }
        try deviceReader.finish("the device section")
        devices = records2
        try reader.finish("the state file")
    }

    static func blob<T>(_ type: KVMStateBlob<T>.Type, _ reader: inout StateReader, _ what: String) throws(StateFormatError)
        -> KVMStateBlob<T>
    {
        let bytes = try reader.raw(count: KVMStateBlob<T>.size, what)
        do { return try KVMStateBlob<T>(bytes: bytes, name: what) } catch { throw .impossible(error.description) }
    }

    static func decodeVCPU(_ r: inout StateReader, index: Int, hasIRQChip: Bool) throws(StateFormatError) -> VCPUState {
        let name = "vCPU \(index)"
        let cpuidCount = try r.count(limit: maximumCPUIDEntries, minimumSize: 28, "CPUID entries of \(name)")
        guard cpuidCount >= 1 else { throw .impossible("\(name) has no CPUID entries") }
        var cpuid: [CPUIDEntry] = []
        for _ in 0..<cpuidCount {
            var values: [UInt32] = []
            for _ in 0..<7 { values.append(try r.u32("the CPUID of \(name)")) }
            cpuid.append(CPUIDEntry(function: values[0], index: values[1], flags: values[2], eax: values[3], ebx: values[4], ecx: values[5], edx: values[6]))
        }
        let mp = try blob(MPState.self, &r, "the MP state of \(name)")
        guard mp.state <= MPState.largestDefined else { throw .impossible("the MP state of \(name) is \(mp.state), not one KVM defines") }
        let registers = try blob(RawRegisters.self, &r, "the registers of \(name)")
        // RFLAGS bit 1 is always 1; bits 22–63 are reserved and always 0 (SDM vol. 1, 3.4.3).
        let rflags = registers.rflags
        guard rflags & 0x2 != 0, rflags >> 22 == 0 else {
            throw .impossible("RFLAGS of \(name) is 0x\(String(rflags, radix: 16)), which no x86 CPU can hold")
        }
        let special = try blob(RawSpecialRegisters.self, &r, "the special registers of \(name)")
        let xsave = try r.optional("the XSAVE area of \(name)") { (r: inout StateReader) throws(StateFormatError) in
            let bytes = try r.data(limit: maximumXSaveSize, "the XSAVE area of \(name)")
            guard bytes.count >= 4096, bytes.count % 64 == 0 else {
                throw .impossible("the XSAVE area of \(name) has \(bytes.count) bytes (KVM's are at least 4096, a multiple of 64)")
            }
            return XSaveState(bytes: bytes)
        }
        let fpu = try r.optional("the FPU state of \(name)") { (r: inout StateReader) throws(StateFormatError) in
            try blob(FPUState.self, &r, "the FPU state of \(name)")
        }
        guard (xsave == nil) != (fpu == nil) else { throw .impossible("\(name) needs exactly one of an XSAVE area and an FPU state") }
        let xcrs = try r.optional("the XCRs of \(name)") { (r: inout StateReader) throws(StateFormatError) in
            try blob(XCRState.self, &r, "the XCRs of \(name)")
        }
        if let xcrs, xcrs.count > XCRState.maximumCount { throw .impossible("\(name) has \(xcrs.count) XCRs (KVM has at most \(XCRState.maximumCount))") }
        let debug = try blob(DebugRegisterState.self, &r, "the debug registers of \(name)")
        let apic = try r.optional("the local APIC of \(name)") { (r: inout StateReader) throws(StateFormatError) in
            try blob(LocalAPICState.self, &r, "the local APIC of \(name)")
        }
        guard (apic != nil) == hasIRQChip else {
            throw .impossible(hasIRQChip ? "\(name) has no local APIC though the VM has an irqchip" : "\(name) has a local APIC but the VM has no irqchip")
        }
        let msrCount = try r.count(limit: maximumMSRs, minimumSize: 12, "MSRs of \(name)")
        var msrs: [MSRValue] = []
        var seen = Set<UInt32>()
        for _ in 0..<msrCount {
            let msr = MSRValue(index: try r.u32("the MSRs of \(name)"), value: try r.u64("the MSRs of \(name)"))
            guard seen.insert(msr.index).inserted else { throw .impossible("MSR 0x\(String(msr.index, radix: 16)) appears twice for \(name)") }
            msrs.append(msr)
        }
        let events = try blob(VCPUEventState.self, &r, "the pending events of \(name)")
        guard events.flags & ~VCPUEventState.knownFlags == 0 else {
            throw .impossible("the pending events of \(name) have unknown flags 0x\(String(events.flags, radix: 16))")
        }
        if events.exceptionInjected, events.exceptionVector >= 32 {
            throw .impossible("\(name) has exception vector \(events.exceptionVector) pending (exceptions are 0–31)")
        }
        let tsc = try r.u32("the TSC frequency of \(name)")
        guard tsc > 0 else { throw .impossible("the TSC frequency of \(name) is 0 kHz") }
        return VCPUState(
            cpuid: cpuid, mpState: mp, registers: registers, specialRegisters: special, xsave: xsave, fpu: fpu, xcrs: xcrs,
            debugRegisters: debug, localAPIC: apic, msrs: msrs, events: events, tscKHz: tsc)
    }
}

/// Why a snapshot could not be taken or restored, as one line.
public enum SnapshotError: Error, Equatable, Sendable, CustomStringConvertible {
    case format(StateFormatError)
    /// The host cannot run this snapshot (other CPU features, another TSC frequency).
    case incompatibleHost(String)
    /// The VM is not in a state to snapshot (not paused), or this kind of VM cannot be snapshotted yet.
    case notApplicable(String)
    /// A file could not be read or written.
    case file(path: String, problem: String)
    /// KVM or the VMM failed.
    case vmm(VMMError)

    public var description: String {
        switch self {
        case .format(let error): error.description
        case .incompatibleHost(let text): "this host cannot restore the snapshot: \(text)"
        case .notApplicable(let text): text
        case .file(let path, let problem): "\(path): \(problem)"
        case .vmm(let error): error.description
        }
    }
}

// MARK: - Host compatibility

extension MachineSnapshot {
    /// CPUID bits that KVM changes at run time from the guest's CR4 and APIC base (OSXSAVE, OSPKE,
    /// APIC): they say what the guest switched on, not what the host has.
    static let dynamicBits: [CPUIDKey: UInt32] = [
        CPUIDKey(leaf: 1, subleaf: 0, register: 2): 1 << 27,  // ECX.OSXSAVE
        CPUIDKey(leaf: 1, subleaf: 0, register: 3): 1 << 9,  // EDX.APIC
        CPUIDKey(leaf: 7, subleaf: 0, register: 2): 1 << 4,  // ECX.OSPKE
    ]
    /// The feature words compared: the leaves whose bits are instructions and CPU behaviours.
    static let featureWords: [CPUIDKey] = [
        CPUIDKey(leaf: 1, subleaf: 0, register: 2), CPUIDKey(leaf: 1, subleaf: 0, register: 3),
        CPUIDKey(leaf: 7, subleaf: 0, register: 1), CPUIDKey(leaf: 7, subleaf: 0, register: 2), CPUIDKey(leaf: 7, subleaf: 0, register: 3),
        CPUIDKey(leaf: 0xD, subleaf: 0, register: 0), CPUIDKey(leaf: 0xD, subleaf: 1, register: 0),
        CPUIDKey(leaf: 0x8000_0001, subleaf: 0, register: 2), CPUIDKey(leaf: 0x8000_0001, subleaf: 0, register: 3),
    ]

    struct CPUIDKey: Hashable {
        let leaf: UInt32
        let subleaf: UInt32
        /// 0 EAX, 1 EBX, 2 ECX, 3 EDX.
        let register: Int

        var name: String { "leaf 0x\(String(leaf, radix: 16)).\(subleaf) \(["EAX", "EBX", "ECX", "EDX"][register])" }

        func value(in entries: [CPUIDEntry]) -> UInt32 {
            guard let entry = entries.first(where: { $0.function == leaf && ($0.index == subleaf || $0.flags & 1 == 0) }) else { return 0 }
            return [entry.eax, entry.ebx, entry.ecx, entry.edx][register]
        }
    }

    /// Refuses a snapshot whose guest saw CPU features that the CPUID this host would give the same
    /// vCPU lacks: an instruction the guest checked for once would fault after the restore.
    static func checkFeatures(saved: [CPUIDEntry], offered: [CPUIDEntry], vcpu: Int) throws(SnapshotError) {
        for key in featureWords {
            let mask = ~(dynamicBits[key] ?? 0)
            let missing = key.value(in: saved) & mask & ~key.value(in: offered)
            if missing != 0 {
                throw .incompatibleHost(
                    "vCPU \(vcpu) saw CPU features this host's KVM does not offer (CPUID \(key.name) bits 0x\(String(missing, radix: 16)))")
            }
        }
    }
}

// MARK: - Taking and restoring the machine's KVM state

extension Machine {
    /// Whether KVM_CREATE_IRQCHIP and KVM_CREATE_PIT2 were made for this VM: asked of KVM (its
    /// GET fails with ENXIO without one), so no builder has to remember it.
    func inKernelDevices() throws(VMMError) -> (irqchip: Bool, pit: Bool) {
        func present(_ body: () throws(KVMError) -> Void) throws(VMMError) -> Bool {
            do {
                try body()
                return true
            } catch where error.errno == ENXIO || error.errno == EINVAL || error.errno == ENOENT {
                return false
            } catch {
                throw .kvm(error)
            }
        }
        return (
            try present { () throws(KVMError) in _ = try vm.irqchip(0) },
            try present { () throws(KVMError) in _ = try vm.pitState() }
        )
    }

    /// Reads the VM's and every vCPU's KVM state. The machine must be paused: every vCPU parked
    /// outside KVM_RUN with its last I/O completed (`runLoop` re-enters KVM_RUN with
    /// immediate_exit before it parks), so no vCPU changes another's state while it is read.
    ///
    /// The VM state comes first (PIC, IOAPIC, PIT, clock), then each vCPU with the MP state first
    /// (see `VCPU.saveState`).
    ///
    /// The vCPUs' state is read on the caller's thread, not on each vCPU's own: a parked vCPU
    /// thread is waiting on a condition variable outside KVM_RUN and will not touch its vCPU
    /// until the resume, and KVM serialises every ioctl on a vCPU (vcpu->mutex), so the reads
    /// cannot race it; asking each thread in turn would only add a round trip per vCPU. (A
    /// restore sets the state on the building thread before the vCPU threads exist, as booting
    /// sets the entry registers.)
    public func captureKernelState() throws(SnapshotError) -> (vm: VMKernelState, vcpus: [VCPUState]) {
        guard state == .paused else { throw .notApplicable("the VM is \(state.description), it must be paused to snapshot") }
        do {
            let devices = try inKernelDevices()
            let vmState = try vm.saveState(hasIRQChip: devices.irqchip, hasPIT: devices.pit)
            let indices = try system.msrIndexList()
            let xsaveSize = system.xsaveSize
            var states: [VCPUState] = []
            for vcpu in vcpus {
                states.append(try vcpu.saveState(msrIndices: indices, xsaveSize: xsaveSize, hasLocalAPIC: devices.irqchip))
            }
            return (vmState, states)
        } catch let error as KVMError {
            throw .vmm(.kvm(error))
        } catch let error as VMMError {
            throw .vmm(error)
        } catch {
            throw .vmm(.configuration("\(error)"))
        }
    }

    /// Writes the VM's in-kernel state back. Called after the irqchip and PIT are created (the
    /// builder's legacy-device step) and before any vCPU state is restored: the interrupt
    /// controllers route into the local APICs that the vCPU state then fills, and a pending
    /// interrupt restored in an APIC must find its IOAPIC routing already in place.
    public func restoreKernelState(_ saved: VMKernelState) throws(SnapshotError) {
        let devices: (irqchip: Bool, pit: Bool)
        do { devices = try inKernelDevices() } catch { throw .vmm(error) }
        guard devices.irqchip == !saved.irqchips.isEmpty else {
            throw .format(.impossible(saved.irqchips.isEmpty ? "no interrupt controller state for a VM that has one" : "interrupt controller state for a VM that has none"))
        }
        guard devices.pit == (saved.pit != nil) else {
            throw .format(.impossible(saved.pit == nil ? "no in-kernel PIT state for a VM that has one" : "in-kernel PIT state for a VM without one"))
        }
        do { try vm.restoreState(saved) } catch { throw .vmm(.kvm(error)) }
    }

    /// Creates one vCPU per saved state and restores each, after checking that this host can run
    /// it: the same TSC frequency (KVM_CAP_TSC_CONTROL is needed to scale it, and the guest's
    /// clocks were calibrated against it), the CPU features the guest saw (`offered(index)` is the
    /// CPUID this host would give vCPU `index` today, as KVM reads it back), KVM's MSR list and
    /// XSAVE size.
    public func restoreVCPUs(_ states: [VCPUState], offered: (Int) -> [CPUIDEntry]) throws(SnapshotError) {
        guard vcpus.isEmpty else { throw .notApplicable("the machine has vCPUs already") }
        let indices: Set<UInt32>
        do { indices = Set(try system.msrIndexList()) } catch { throw .vmm(.kvm(error)) }
        let xsaveSize = system.xsaveSize
        for (index, saved) in states.enumerated() {
            if let unknown = saved.msrs.first(where: { !indices.contains($0.index) }) {
                throw .incompatibleHost("vCPU \(index) has MSR 0x\(String(unknown.index, radix: 16)), which this host's KVM does not save or restore")
            }
            switch (saved.xsave, xsaveSize) {
            case (let area?, let size?) where area.bytes.count != size:
                throw .incompatibleHost("vCPU \(index)'s XSAVE area has \(area.bytes.count) bytes, this host's KVM uses \(size)")
            case (.some, nil):
                throw .incompatibleHost("vCPU \(index) has an XSAVE area and this host's KVM has no XSAVE")
            default: break
            }
            // The vCPU is made with the CPUID this host would give it today and that is read back
            // (KVM_GET_CPUID2): what KVM really gives a guest here, with any bits the host forces
            // on (KVM-PVM does) — the saved CPUID was read back the same way, so like is compared
            // with like. Then the saved CPUID replaces it (before the first KVM_RUN, KVM allows it).
            let vcpu: VCPU
            do { vcpu = try addVCPU(cpuid: offered(index)) } catch { throw .vmm(error) }
            do {
                try MachineSnapshot.checkFeatures(saved: saved.cpuid, offered: try vcpu.cpuid(), vcpu: index)
                let frequency = try vcpu.tscKHz()
                guard frequency == saved.tscKHz else {
                    throw SnapshotError.incompatibleHost(
                        "the guest's TSC runs at \(saved.tscKHz) kHz and this host's at \(frequency) kHz\(system.checkExtension(KVMCapability.tscControl) > 0 ? "" : " (this KVM cannot scale it: no KVM_CAP_TSC_CONTROL)")")
                }
                try vcpu.restoreState(saved)
            } catch let error as SnapshotError {
                throw error
            } catch let error as KVMError {
                throw .format(.impossible("KVM refused vCPU \(index)'s state: \(error.description)"))
            } catch {
                throw .vmm(.configuration("\(error)"))
            }
        }
    }
}

// MARK: - Files

extension GuestMemory {
    /// Writes every RAM region into a new file at `path` (mode 0600), one after the other, and says
    /// where each went. Pages that are all zero are not written: the file is made its full size
    /// first, so they read back as zero (a hole), and a mostly empty guest snapshots quickly;
    /// pages of anonymous memory the guest never touched are not even read (`untouchedChunks`).
    public func writeSnapshotFile(to path: String) throws(SnapshotError) -> [MachineSnapshot.MemoryRegionRecord] {
        // A VM restored from a memory file maps it: truncating and rewriting that very file would
        // pull pages from under the mapping (SIGBUS on the next read). Refuse it by inode.
        var existing = stat()
        if let backingFile, stat(path, &existing) == 0, UInt64(existing.st_dev) == backingFile.device,
            UInt64(existing.st_ino) == backingFile.inode
        {
            throw .file(path: path, problem: "this VM's RAM is mapped from this file (it was restored from it): write the snapshot to another file")
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
        var records: [MachineSnapshot.MemoryRegionRecord] = []
        var offset = 0
        let chunk = 64 << 10
        let pagemap = isFileBacked ? -1 : open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        defer { if pagemap >= 0 { close(pagemap) } }
        for region in regions {
            let untouched = Self.untouchedChunks(region, chunk: chunk, pagemap: pagemap)
            var done = 0
            while done < region.size {
                let length = min(chunk, region.size - done)
                let start = region.host + done
                if !(untouched?[done / chunk] ?? false), !Self.isZero(start, length) {
                    try Self.writeAll(fd, start, length, at: offset + done, path: path)
                }
                done += length
            }
            records.append(.init(guestAddress: region.start.rawValue, size: UInt64(region.size), fileOffset: UInt64(offset)))
            offset += region.size
        }
        return records
    }

    /// For anonymous memory: which `chunk`-sized pieces of `region` the guest never touched, from
    /// /proc/self/pagemap (a page neither present nor swapped was never written and reads as zero),
    /// so they are skipped without reading them (reading would fault in a zero page for each).
    /// Nil when the pagemap cannot be read: then every chunk is looked at.
    static func untouchedChunks(_ region: GuestMemoryRegion, chunk: Int, pagemap: Int32) -> [Bool]? {
        guard pagemap >= 0 else { return nil }
        let page = 4096
        let pages = region.size / page
        var entries = [UInt64](repeating: 0, count: pages)
        let firstPage = Int(UInt(bitPattern: region.host)) / page
        let wanted = pages * 8
        let read = entries.withUnsafeMutableBytes { raw -> Int in
            var done = 0
            while done < wanted {
                let count = pread(pagemap, raw.baseAddress! + done, wanted - done, off_t((firstPage * 8) + done))
                if count < 0, errno == EINTR { continue }
                if count <= 0 { break }
                done += count
            }
            return done
        }
        guard read == wanted else { return nil }
        let perChunk = chunk / page
        let presentOrSwapped: UInt64 = 0b11 << 62
        return stride(from: 0, to: pages, by: perChunk).map { first in
            entries[first..<min(pages, first + perChunk)].allSatisfy { $0 & presentOrSwapped == 0 }
        }
    }

    static func isZero(_ start: UnsafeMutableRawPointer, _ length: Int) -> Bool {
        let words = UnsafeRawBufferPointer(start: start, count: length).bindMemory(to: UInt64.self)
        var accumulated: UInt64 = 0
        for word in words { accumulated |= word }
        return accumulated == 0
    }

    static func writeAll(_ fd: Int32, _ start: UnsafeMutableRawPointer, _ length: Int, at offset: Int, path: String) throws(SnapshotError) {
        var written = 0
        while written < length {
            let count = pwrite(fd, start + written, length - written, off_t(offset + written))
            if count < 0 {
                if errno == EINTR { continue }
                throw .file(path: path, problem: String(cString: strerror(errno)))
            }
            written += count
        }
    }

    /// Maps a snapshot's memory file (`MAP_PRIVATE`: see `GuestMemory(mappingFile:…)`).
    public static func mapSnapshotFile(_ path: String, regions: [MachineSnapshot.MemoryRegionRecord]) throws(SnapshotError) -> GuestMemory {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
        defer { close(fd) }  // the mappings keep the file
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
        guard (status.st_mode & S_IFMT) == S_IFREG else { throw .file(path: path, problem: "not a regular file") }
        let total = regions.reduce(UInt64(0)) { $0 &+ $1.size }
        guard UInt64(status.st_size) == total else {
            throw .file(path: path, problem: "the memory file has \(status.st_size) bytes, the snapshot's guest RAM \(total)")
        }
        do {
            return try GuestMemory(
                mappingFile: fd, fileSize: Int(status.st_size),
                layout: regions.map { (start: GuestAddress($0.guestAddress), size: Int($0.size), offset: Int($0.fileOffset)) })
        } catch {
            throw .file(path: path, problem: error.description)
        }
    }
}

extension MachineSnapshot {
    /// Writes the state file: to a temporary name beside it, then renamed, so a crash never leaves
    /// half a state file under the name asked for.
    public func write(to path: String) throws(SnapshotError) {
        let bytes = encoded()
        let temporary = "\(path).tmp\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .file(path: path, problem: String(cString: strerror(errno))) }
        let failure: SnapshotError? = bytes.withUnsafeBytes { raw -> SnapshotError? in
            do throws(SnapshotError) {
                try GuestMemory.writeAll(fd, UnsafeMutableRawPointer(mutating: raw.baseAddress!), raw.count, at: 0, path: path)
                return nil
            } catch { return error }
        }
        if let failure {
            close(fd)
            unlink(temporary)
            throw failure
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let problem = String(cString: strerror(errno))
            unlink(temporary)
            throw .file(path: path, problem: problem)
        }
    }

    /// Reads and checks a state file.
    public init(contentsOf path: String) throws(SnapshotError) {
        let bytes: [UInt8]
        do { bytes = try readHostFile(path, limit: StateFile.maximumPayload + 64) } catch {
            if case .file(_, let problem) = error { throw .file(path: path, problem: problem) }
            throw .vmm(error)
        }
        do { try self.init(decoding: bytes) } catch { throw .format(error) }
    }
}
