import Synchronization
import VMMCore

/// Where a virtio-mmio device sits and which interrupt it raises: the one description the kernel
/// command line (`virtio_mmio.device=`) and, later, the ACPI tables are both made from.
public struct VirtioMMIODeviceDescription: Equatable, Sendable {
    public var base: UInt64
    public var size: UInt64
    public var irq: UInt32

    public static let windowSize: UInt64 = 0x1000

    public init(base: UInt64, size: UInt64 = VirtioMMIODeviceDescription.windowSize, irq: UInt32) {
        self.base = base
        self.size = size
        self.irq = irq
    }

    /// `virtio_mmio.device=4K@0xd0000000:5`, as drivers/virtio/virtio_mmio.c parses it.
    public var commandLineArgument: String {
        "virtio_mmio.device=\(size / 1024)K@0x\(String(base, radix: 16)):\(irq)"
    }
}

/// An edge on an interrupt input: the VMM writes an irqfd, tests count. virtio-mmio interrupts
/// are raised on each new event and acknowledged through InterruptACK, like Firecracker's.
public protocol InterruptTrigger: AnyObject, Sendable {
    func trigger()
}

/// The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): the register window a driver uses
/// to find, negotiate with, and configure a `VirtioDevice`.
///
/// Threads: vCPUs access registers (`read`/`write`, under a small lock); the device's I/O
/// worker calls `serve(queue:)`, which holds a second lock while it does I/O, so a vCPU reading
/// InterruptStatus never waits for the disk. A reset (Status = 0) and a queue disable
/// (QueueReady = 0) are the exceptions: they ask the device to stop between two requests
/// (`VirtqueueStopRequest`) and take effect only once it has left the queue, so the driver never
/// sees them done while the device may still write into its buffers (virtio 1.2 §2.4.1). A queue notification written through MMIO is handed
/// to `onNotify` (the VMM wakes the worker; with KVM_IOEVENTFD it never comes here at all); with
/// no `onNotify` the queue is served at once on the calling thread, which is how tests drive it.
///
/// The guest is untrusted: wrong widths and offsets read as all ones and are ignored on write; a
/// queue configured badly, or a chain that is not a chain, sets DEVICE_NEEDS_RESET and raises a
/// configuration interrupt, and the device does nothing more until the driver resets it.
public final class VirtioMMIOTransport: BusDevice, @unchecked Sendable {
    // @unchecked: mutable state is in `registers` and `queues` (Mutexes) and `interruptStatus` (atomic).

    enum Register {
        static let magic: UInt64 = 0x000
        static let version: UInt64 = 0x004
        static let deviceID: UInt64 = 0x008
        static let vendorID: UInt64 = 0x00C
        static let deviceFeatures: UInt64 = 0x010
        static let deviceFeaturesSelect: UInt64 = 0x014
        static let driverFeatures: UInt64 = 0x020
        static let driverFeaturesSelect: UInt64 = 0x024
        static let queueSelect: UInt64 = 0x030
        static let queueSizeMaximum: UInt64 = 0x034
        static let queueSize: UInt64 = 0x038
        static let queueReady: UInt64 = 0x044
        static let queueNotify: UInt64 = 0x050
        static let interruptStatus: UInt64 = 0x060
        static let interruptAcknowledge: UInt64 = 0x064
        static let status: UInt64 = 0x070
        static let queueDescriptorLow: UInt64 = 0x080
        static let queueDescriptorHigh: UInt64 = 0x084
        static let queueDriverLow: UInt64 = 0x090
        static let queueDriverHigh: UInt64 = 0x094
        static let queueDeviceLow: UInt64 = 0x0A0
        static let queueDeviceHigh: UInt64 = 0x0A4
        static let sharedMemorySelect: UInt64 = 0x0AC
        static let sharedMemoryLengthLow: UInt64 = 0x0B0
        static let sharedMemoryLengthHigh: UInt64 = 0x0B4
        static let configurationGeneration: UInt64 = 0x0FC
        static let configuration: UInt64 = 0x100
    }

    /// "virt" in little-endian.
    public static let magic: UInt32 = 0x7472_6976
    /// "SKVM".
    public static let vendor: UInt32 = 0x4D56_4B53
    /// Where the queue-notify register is, for KVM_IOEVENTFD.
    public static let queueNotifyOffset = Register.queueNotify

    struct Registers {
        var status: UInt32 = 0
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [VirtqueueConfiguration]
        /// Bumped on every reset, so the worker drops queue state from before it.
        var generation: UInt64 = 0
        /// Why DEVICE_NEEDS_RESET was set, until the next reset.
        var brokenBy: VirtqueueError?
    }

    /// The worker's view of each queue, valid for one `generation`.
    struct Serving {
        var generation: UInt64 = .max
        var queues: [SplitVirtqueue?] = []
    }

    public let device: any VirtioDevice
    public let memory: GuestMemory
    public let interrupt: any InterruptTrigger
    /// Called on a vCPU thread with the queue index the driver notified.
    public var onNotify: (@Sendable (Int) -> Void)?
    /// Why the device last set DEVICE_NEEDS_RESET (for logs and tests).
    public var lastError: VirtqueueError? { registers.withLock { $0.brokenBy } }

    let registers: Mutex<Registers>
    /// Held by the worker while it serves a queue; a reset or disable takes it to wait for the
    /// worker. Lock order: `serving`, then `registers` (never the other way round).
    let serving = Mutex(Serving())
    /// One per queue, handed to each `SplitVirtqueue` the worker serves.
    let stopRequests: [VirtqueueStopRequest]
    let interruptStatus = Atomic<UInt32>(0)

    public init(device: any VirtioDevice, memory: GuestMemory, interrupt: any InterruptTrigger) {
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        registers = Mutex(Registers(queues: Array(repeating: VirtqueueConfiguration(), count: device.maximumQueueSizes.count)))
        stopRequests = device.maximumQueueSizes.map { _ in VirtqueueStopRequest() }
    }

    // MARK: - Registers (vCPU threads)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        if offset >= Register.configuration {
            let space = device.configurationSpace
            for index in 0..<data.count {
                let position = Int(offset - Register.configuration) + index
                data[index] = position < space.count ? space[position] : 0
            }
            return
        }
        guard data.count == 4, offset % 4 == 0 else {
            data.initializeMemory(as: UInt8.self, repeating: 0xFF)
            return
        }
        let value: UInt32 = registers.withLock { state in
            let queue = state.queueSelect < state.queues.count ? Int(state.queueSelect) : nil
            switch offset {
            case Register.magic: return Self.magic
            case Register.version: return 2
            case Register.deviceID: return device.deviceType
            case Register.vendorID: return Self.vendor
            case Register.deviceFeatures:
                return state.deviceFeaturesSelect < 2 ? UInt32(truncatingIfNeeded: device.features >> (32 * UInt64(state.deviceFeaturesSelect))) : 0
            case Register.queueSizeMaximum: return queue.map { UInt32(device.maximumQueueSizes[$0]) } ?? 0
            case Register.queueSize: return queue.map { UInt32(state.queues[$0].size) } ?? 0
            case Register.queueReady: return queue.map { state.queues[$0].ready ? 1 : 0 } ?? 0
            case Register.interruptStatus: return interruptStatus.load(ordering: .acquiring)
            case Register.status: return state.status
            case Register.sharedMemoryLengthLow, Register.sharedMemoryLengthHigh: return 0xFFFF_FFFF  // no shared memory regions
            case Register.configurationGeneration: return 0  // the configuration never changes
            default: return 0
            }
        }
        data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset < Register.configuration, data.count == 4, offset % 4 == 0 else { return }  // configuration space is read-only
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        if offset == Register.queueNotify {
            notify(queue: Int(value))
            return
        }
        if offset == Register.interruptAcknowledge {
            interruptStatus.bitwiseAnd(~value, ordering: .acquiringAndReleasing)
            return
        }
        if offset == Register.status, value == 0 {
            reset()
            return
        }
        if offset == Register.queueReady, value & 1 == 0 {
            disableSelectedQueue()
            return
        }
        let broken: Bool = registers.withLock { state in
            switch offset {
            case Register.deviceFeaturesSelect: state.deviceFeaturesSelect = value
            case Register.driverFeaturesSelect: state.driverFeaturesSelect = value
            case Register.driverFeatures:
                // Only before FEATURES_OK: afterwards the negotiated set is fixed (§3.1.1).
                guard state.status & Virtio.Status.featuresOK == 0, state.driverFeaturesSelect < 2 else { break }
                let shift = 32 * UInt64(state.driverFeaturesSelect)
                state.driverFeatures = state.driverFeatures & ~(0xFFFF_FFFF << shift) | UInt64(value) << shift
            case Register.queueSelect: state.queueSelect = value
            case Register.status: return writeStatus(value, &state)
            default: return writeQueueRegister(offset, value, &state)
            }
            return false
        }
        if broken { interruptStatus.bitwiseOr(Virtio.Interrupt.configurationChange, ordering: .acquiringAndReleasing) }
        if broken { interrupt.trigger() }
    }

    /// Status writes: 0 resets; FEATURES_OK stays set only if the driver accepted a subset of the
    /// offered features that includes VERSION_1. Returns true if the device became broken.
    private func writeStatus(_ value: UInt32, _ state: inout Registers) -> Bool {
        var status = value | (state.status & Virtio.Status.deviceNeedsReset)
        if status & Virtio.Status.featuresOK != 0, state.status & Virtio.Status.featuresOK == 0 {
            let accepted = state.driverFeatures
            if accepted & ~device.features != 0 || accepted & Virtio.Feature.version1 == 0 {
                status &= ~Virtio.Status.featuresOK
            } else {
                device.driverAccepted(features: accepted)
            }
        }
        state.status = status
        return false
    }

    /// Queue* registers, for the selected queue, while it is not ready. Returns true if enabling
    /// the queue found its configuration unusable.
    private func writeQueueRegister(_ offset: UInt64, _ value: UInt32, _ state: inout Registers) -> Bool {
        guard state.queueSelect < state.queues.count else { return false }
        let index = Int(state.queueSelect)
        var queue = state.queues[index]
        func low(_ old: UInt64) -> UInt64 { old & 0xFFFF_FFFF_0000_0000 | UInt64(value) }
        func high(_ old: UInt64) -> UInt64 { old & 0xFFFF_FFFF | UInt64(value) << 32 }
        if offset == Register.queueReady {  // QueueReady = 0 goes through disableSelectedQueue()
            if !queue.ready {
                do {
                    _ = try SplitVirtqueue(queue, maximumSize: device.maximumQueueSizes[index], memory: memory)
                    queue.ready = true
                } catch {
                    state.queues[index] = queue
                    markBroken(error, &state)
                    return true
                }
            }
            state.queues[index] = queue
            return false
        }
        guard !queue.ready else { return false }  // the driver must not move a live queue
        switch offset {
        case Register.queueSize: queue.size = UInt16(truncatingIfNeeded: min(value, 0xFFFF))
        case Register.queueDescriptorLow: queue.descriptorTable = low(queue.descriptorTable)
        case Register.queueDescriptorHigh: queue.descriptorTable = high(queue.descriptorTable)
        case Register.queueDriverLow: queue.availableRing = low(queue.availableRing)
        case Register.queueDriverHigh: queue.availableRing = high(queue.availableRing)
        case Register.queueDeviceLow: queue.usedRing = low(queue.usedRing)
        case Register.queueDeviceHigh: queue.usedRing = high(queue.usedRing)
        default: return false
        }
        state.queues[index] = queue
        return false
    }

    /// Status = 0 (§4.2.2.1): stops the worker between two requests, waits until it has left every
    /// queue, and only then resets, so a driver that reads Status back as 0 may reuse its buffers.
    private func reset() {
        for stop in stopRequests { stop.begin() }
        defer { for stop in stopRequests { stop.end() } }
        serving.withLock { serving in
            registers.withLock { state in
                let generation = state.generation &+ 1
                state = Registers(queues: Array(repeating: VirtqueueConfiguration(), count: state.queues.count))
                state.generation = generation
                interruptStatus.store(0, ordering: .releasing)
            }
            serving = Serving()
        }
    }

    /// QueueReady = 0 for the selected queue: like a reset, but for that queue alone.
    private func disableSelectedQueue() {
        let selected: Int? = registers.withLock { state in
            state.queueSelect < state.queues.count ? Int(state.queueSelect) : nil
        }
        guard let index = selected else { return }
        stopRequests[index].begin()
        defer { stopRequests[index].end() }
        serving.withLock { serving in
            registers.withLock { state in state.queues[index].ready = false }
            if index < serving.queues.count { serving.queues[index] = nil }
        }
    }

    /// Stops serving for good, between two requests: what the VMM does when it shuts the device
    /// down and cannot wait for a whole batch.
    public func halt() {
        for stop in stopRequests { stop.halt() }
    }

    private func markBroken(_ error: VirtqueueError, _ state: inout Registers) {
        if state.brokenBy == nil { state.brokenBy = error }
        state.status |= Virtio.Status.deviceNeedsReset
    }

    // MARK: - Serving queues (the I/O worker)

    /// The driver notified queue `index`: hand it to `onNotify`, or serve it now.
    public func notify(queue index: Int) {
        if let onNotify { onNotify(index) } else { serve(queue: index) }
    }

    /// Serves queue `index` if the driver has set it up and the device is live, then raises a
    /// used-buffer interrupt if anything was returned (unless the driver asked for none).
    public func serve(queue index: Int) {
        guard index >= 0, index < stopRequests.count else { return }
        typealias Outcome = (generation: UInt64, result: Result<(used: Int, quiet: Bool), VirtqueueError>)
        // The registers are read under `serving`: a reset or disable changes them only while it
        // holds `serving`, so what is read here stays true until this serve is over.
        let outcome: Outcome? = serving.withLock { serving in
            let (configuration, generation, live): (VirtqueueConfiguration, UInt64, Bool) = registers.withLock { state in
                let live =
                    state.status & Virtio.Status.driverOK != 0 && state.status & Virtio.Status.deviceNeedsReset == 0
                    && state.status & Virtio.Status.failed == 0
                return (state.queues[index], state.generation, live)
            }
            guard live, configuration.ready, !stopRequests[index].isRequested else { return nil }
            if serving.generation != generation {
                serving = Serving(generation: generation, queues: Array(repeating: nil, count: device.maximumQueueSizes.count))
            }
            do throws(VirtqueueError) {
                var queue: SplitVirtqueue
                if let existing = serving.queues[index], existing.configuration == configuration {
                    queue = existing
                } else {
                    queue = try SplitVirtqueue(configuration, maximumSize: device.maximumQueueSizes[index], memory: memory)
                    queue.stopRequest = stopRequests[index]
                }
                defer { serving.queues[index] = queue }
                let used = try device.serve(queue: index, &queue, memory: memory)
                return (generation, .success((used, queue.driverSuppressesInterrupts(memory: memory))))
            } catch {
                return (generation, .failure(error))
            }
        }
        guard let (generation, result) = outcome else { return }
        switch result {
        case .success(let result):
            // A driver that reset the device meanwhile is not interrupted for the old queue.
            guard result.used > 0 else { return }
            let stillCurrent = registers.withLock { state in
                guard state.generation == generation else { return false }
                interruptStatus.bitwiseOr(Virtio.Interrupt.usedBuffer, ordering: .acquiringAndReleasing)
                return true
            }
            if stillCurrent, !result.quiet { interrupt.trigger() }
        case .failure(let error):
            let stillCurrent = registers.withLock { state in
                guard state.generation == generation else { return false }
                markBroken(error, &state)
                interruptStatus.bitwiseOr(Virtio.Interrupt.configurationChange, ordering: .acquiringAndReleasing)
                return true
            }
            if stillCurrent { interrupt.trigger() }
        }
    }

    /// Whether the driver has set DRIVER_OK and the device is not broken or failed: only then are
    /// queues served (an I/O worker waits for outside input only while this holds).
    public var isLive: Bool {
        registers.withLock { state in
            state.status & Virtio.Status.driverOK != 0 && state.status & Virtio.Status.deviceNeedsReset == 0
                && state.status & Virtio.Status.failed == 0
        }
    }

    /// The status register as the driver would read it.
    public var status: UInt32 { registers.withLock { $0.status } }
    /// The features the driver accepted (meaningful once FEATURES_OK is set).
    public var negotiatedFeatures: UInt64 { registers.withLock { $0.driverFeatures } }
}
