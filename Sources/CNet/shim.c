#define _GNU_SOURCE
#include <sched.h>
#include "CNet.h"
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int cnet_ioctl_pointer(int fd, unsigned long request, void *argument) { return ioctl(fd, request, argument); }

int cnet_ioctl_value(int fd, unsigned long request, unsigned long value) { return ioctl(fd, request, value); }

int cnet_setns(int fd, int nstype) { return setns(fd, nstype); }

int cnet_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int cnet_pidfd_send_signal(int pidfd, int signal) { return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0); }
