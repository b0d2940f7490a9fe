import Dispatch
import Glibc
import KVM
import Synchronization
import VMMCore
import Virtio

/// A disk the user asked for: `--disk PATH[,readonly]`.
public struct DiskConfiguration: Equatable, Sendable {
    public var path: String
    public var readOnly: Bool
    /// Not locked against other kept VMs (`swiftkvm start` locks the others: see VMStore's DiskLocks).
    public var shareable: Bool

    public init(path: String, readOnly: Bool = false, shareable: Bool = false) {
        self.path = path
        self.readOnly = readOnly
        self.shareable = shareable
    }

    /// Parses `PATH`, then options after commas: `readonly` (or `ro`) and `shareable`.
    public init(argument: String) throws(VMMError) {
        var parts = argument.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let path = parts.removeFirst()
        guard !path.isEmpty else { throw .configuration("--disk needs a file: --disk PATH[,readonly]") }
        var readOnly = false
        var shareable = false
        for option in parts {
            switch option {
            case "readonly", "ro": readOnly = true
            case "shareable": shareable = true
            default: throw .configuration("--disk \(argument): unknown option '\(option)' (the options are readonly and shareable)")
            }
        }
        self.init(path: path, readOnly: readOnly, shareable: shareable)
    }
}

/// Where virtio-mmio devices sit: 4 KiB windows from 0xD000_0000, in the 32-bit MMIO hole below
/// 4 GiB, each with its own legacy interrupt (routed to the 8259 PIC and the IOAPIC alike, so a
/// kernel without ACPI or an MP table finds it too).
public enum VirtioMMIOLayout {
    public static let base: UInt64 = 0xD000_0000
    /// IRQs no PC device of ours uses: 0 PIT, 1 keyboard, 2 cascade, 3/4 serial, 7 spurious, 8 RTC, 13 FPU.
    public static let interrupts: [UInt32] = [5, 6, 9, 10, 11, 12, 14, 15]

    /// The description of virtio-mmio device number `index`, or nil past the last free interrupt.
    public static func device(_ index: Int) -> VirtioMMIODeviceDescription? {
        guard index >= 0, index < interrupts.count else { return nil }
        return VirtioMMIODeviceDescription(
            base: base + UInt64(index) * VirtioMMIODeviceDescription.windowSize, irq: interrupts[index])
    }
}

/// A virtio device in a running machine: its transport on the MMIO bus, its queue notifications
/// arriving on eventfds that KVM signals (KVM_IOEVENTFD), its interrupts leaving through an irqfd,
/// and a thread of its own doing the I/O, so no vCPU waits for the disk.
final class VirtioDeviceRunner: PausableWorker, @unchecked Sendable {
    // @unchecked: `thread` is touched only by start() and stop(), called in that order by one thread.
    let transport: VirtioMMIOTransport
    let description: VirtioMMIODeviceDescription
    let name: String
    private let notifications: [EventFD]
    private let stopEvent: EventFD
    private let interruptEvent: EventFD
    private let inputs: [VirtioDeviceInput]
    /// Wakes the thread for a pause; it parks between requests, never inside one.
    private let pauseEvent: EventFD
    private let gate = PauseGate()
    private let running = Atomic<Bool>(false)
    private var thread: OSThread?
    /// Signalled by the I/O thread as its last act.
    private let finished = DispatchSemaphore(value: 0)

    /// How long `stop` lets the I/O thread finish what the guest submitted before the stop, and
    /// then how long it waits once more after asking it to stop between two requests.
    static let drainTime: Duration = .seconds(1)
    static let haltTime: Duration = .seconds(1)

    /// `inputs`: descriptors from outside the guest (a NIC's backend) the worker also waits on.
    init(
        device: any VirtioDevice, name: String, at description: VirtioMMIODeviceDescription, in machine: Machine,
        inputs: [VirtioDeviceInput] = []
    ) throws(VMMError) {
        self.description = description
        self.name = name
        self.inputs = inputs
        do {
            notifications = try device.maximumQueueSizes.map { _ throws(KVMError) in try EventFD() }
            stopEvent = try EventFD()
            pauseEvent = try EventFD()
            interruptEvent = try EventFD()
            try machine.vm.registerIRQFD(interruptEvent, gsi: description.irq)
        } catch {
            throw .kvm(error)
        }
        transport = VirtioMMIOTransport(device: device, memory: machine.memory, interrupt: IRQFDTrigger(interruptEvent))
        // A notify that reaches us as an MMIO exit (no ioeventfd) wakes the worker the same way.
        transport.onNotify = { [notifications] index in
            if index >= 0, index < notifications.count { notifications[index].signal() }
        }
        for (index, event) in notifications.enumerated() {
            // Without ioeventfd support the notify still arrives, through the slower exit path above.
            try? machine.vm.registerIOEventFD(
                event, mmioAddress: description.base + VirtioMMIOTransport.queueNotifyOffset, length: 4,
                datamatch: UInt64(index))
        }
        try machine.addMMIODevice(transport, at: GuestAddress(description.base), length: description.size)
        machine.addWorker(self)
    }

    /// Returns once the I/O thread has finished the request it was serving and is parked.
    func pause() {
        guard running.load(ordering: .acquiring) else { return }
        gate.pause { pauseEvent.signal() }
    }

    func resume() { gate.resume() }

    /// Signals every queue's notification once, as if the driver had: after a restore, so a chain
    /// the driver made available (and notified) just before the snapshot is served — the
    /// notification was an eventfd count in the old process, not part of any state saved.
    func notifyEveryQueue() {
        for event in notifications { event.signal() }
    }

    /// Starts the I/O thread: it sleeps in poll(2) until a queue is notified, an input the device
    /// wants becomes readable, or `stop` is called.
    func start() throws(VMMError) {
        let descriptors = notifications.map(\.descriptor) + [stopEvent.descriptor, pauseEvent.descriptor]
        running.store(true, ordering: .releasing)
        thread = try OSThread(name: name, guestFacing: true) { [self] in
            defer { gate.workerEnded() }
            var waiting = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            waiting += inputs.map { _ in pollfd(fd: -1, events: Int16(POLLIN), revents: 0) }
            let stopIndex = notifications.count
            let pauseIndex = stopIndex + 1
            let firstInput = pauseIndex + 1
            while true {
                // An input is waited on only while the device is live and wants it (poll skips a
                // negative descriptor), so a backend with data the device cannot take yet never spins.
                var timeout: Int32 = -1
                if transport.isLive {
                    for (index, input) in inputs.enumerated() {
                        let state = input.state()
                        waiting[firstInput + index].fd = state.descriptor ?? -1
                        if state.buffered { timeout = 0 }
                    }
                } else {
                    for index in inputs.indices { waiting[firstInput + index].fd = -1 }
                }
                let ready = poll(&waiting, nfds_t(waiting.count), timeout)
                if ready < 0 {
                    if errno == EINTR { continue }
                    break
                }
                if waiting[pauseIndex].revents != 0 {
                    pauseEvent.consume()
                    gate.parkIfRequested()
                }
                for (index, event) in notifications.enumerated() where waiting[index].revents != 0 {
                    event.consume()
                    transport.serve(queue: index)
                }
                for (index, input) in inputs.enumerated() where waiting[firstInput + index].revents != 0 || (ready == 0 && timeout == 0) {
                    transport.serve(queue: input.queue)
                }
                if waiting[stopIndex].revents != 0 { break }
            }
            // Serve what the guest made available before the stop, so no submitted write is dropped
            // (unless this takes longer than `drainTime`: then `stop` halts the transport).
            for index in notifications.indices { transport.serve(queue: index) }
            finished.signal()
        }
    }

    /// Stops the I/O threads of `runners` together, waiting for each at most `drainTime` +
    /// `haltTime`: first for it to serve what the guest had submitted, then, after halting its
    /// transport (which ends serving between two requests), for the request in progress.
    /// Returns, per runner, whether its thread ended; one that did not is left running (detached),
    /// with a line on stderr, and the caller must not close its storage.
    static func stop(_ runners: [VirtioDeviceRunner]) -> [Bool] {
        for runner in runners where runner.thread != nil {
            runner.running.store(false, ordering: .releasing)
            runner.gate.resume()
            runner.stopEvent.signal()
        }
        let drained = DispatchTime.after(drainTime)
        var ended = runners.map { runner in runner.thread == nil || runner.finished.wait(timeout: drained) == .success }
        for (index, runner) in runners.enumerated() where !ended[index] { runner.transport.halt() }
        let halted = DispatchTime.after(haltTime)
        for (index, runner) in runners.enumerated() where !ended[index] {
            ended[index] = runner.finished.wait(timeout: halted) == .success
        }
        for (index, runner) in runners.enumerated() {
            guard let thread = runner.thread else { continue }
            if ended[index] {
                thread.join()
            } else {
                thread.detach()
                let seconds = (drainTime + haltTime).components.seconds
                fputs("swiftkvm: \(runner.name): its I/O thread did not stop within \(seconds) s (a disk request is stuck); leaving it, the disk is not closed\n", stderr)
            }
            runner.thread = nil
        }
        return ended
    }

    /// Stops this runner's I/O thread (see `stop(_:)`); returns whether it ended.
    @discardableResult
    func stop() -> Bool { Self.stop([self])[0] }
}

/// Something outside the guest that a device's I/O worker waits on besides the queue notifications:
/// when `state()` gives a descriptor and it turns readable (or `buffered` says input is already
/// waiting in the process), queue `queue` is served.
struct VirtioDeviceInput: Sendable {
    var queue: Int
    /// Asked before every wait, on the worker thread: the descriptor to wait on now (nil: none).
    var state: @Sendable () -> (descriptor: Int32?, buffered: Bool)
}

/// A virtio interrupt edge: one write to an irqfd, and KVM injects it.
final class IRQFDTrigger: InterruptTrigger, @unchecked Sendable {
    let event: EventFD
    init(_ event: EventFD) { self.event = event }
    func trigger() { event.signal() }
}
