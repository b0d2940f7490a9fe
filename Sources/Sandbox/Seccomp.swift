import CSandbox
import CSeccomp
import Glibc

/// Why the seccomp filter could not be installed. One line for the user.
public enum SandboxError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A libseccomp call failed (it returns a negative errno).
    case seccomp(call: String, errno: Int32)
    /// The SIGSYS handler could not be installed.
    case signalHandler(errno: Int32)

    public var description: String {
        switch self {
        case .seccomp(let call, let errno): "the seccomp filter could not be installed: \(call) failed: \(String(cString: strerror(errno)))"
        case .signalHandler(let errno): "the seccomp filter's SIGSYS handler could not be installed: \(String(cString: strerror(errno)))"
        }
    }
}

/// An allow-list of system calls for the VMM once its machine is built (seccomp(2) through
/// libseccomp), applied to every thread of the process (SECCOMP_FILTER_FLAG_TSYNC) and inherited
/// by every thread started later. Anything else traps (SECCOMP_RET_TRAP): a SIGSYS handler writes
/// one line naming the call and the process exits with status 159 — never a silent death.
///
/// What stays possible: I/O on descriptors already open (disks, eventfds, the console, a control
/// socket: accept4, not socket), memory for new threads, timers, signals. What does not: exec,
/// fork, new sockets, opening files.
public struct SeccompPolicy: Sendable {
    /// <linux/sched.h> and <linux/prctl.h>, which Glibc does not export to Swift.
    static let cloneThread: UInt64 = 0x0001_0000
    static let prSetName: UInt64 = 15
    /// PR_GET_NAME: libdispatch reads a thread's name when it starts a worker for a queue.
    static let prGetName: UInt64 = 16

    /// System calls allowed with any arguments (names as in <asm/unistd_64.h>; a name this kernel
    /// or libseccomp does not know is skipped).
    public var syscalls: [String]
    /// ioctl(2) is allowed only for these request numbers (compared on their low 32 bits, which
    /// is all the kernel looks at).
    public var ioctlRequests: [UInt]
    /// What open(2) and openat(2) may do.
    public var opens: Opens

    /// What a filtered process may open.
    public enum Opens: Sendable {
        /// Nothing: every open fails with EACCES.
        case nothing
        /// Files for reading only (no O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND, O_TMPFILE);
        /// anything else fails with EACCES. A VMM that boots its guest again after a reset reads
        /// the kernel and initrd again; it writes and creates nothing.
        case readOnly
        /// Any file, for reading or writing: a control API's snapshot goes to paths its client
        /// names. (Confining those to folders is a job for Landlock, not for a syscall filter.)
        case any
    }

    /// Which threads a filter goes on.
    public enum Scope: Sendable {
        /// Every thread of the process (SECCOMP_FILTER_FLAG_TSYNC), and every thread started later.
        case process
        /// The calling thread, and the threads it starts later. On a thread that has a filter
        /// already, the two stack: a call must pass both.
        case callingThread
    }

    public init(syscalls: [String], ioctlRequests: [UInt], opens: Opens = .nothing) {
        self.syscalls = syscalls
        self.ioctlRequests = ioctlRequests
        self.opens = opens
    }

    /// Terminal ioctls the console uses: TCGETS, TCSETS, TCSETSW, TCSETSF (restoring the
    /// terminal), TIOCGWINSZ.
    public static let terminalIoctlRequests: [UInt] = [0x5401, 0x5402, 0x5403, 0x5404, 0x5413]

    /// What a running VMM needs, with `ioctlRequests` (the KVM requests it makes after set-up).
    public static func vmm(ioctlRequests: [UInt]) -> SeccompPolicy {
        SeccompPolicy(syscalls: vmmSyscalls, ioctlRequests: ioctlRequests + terminalIoctlRequests)
    }

    /// What the VMM's own threads need when it may build its machine again after a reset (a
    /// restart action, a control API): `vmm`, and reading files (the kernel, the initrd, the
    /// decompressed-kernel cache) and `buildRequests` (creating a VM, its memory, its vCPUs). It
    /// still cannot exec, fork, create sockets, or open anything for writing. Its vCPU and device
    /// threads stack `vmm` on top of it (`Scope.callingThread`): the threads that handle what the
    /// guest writes get the strict list either way.
    ///
    /// With `snapshotRequests` (a VMM whose control API can take and load snapshots), it may also
    /// open, create and rename files for writing, and make the KVM state requests a snapshot uses.
    public static func rebuildingVMM(ioctlRequests: [UInt], buildRequests: [UInt], snapshotRequests: [UInt]? = nil) -> SeccompPolicy {
        var syscalls = vmmSyscalls + [
            "getdents64", "readlink", "readlinkat", "faccessat", "faccessat2", "access", "sysinfo", "sched_setaffinity", "uname",
            "getuid", "geteuid", "getgid", "getegid",
        ]
        if snapshotRequests != nil { syscalls += ["ftruncate", "fallocate", "rename", "renameat", "renameat2", "mkdir", "mkdirat"] }
        return SeccompPolicy(
            syscalls: syscalls, ioctlRequests: ioctlRequests + buildRequests + (snapshotRequests ?? []) + terminalIoctlRequests,
            opens: snapshotRequests == nil ? .readOnly : .any)
    }

    /// <asm-generic/fcntl.h>: the open(2) flags that write, create or truncate (O_TMPFILE
    /// without its O_DIRECTORY bit, __O_TMPFILE).
    static let writingOpenFlags: [UInt64] = [0o1, 0o2, 0o100, 0o1000, 0o2000, 0o20_000_000]
    /// <linux/prctl.h>: PR_SET_SECCOMP and PR_SET_NO_NEW_PRIVS, which stacking a filter uses.
    static let prSetSeccomp: UInt64 = 22
    static let prSetNoNewPrivileges: UInt64 = 38

    /// The VMM's system calls after set-up, by job. clone is allowed separately (threads only),
    /// and clone3 fails with ENOSYS so glibc falls back to it; prctl only for PR_SET_NAME and
    /// PR_GET_NAME (and what stacking a filter needs).
    public static let vmmSyscalls: [String] = [
        // I/O on open descriptors: console, eventfds, disks, the control socket.
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "close", "fstat", "newfstatat", "statx", "lseek", "flock", "fsync", "fdatasync", "fcntl",
        // The control API on its Unix socket (accepting, not creating sockets) and removing it at exit.
        "accept", "accept4", "setsockopt", "getsockopt", "getsockname", "getpeername", "recvfrom", "sendto", "recvmsg", "sendmsg", "shutdown", "unlink", "unlinkat",
        // Event loops and waiting.
        "poll", "ppoll", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd2",
        "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd4",
        // Threads and memory.
        // setpriority: libdispatch sets a worker thread's priority from its QoS when it starts one.
        "set_robust_list", "get_robust_list", "rseq", "futex", "sched_yield", "sched_getaffinity", "setpriority", "madvise", "mmap",
        "munmap", "mprotect", "mremap", "brk",
        // Time.
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
        // Signals (the vCPU kick, SIGINT/SIGTERM, this filter's SIGSYS).
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "restart_syscall", "sigaltstack", "tgkill", "tkill", "getpid", "gettid",
        // passt, the user-mode network's child: reaped (wait4, only ever a child of ours) and,
        // if it lingers, signalled through its pidfd — never kill(2), which takes any pid.
        "wait4", "waitid", "pidfd_send_signal",
        // The end.
        "exit", "exit_group",
        "getrandom",
    ]

    /// Installs the filter on every thread of this process, or on the calling thread (`scope`).
    /// Irreversible.
    public func install(_ scope: Scope = .process) throws(SandboxError) {
        guard csandbox_install_sigsys_handler() == 0 else { throw .signalHandler(errno: errno) }
        guard let context = seccomp_init(UInt32(SCMP_ACT_TRAP)) else { throw .seccomp(call: "seccomp_init", errno: ENOMEM) }
        defer { seccomp_release(context) }
        func check(_ result: Int32, _ call: String) throws(SandboxError) {
            if result < 0 { throw .seccomp(call: call, errno: -result) }
        }
        func number(_ name: String) -> Int32? {
            let value = seccomp_syscall_resolve_name(name)
            return value == __NR_SCMP_ERROR ? nil : value
        }
        func allow(_ name: String, _ conditions: [scmp_arg_cmp] = [], action: UInt32 = UInt32(SCMP_ACT_ALLOW)) throws(SandboxError) {
            guard let call = number(name) else { return }
            try check(
                conditions.withUnsafeBufferPointer { seccomp_rule_add_array(context, action, call, UInt32($0.count), $0.baseAddress) },
                "seccomp_rule_add(\(name))")
        }
        for name in syscalls { try allow(name) }
        for request in Set(ioctlRequests.map { UInt64($0) & 0xFFFF_FFFF }) {
            try allow("ioctl", [scmp_arg_cmp(arg: 1, op: SCMP_CMP_MASKED_EQ, datum_a: 0xFFFF_FFFF, datum_b: request)])
        }
        // New threads only: clone with CLONE_THREAD (fork and vfork stay forbidden).
        try allow("clone", [scmp_arg_cmp(arg: 0, op: SCMP_CMP_MASKED_EQ, datum_a: Self.cloneThread, datum_b: Self.cloneThread)])
        // clone3 passes its flags in memory, where a filter cannot look: make it fail with ENOSYS,
        // and glibc's pthread_create falls back to clone (SCMP_ACT_ERRNO is 0x00050000 | errno).
        try allow("clone3", action: 0x0005_0000 | UInt32(ENOSYS))
        for option in [Self.prSetName, Self.prGetName] {
            try allow("prctl", [scmp_arg_cmp(arg: 0, op: SCMP_CMP_EQ, datum_a: option, datum_b: 0)])
        }
        // Opening files fails with EACCES rather than ending the VMM: glibc's malloc opens
        // /proc/sys/vm/overcommit_memory the first time a thread's arena shrinks its heap
        // (check_may_shrink_heap), which can come at any time, and takes a failed open as "no".
        // Nothing can be opened either way; a filter cannot look at the path to allow just that one.
        let refused = 0x0005_0000 | UInt32(EACCES)
        switch opens {
        case .nothing:
            for name in ["open", "openat", "openat2"] { try allow(name, action: refused) }
        case .any:
            for name in ["open", "openat"] { try allow(name) }
            try allow("openat2", action: 0x0005_0000 | UInt32(ENOSYS))  // glibc falls back to openat
        case .readOnly:
            // Allowed when no writing flag is set; refused when any one is (one rule per flag:
            // a filter compares an argument for equality under a mask, it cannot say "not zero").
            // openat2 passes its flags in memory, where the filter cannot look: refused.
            for (name, flags) in [("open", UInt32(1)), ("openat", 2)] {
                let mask = Self.writingOpenFlags.reduce(0, |)
                try allow(name, [scmp_arg_cmp(arg: flags, op: SCMP_CMP_MASKED_EQ, datum_a: mask, datum_b: 0)])
                for flag in Self.writingOpenFlags {
                    try allow(name, [scmp_arg_cmp(arg: flags, op: SCMP_CMP_MASKED_EQ, datum_a: flag, datum_b: flag)], action: refused)
                }
            }
            try allow("openat2", action: refused)
        }
        // Stacking a filter on a thread (the vCPU and device threads of a VM that can be rebuilt
        // do, at their start) only ever takes rights away: allowed in every filter.
        try allow("seccomp")
        for option in [Self.prSetSeccomp, Self.prSetNoNewPrivileges] {
            try allow("prctl", [scmp_arg_cmp(arg: 0, op: SCMP_CMP_EQ, datum_a: option, datum_b: 0)])
        }
        try check(seccomp_attr_set(context, SCMP_FLTATR_CTL_TSYNC, scope == .process ? 1 : 0), "seccomp_attr_set(TSYNC)")
        // Name every call the report may mention (strings kept for the life of the process).
        for call in Int32(0)..<1024 {
            if let name = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_NATIVE), call) { csandbox_set_syscall_name(call, name) }
        }
        try check(seccomp_load(context), "seccomp_load")
    }
}
