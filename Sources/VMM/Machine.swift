import Dispatch
import Glibc
import KVM
import Synchronization
import VMMCore

/// The process's `/dev/kvm` and what it reports that never changes: opened once, on first use.
public enum HostKVM {
    private static let opened = Result { () throws(KVMError) -> KVMSystem in try KVMSystem() }
    private static let cpuid = Result { () throws(KVMError) -> [CPUIDEntry] in try opened.get().supportedCPUID() }

    /// The shared `/dev/kvm`, or the error that opening it gave (with a hint on how to fix it).
    public static func system() throws(KVMError) -> KVMSystem { try opened.get() }
    /// KVM_GET_SUPPORTED_CPUID, asked once per process.
    public static func supportedCPUID() throws(KVMError) -> [CPUIDEntry] { try cpuid.get() }
}

extension KVMSystem {
    /// Throws a configuration error when a VM of `count` vCPUs is more than KVM allows (KVM_CAP_MAX_VCPUS).
    func checkVCPUCount(_ count: Int) throws(VMMError) {
        let maximum = Int(checkExtension(KVMCapability.maxVCPUs))
        if maximum > 0, count > maximum {
            throw .configuration("\(count) vCPUs are more than the \(maximum) vCPUs this host's KVM allows")
        }
    }
}

/// What a finished run reports, per vCPU and in total.
public struct RunReport: Sendable {
    public let outcome: GuestOutcome
    public let statistics: ExitStatistics
    /// vCPU 0's registers when it stopped (nil if they could not be read).
    public let registers: Registers?
    public let specialRegisters: SpecialRegisters?
    /// From the first KVM_RUN to the last vCPU thread's end.
    public let duration: Duration
    /// Each vCPU's exits and where its time went, in vCPU order.
    public let vcpus: [VCPUReport]
    /// The vCPU whose exit decided the outcome (a triple fault on vCPU 1 says 1); nil when a device,
    /// the host or the time limit ended the run.
    public let stoppedBy: Int?
}

/// A virtual machine assembled from its parts: KVM's VM, guest memory, the two buses and the vCPUs.
///
/// The machine runs each vCPU on a thread of its own and stops them all when any of them (or a
/// device, or the host) requests a stop through `stopSignal`.
public final class Machine: @unchecked Sendable {
    /// Guest-physical pages KVM needs outside RAM for Intel's real-mode support (KVM_SET_TSS_ADDR
    /// takes three pages, KVM_SET_IDENTITY_MAP_ADDR one), just below the 4 GiB boundary's BIOS area.
    public static let tssAddress: UInt64 = 0xFFFB_D000
    public static let identityMapAddress: UInt64 = 0xFFFB_C000

    /// How long the machine keeps kicking a vCPU that will not stop before giving up on it.
    public static let kickPatience: Duration = .seconds(10)

    public let system: KVMSystem
    public let vm: VirtualMachine
    public let memory: GuestMemory
    public var ports = Bus()
    public var mmio = Bus()
    public let stopSignal = StopSignal()
    /// When set before `run`, every exit is written to it (`--trace`).
    public var trace: ExitTrace?
    /// Boot milestones; the machine records guest entry and end, its owner the rest.
    public let milestones: BootMilestones
    public private(set) var vcpus: [VCPU] = []
    private let threads = Mutex<[pthread_t]>([])
    /// The index of the vCPU whose exit decided the outcome, or -1.
    private let decidingVCPU = Atomic<Int>(-1)
    /// Pause and resume: the messages between a controller and the vCPU threads.
    let control = RunControl()
    /// Device workers quieted while the machine is paused, in the order they were added.
    private let workers = Mutex<[any PausableWorker]>([])
    /// Each vCPU's figures as its thread last published them (every `livePublishInterval` exits,
    /// and whenever it is kicked): what the API's live statistics read while the VM runs.
    private let live = Mutex<[Int: VCPUReport]>([:])
    static let livePublishInterval = 64
    /// How long `pause` waits for every vCPU to leave KVM_RUN by default.
    public static let pausePatience: Duration = .seconds(5)

    /// Creates the VM and gives it `memory`, one KVM memory slot per region.
    public init(system: KVMSystem, memory: GuestMemory, milestones: BootMilestones = BootMilestones()) throws(VMMError) {
        self.system = system
        self.memory = memory
        self.milestones = milestones
        do {
            vm = try system.makeVirtualMachine()
            try vm.setIdentityMapAddress(Self.identityMapAddress)
            try vm.setTSSAddress(Self.tssAddress)
            for (slot, region) in memory.regions.enumerated() {
                try vm.setUserMemoryRegion(
                    slot: UInt32(slot), guestAddress: region.start.rawValue, size: UInt64(region.size), hostAddress: region.host)
            }
        } catch {
            throw .kvm(error)
        }
    }

    /// Creates the next vCPU (KVM_CREATE_VCPU) with the host's supported CPUID.
    @discardableResult
    public func addVCPU(cpuid: [CPUIDEntry]) throws(VMMError) -> VCPU {
        do {
            let vcpu = try vm.makeVCPU(id: UInt32(vcpus.count))
            try vcpu.setCPUID(cpuid)
            vcpus.append(vcpu)
            return vcpu
        } catch {
            throw .kvm(error)
        }
    }

    /// Places a device on `count` I/O ports from `port`.
    public func addPortDevice(_ device: any BusDevice, at port: UInt16, count: UInt64 = 1) throws(VMMError) {
        do { try ports.insert(device, at: UInt64(port), length: count) } catch { throw .bus(error) }
    }

    /// Places a device on `length` bytes of guest-physical address space from `address`.
    public func addMMIODevice(_ device: any BusDevice, at address: GuestAddress, length: UInt64) throws(VMMError) {
        do { try mmio.insert(device, at: address.rawValue, length: length) } catch { throw .bus(error) }
    }

    /// Ends the run with `outcome` (unless it has ended already) and kicks every vCPU out of KVM_RUN.
    /// Safe from any thread, including a vCPU's own.
    public func requestStop(_ outcome: GuestOutcome) { stop(outcome) }

    /// `requestStop`, saying whether this call decided the outcome.
    @discardableResult
    private func stop(_ outcome: GuestOutcome) -> Bool {
        let decided = stopSignal.request(outcome)
        kickAll()
        control.wakeForStop()
        return decided
    }

    /// Kicks every vCPU thread but the caller's out of KVM_RUN. A vCPU thread that asks for
    /// something sees it itself after its current exit.
    private func kickAll() {
        let running = threads.withLock { $0 }
        let current = pthread_self()
        for (index, thread) in running.enumerated() where index < vcpus.count && pthread_equal(thread, current) == 0 {
            Kick.kick(vcpus[index], on: thread)
        }
    }

    /// Every vCPU's exits and time so far, while the machine runs (a paused vCPU published its
    /// figures when it was kicked; a running one at most `livePublishInterval` exits ago).
    public var liveReports: [VCPUReport] {
        live.withLock { reports in reports.keys.sorted().compactMap { reports[$0] } }
    }

    /// Where the machine is: not started, running, paused or finished.
    public var state: MachineState { control.currentState }

    /// Adds a device worker that `pause` quiets after the vCPUs and `resume` wakes before them.
    public func addWorker(_ worker: any PausableWorker) {
        workers.withLock { $0.append(worker) }
    }

    /// Parks every vCPU outside KVM_RUN, then quiets every device worker; returns when all are.
    /// Call from any thread but a vCPU's (a vCPU cannot wait for itself to park).
    public func pause(timeout: Duration = Machine.pausePatience) throws(RunControlError) {
        try control.pause(timeout: timeout) { kickAll() }
        for worker in workers.withLock({ $0 }) { worker.pause() }
    }

    /// Wakes the device workers, then lets the vCPUs continue exactly where they stopped.
    public func resume(timeout: Duration = Machine.pausePatience) throws(RunControlError) {
        guard control.currentState == .paused else { throw .wrongState(control.currentState, wanted: "paused to resume") }
        for worker in workers.withLock({ $0 }).reversed() { worker.resume() }
        try control.resume(timeout: timeout)
    }

    /// Runs every vCPU on its own thread until one of them, a device or the host stops the machine,
    /// or until `timeLimit` passes (then the outcome is `.timedOut`).
    ///
    /// With `paused`, the vCPUs start parked: the VM is `.paused` until `resume()`.
    public func run(timeLimit: Duration? = nil, paused: Bool = false) throws(VMMError) -> RunReport {
        guard !vcpus.isEmpty else { throw .configuration("the machine has no vCPU") }
        decidingVCPU.store(-1, ordering: .releasing)
        do { try Kick.installHandler() } catch { throw .kvm(error) }
        control.begin(vcpus: vcpus.count, paused: paused)
        defer { control.finish() }

        let finished = DispatchSemaphore(value: 0)
        let results = Mutex<[Int: (VCPUReport, Registers?, SpecialRegisters?)]>([:])
        let clock = ContinuousClock()
        let start = clock.now
        var started: [OSThread] = []
        for (index, vcpu) in vcpus.enumerated() {
            let thread: OSThread
            do {
                thread = try OSThread(name: "vcpu\(index)", guestFacing: true) { [self] in
                    let report = runLoop(vcpu, index: index)
                    control.vcpuFinished()
                    let registers = try? vcpu.registers()
                    let special = try? vcpu.specialRegisters()
                    results.withLock { $0[index] = (report, registers, special) }
                    finished.signal()
                }
            } catch {
                requestStop(.vmmError(error.description))
                for _ in started.count..<vcpus.count { control.vcpuFinished() }
                for thread in started { thread.join() }
                throw error
            }
            started.append(thread)
            threads.withLock { $0.append(thread.handle) }
        }
        // A stop requested before a thread's handle was recorded missed its kick: kick again now.
        if stopSignal.isRequested { requestStop(.stopped) }

        // A vCPU loop ends only once a stop was requested, so the first thread to finish means the
        // run is over; until then wait for it, or for the deadline.
        var remaining = started.count
        if let timeLimit {
            if finished.wait(timeout: .after(timeLimit)) == .success { remaining -= 1 } else { requestStop(.timedOut) }
        } else {
            finished.wait()
            remaining -= 1
        }
        // The others were kicked by that stop request; kick again until all are out. One kick
        // suffices, but a kick is cheap and a hang is not.
        let givingUp = clock.now + Self.kickPatience
        while remaining > 0, clock.now < givingUp {
            if finished.wait(timeout: .now() + .milliseconds(50)) == .success {
                remaining -= 1
            } else {
                requestStop(.stopped)
            }
        }
        let collected = results.withLock { $0 }
        if remaining > 0 {
            // A vCPU that ignores kicks must not hang the caller: leave its thread behind (it keeps
            // the machine alive, so nothing it touches is freed) and say so.
            for (index, thread) in started.enumerated() {
                if collected[index] == nil { thread.detach() } else { thread.join() }
            }
            stopSignal.request(.vmmError("a vCPU did not leave KVM_RUN within \(Self.kickPatience) of being kicked"))
            let stuck = (0..<started.count).filter { collected[$0] == nil }.map { "vcpu\($0)" }
            trace?.flush()
            let reports = collected.keys.sorted().compactMap { collected[$0]?.0 }
            return RunReport(
                outcome: .vmmError("\(stuck.joined(separator: ", ")) did not leave KVM_RUN within \(Self.kickPatience) of being kicked"),
                statistics: reports.reduce(ExitStatistics()) { $0 + $1.statistics }, registers: collected[0]?.1,
                specialRegisters: collected[0]?.2, duration: clock.now - start, vcpus: reports, stoppedBy: nil)
        }
        for thread in started { thread.join() }
        let duration = clock.now - start
        threads.withLock { $0.removeAll() }
        milestones.record(.end)
        trace?.flush()

        let reports = collected.keys.sorted().compactMap { collected[$0]?.0 }
        let decider = decidingVCPU.load(ordering: .acquiring)
        return RunReport(
            outcome: stopSignal.reason ?? .stopped, statistics: reports.reduce(ExitStatistics()) { $0 + $1.statistics },
            registers: collected[0]?.1, specialRegisters: collected[0]?.2, duration: duration, vcpus: reports,
            stoppedBy: decider >= 0 ? decider : nil)
    }

    /// One vCPU's KVM_RUN loop: enter, dispatch the exit, repeat until a stop is requested.
    private func runLoop(_ vcpu: VCPU, index: Int) -> VCPUReport {
        var handler = ExitHandler(ports: ports, mmio: mmio)
        let trace = self.trace
        let loopStart = BootMilestones.now
        var inKVMRun: UInt64 = 0
        func report() -> VCPUReport {
            let total = BootMilestones.now &- loopStart
            return VCPUReport(
                index: index, statistics: handler.statistics, timeInKVMRun: .nanoseconds(Int64(inKVMRun)),
                timeInVMM: .nanoseconds(Int64(total &- min(total, inKVMRun))))
        }
        do {
            try Kick.unblockOnCurrentThread()
        } catch {
            requestStop(.vmmError(error.description))
            return report()
        }
        var entered = false
        var sincePublished = 0
        /// Whether the last exit may still need a KVM_RUN to complete (see the pause below).
        var pendingCompletion = false
        while true {
            // A kick sets immediate_exit; clear it before looking at why it came (see RunControl
            // for why this order cannot lose a request), then stop, park or enter the guest.
            if vcpu.immediateExit { vcpu.immediateExit = false }
            if stopSignal.isRequested { break }
            if control.pauseRequested.load(ordering: .sequentiallyConsistent) {
                // An I/O or MMIO exit is complete only once KVM_RUN is entered again (api.rst,
                // KVM_RUN: "the corresponding operations are complete (and guest state is
                // consistent) only after userspace has re-entered the kernel"): until then RIP
                // still points at the OUT and an IN's value is not in RAX. Re-enter with
                // immediate_exit set, which finishes the operation and returns EINTR without
                // running a guest instruction, so the registers a snapshot reads while parked
                // are the ones after the instruction (a restored OUT is not repeated).
                if pendingCompletion {
                    pendingCompletion = false
                    vcpu.immediateExit = true
                    do { _ = try vcpu.run() } catch {
                        requestStop(.vmmError(error.description))
                        break
                    }
                    vcpu.immediateExit = false
                }
                control.park()
                continue
            }
            if !entered, index == 0 {
                milestones.record(.guestEntry)
                entered = true
            }
            let exit: VCPUExit
            let enteredAt = BootMilestones.now
            do {
                exit = try vcpu.run()
            } catch {
                requestStop(.vmmError(error.description))
                break
            }
            inKVMRun &+= BootMilestones.now &- enteredAt
            // A KVM_RUN that returned (even with EINTR) completed the exit before it.
            if case .interrupted = exit { pendingCompletion = false } else { pendingCompletion = true }
            let action = handler.handle(exit)
            trace?.record(ExitTrace.line(vcpu: index, exit: exit, device: handler.lastDevice))
            sincePublished += 1
            if sincePublished >= Self.livePublishInterval || { if case .interrupted = exit { true } else { false } }() {
                sincePublished = 0
                let snapshot = report()
                live.withLock { $0[index] = snapshot }
            }
            if case .stop(let outcome) = action {
                if stop(outcome) { decidingVCPU.store(index, ordering: .releasing) }
                break
            }
        }
        let final = report()
        live.withLock { $0[index] = final }
        return final
    }
}
