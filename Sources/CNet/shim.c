#define _GNU_SOURCE
#include <sched.h>
#include "CNet.h"
#include <sys/ioctl.h>

int cnet_ioctl_pointer(int fd, unsigned long request, void *argument) { return ioctl(fd, request, argument); }

int cnet_ioctl_value(int fd, unsigned long request, unsigned long value) { return ioctl(fd, request, value); }

int cnet_setns(int fd, int nstype) { return setns(fd, nstype); }
