import Synchronization

/// Asks a device to stop taking chains from a queue: `SplitVirtqueue.nextChain` answers "nothing
/// available" while a stop is requested, so a device's serving loop ends between two requests
/// instead of after a whole batch.
///
/// The transport requests a stop before a reset (virtio 1.2 §2.4.1: after a reset the device must
/// not touch the driver's buffers any more) and before a queue is disabled (§4.2.2, QueueReady = 0),
/// and holds it until the device has left the queue; the VMM holds one for good when it stops.
/// Requests nest: each `begin` is undone by one `end`, and `halt` never is.
public final class VirtqueueStopRequest: Sendable {
    private let holders = Atomic<Int>(0)
    private let halted = Atomic<Bool>(false)

    public init() {}

    /// Whether the device should stop taking chains now.
    public var isRequested: Bool { halted.load(ordering: .acquiring) || holders.load(ordering: .acquiring) > 0 }

    /// Starts a stop that lasts until the matching `end`.
    public func begin() { holders.add(1, ordering: .acquiringAndReleasing) }

    /// Ends a stop started by `begin`.
    public func end() { holders.subtract(1, ordering: .acquiringAndReleasing) }

    /// A stop that never ends (the VMM is shutting the device down).
    public func halt() { halted.store(true, ordering: .releasing) }
}
