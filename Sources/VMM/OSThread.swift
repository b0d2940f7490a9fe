import Dispatch
import Glibc
import KVM
import Synchronization

/// The threads that handle what a guest writes — each vCPU (port and MMIO exits) and each virtio
/// device's I/O thread (descriptors, buffers) — as opposed to the VMM's own (the caller's, the
/// event loop, the console, the control API). `swiftkvm` hands in its seccomp filter's strict
/// list here for a VM it may build again after a reset: its own threads then keep the wider
/// filter that rebuilding needs, and each guest-facing thread stacks the strict one at its start.
public enum GuestFacingThreads {
    private static let hook = Mutex<(@Sendable () -> Void)?>(nil)

    /// Runs `body` first thing on every guest-facing thread started from now on (nil: nothing).
    public static func onStart(_ body: (@Sendable () -> Void)?) {
        hook.withLock { $0 = body }
    }

    static func started() {
        hook.withLock { $0 }?()
    }
}

/// A named OS thread running a closure: each vCPU (`vcpu0`, …) and each host-side helper (the
/// console reader, the PIT timer, a session's runner) gets one.
///
/// KVM_RUN blocks for as long as the guest runs, so it must never run on Swift's cooperative thread
/// pool; each vCPU gets a thread of its own, the only thread that touches that vCPU apart from kicks.
final class OSThread: @unchecked Sendable {
    private(set) var handle: pthread_t = 0

    private final class Start {
        let name: String
        let guestFacing: Bool
        let body: () -> Void
        init(name: String, guestFacing: Bool, body: @escaping () -> Void) {
            self.name = name
            self.guestFacing = guestFacing
            self.body = body
        }
    }

    /// Starts a thread named `name` (at most 15 characters are kept) running `body`;
    /// `guestFacing` for a vCPU or device thread (see `GuestFacingThreads`).
    init(name: String, guestFacing: Bool = false, body: @escaping () -> Void) throws(VMMError) {
        let start = Unmanaged.passRetained(Start(name: name, guestFacing: guestFacing, body: body)).toOpaque()
        let result = pthread_create(&handle, nil, { argument in
            guard let argument else { return nil }
            let start = Unmanaged<Start>.fromOpaque(argument).takeRetainedValue()
            Kick.nameCurrentThread(start.name)
            if start.guestFacing { GuestFacingThreads.started() }
            start.body()
            return nil
        }, start)
        if result != 0 {
            Unmanaged<Start>.fromOpaque(start).release()
            throw .system(call: "pthread_create", errno: result)
        }
    }

    /// Waits for the thread to finish. Call exactly once.
    func join() {
        pthread_join(handle, nil)
    }

    /// Lets the thread run on unjoined; its resources go when it ends. Instead of `join`.
    func detach() {
        pthread_detach(handle)
    }

    /// Starts a thread nobody joins.
    static func detached(name: String, body: @escaping () -> Void) throws(VMMError) {
        try OSThread(name: name, body: body).detach()
    }
}

extension DispatchTime {
    /// `duration` from now, for Dispatch waits; negative durations mean now, and an overflowing
    /// `seconds * 10^9` (a limit of centuries) saturates.
    static func after(_ duration: Duration) -> DispatchTime {
        let (seconds, attoseconds) = duration.components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let nanoseconds = overflow ? Int64.max : whole.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
        return .now() + .nanoseconds(Int(max(0, nanoseconds)))
    }
}
