import VMMCore

// virtio-mmio state for snapshots (rust-vmm virtio-queue's `QueueState`): the transport's
// registers, and for each queue its configuration and the device's next indices. The device's
// worker must be paused (`PausableWorker`), so no request is in flight: every chain it took has
// been returned used, and a restored queue starts from the same indices with nothing pending.

extension VirtioMMIOTransport {
    static let stateVersion: UInt8 = 1

    /// The registers and queues. Takes the worker's lock, so it waits for a serve in progress.
    public func exportState() -> [UInt8] {
        serving.withLock { serving in
            registers.withLock { state in
                var writer = StateWriter()
                writer.u8(Self.stateVersion)
                writer.u32(device.deviceType)
                writer.u32(state.status)
                writer.u32(state.deviceFeaturesSelect)
                writer.u32(state.driverFeaturesSelect)
                writer.u64(state.driverFeatures)
                writer.u32(state.queueSelect)
                writer.u32(interruptStatus.load(ordering: .acquiring))
                writer.u32(UInt32(state.queues.count))
                for (index, queue) in state.queues.enumerated() {
                    writer.u16(queue.size)
                    writer.bool(queue.ready)
                    writer.u64(queue.descriptorTable)
                    writer.u64(queue.availableRing)
                    writer.u64(queue.usedRing)
                    let live = serving.generation == state.generation && index < serving.queues.count ? serving.queues[index] : nil
                    let current = live.flatMap { $0.configuration == queue ? $0 : nil }
                    writer.u16(current?.nextAvailable ?? 0)
                    writer.u16(current?.nextUsed ?? 0)
                }
                return writer.bytes
            }
        }
    }

    /// Rebuilds the registers and queues from an export, checking them as a driver's writes are
    /// checked: the same device type and queue count, features the device offers, a ready queue
    /// whose size and areas would be accepted when the driver enables it, and indices of a
    /// drained queue that agree with the used ring in guest memory.
    public func importState(_ bytes: [UInt8]) throws(StateFormatError) {
        var reader = StateReader(bytes)
        let version = try reader.u8("the virtio-mmio state")
        guard version == Self.stateVersion else { throw .impossible("virtio-mmio state version \(version) (this swiftkvm has \(Self.stateVersion))") }
        let type = try reader.u32("the virtio device type")
        guard type == device.deviceType else { throw .impossible("virtio device type \(type) where this VM has a device of type \(device.deviceType)") }
        var state = Registers(queues: [])
        state.status = try reader.u32("the virtio status")
        state.deviceFeaturesSelect = try reader.u32("DeviceFeaturesSel")
        state.driverFeaturesSelect = try reader.u32("DriverFeaturesSel")
        state.driverFeatures = try reader.u64("the driver's features")
        state.queueSelect = try reader.u32("QueueSel")
        let interrupts = try reader.u32("InterruptStatus")
        guard state.status & ~0xFF == 0 else { throw .impossible("virtio status 0x\(String(state.status, radix: 16)) has undefined bits") }
        guard state.driverFeatures & ~device.features == 0 else {
            throw .impossible("the driver's virtio features 0x\(String(state.driverFeatures, radix: 16)) include some the device does not offer")
        }
        guard interrupts & ~(Virtio.Interrupt.usedBuffer | Virtio.Interrupt.configurationChange) == 0 else {
            throw .impossible("virtio InterruptStatus 0x\(String(interrupts, radix: 16)) has undefined bits")
        }
        let count = try reader.count(limit: 64, minimumSize: 31, "virtqueues")
        guard count == device.maximumQueueSizes.count else {
            throw .impossible("\(count) virtqueues where the device has \(device.maximumQueueSizes.count)")
        }
        var restoredQueues: [SplitVirtqueue?] = []
        for index in 0..<count {
            var queue = VirtqueueConfiguration()
            queue.size = try reader.u16("virtqueue \(index)")
            queue.ready = try reader.bool("virtqueue \(index)")
            queue.descriptorTable = try reader.u64("virtqueue \(index)")
            queue.availableRing = try reader.u64("virtqueue \(index)")
            queue.usedRing = try reader.u64("virtqueue \(index)")
            let nextAvailable = try reader.u16("virtqueue \(index)")
            let nextUsed = try reader.u16("virtqueue \(index)")
            state.queues.append(queue)
            guard queue.ready else {
                restoredQueues.append(nil)
                continue
            }
            do {
                var restored = try SplitVirtqueue(
                    restoring: queue, maximumSize: device.maximumQueueSizes[index], nextAvailable: nextAvailable, nextUsed: nextUsed, memory: memory)
                restored.stopRequest = stopRequests[index]
                restoredQueues.append(restored)
            } catch {
                throw .impossible("virtqueue \(index): \(error.description)")
            }
        }
        try reader.finish("the virtio-mmio state")
        if state.status & Virtio.Status.featuresOK != 0 { device.driverAccepted(features: state.driverFeatures) }
        serving.withLock { serving in
            registers.withLock { current in
                state.generation = current.generation &+ 1
                current = state
                interruptStatus.store(interrupts, ordering: .releasing)
            }
            serving = Serving(generation: state.generation, queues: restoredQueues)
        }
        // A used-buffer or configuration interrupt the driver had not acknowledged is raised again
        // (the irqfd edge of before went to an irqchip that the restore replaced).
        if interrupts != 0 { interrupt.trigger() }
    }
}

extension VirtioBlock {
    /// The disk's capacity: a restored guest's driver knows it, so the disk must still have it.
    public func exportState() -> [UInt8] {
        var writer = StateWriter()
        writer.u8(1)
        writer.u64(capacitySectors)
        return writer.bytes
    }

    public func importState(_ bytes: [UInt8]) throws(StateFormatError) {
        var reader = StateReader(bytes)
        guard try reader.u8("the virtio-blk state") == 1 else { throw .impossible("virtio-blk state of another version") }
        let sectors = try reader.u64("the disk's capacity")
        try reader.finish("the virtio-blk state")
        guard sectors == capacitySectors else {
            throw .impossible("the disk had \(sectors) sectors when the snapshot was taken and has \(capacitySectors) now")
        }
    }
}
