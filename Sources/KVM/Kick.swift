import CKVM
import Glibc

/// Getting a vCPU thread out of a blocking KVM_RUN from another thread.
///
/// The kicker sets the vCPU's `immediateExit` and then sends `signal` to the vCPU's thread. The
/// signal's handler does nothing; its only effect is that KVM_RUN returns EINTR (the handler is
/// installed without SA_RESTART). `immediateExit` covers the race where the signal lands just
/// before the thread enters KVM_RUN (api.rst, "immediate_exit").
public enum Kick {
    /// SIGRTMIN + 1: a real-time signal nothing else in the process uses.
    public static let signal: Int32 = ckvm_kick_signal()

    private static let installation: Int32 = ckvm_install_kick_handler(ckvm_kick_signal())

    /// Installs the empty handler once per process. Call before starting vCPU threads.
    public static func installHandler() throws(KVMError) {
        if installation != 0 { throw KVMError(call: "sigaction(SIGRTMIN+1)", errno: errno) }
    }

    /// Lets the kick signal reach the calling thread. Every vCPU thread calls this first: a thread
    /// inherits its creator's signal mask, and pool threads (Swift concurrency, Dispatch) block it.
    public static func unblockOnCurrentThread() throws(KVMError) {
        let result = ckvm_unblock_signal(signal)
        if result != 0 { throw KVMError(call: "pthread_sigmask(SIG_UNBLOCK)", errno: result) }
    }

    /// Names the calling thread (at most 15 bytes are kept), so `top -H` and debuggers show `vcpu0`.
    public static func nameCurrentThread(_ name: String) {
        _ = ckvm_name_current_thread(name)
    }

    /// Interrupts `vcpu`, which runs on `thread`. Returns 0, or the errno `pthread_kill` gave
    /// (EAGAIN when the user's queue of real-time signals is full); `immediateExit` is set either way.
    @discardableResult
    public static func kick(_ vcpu: VCPU, on thread: pthread_t) -> Int32 {
        vcpu.immediateExit = true
        return pthread_kill(thread, signal)
    }
}
