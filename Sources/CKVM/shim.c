// Non-variadic wrappers over ioctl(2) and sigaction(2) for Swift; see CKVM.h. No logic here.
#include "CKVM.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>

int ckvm_ioctl(int fd, unsigned long request) { return ioctl(fd, request, 0); }

int ckvm_ioctl_pointer(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

int ckvm_ioctl_value(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

int ckvm_kick_signal(void) { return SIGRTMIN + 1; }

int ckvm_unblock_signal(int signal) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signal);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

static void ckvm_ignore_kick(int signal) { (void)signal; }

int ckvm_install_kick_handler(int signal) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = ckvm_ignore_kick;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: KVM_RUN must come back with EINTR
    return sigaction(signal, &action, NULL);
}

int ckvm_name_current_thread(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}
