#ifndef CSANDBOX_H
#define CSANDBOX_H

// The SIGSYS handler of the seccomp filter: C, because a signal handler may call only
// async-signal-safe functions (write(2), _exit(2)), which Swift code cannot promise.

/// Names system call `number` in the handler's report (the table holds numbers below 1024).
/// `name` must stay valid for the life of the process.
void csandbox_set_syscall_name(int number, const char *name);

/// Installs the SIGSYS handler: a system call the filter traps (SECCOMP_RET_TRAP) writes
/// "swiftkvm: seccomp: forbidden system call N (name): stopping" on stderr and _exits with 159.
/// Returns 0, or -1 with errno set.
int csandbox_install_sigsys_handler(void);

/// The exit status the handler uses.
static const int CSANDBOX_EXIT_STATUS = 159;

#endif
