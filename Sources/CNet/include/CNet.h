// CNet: the C face of the tap device (<linux/if_tun.h>) for Swift's network backends.
//
// Like CKVM: request numbers and flags built by C macros exported as constants, the layout of
// `struct ifreq`, and non-variadic ioctl shims. No logic.
#ifndef CNET_H
#define CNET_H

#include <sys/ioctl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <linux/sched.h>
#include <stddef.h>

// MARK: - tap ioctls (Documentation/networking/tuntap.rst)

static const unsigned long CNET_TUNSETIFF = TUNSETIFF;
static const unsigned long CNET_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long CNET_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const unsigned long CNET_TUNSETPERSIST = TUNSETPERSIST;

// ifr_flags for TUNSETIFF.
static const short CNET_IFF_TAP = IFF_TAP;
static const short CNET_IFF_NO_PI = IFF_NO_PI;
static const short CNET_IFF_VNET_HDR = IFF_VNET_HDR;

// TUNSETOFFLOAD's argument: what the tap may hand us (the guest's receive offloads).
static const unsigned int CNET_TUN_F_CSUM = TUN_F_CSUM;
static const unsigned int CNET_TUN_F_TSO4 = TUN_F_TSO4;
static const unsigned int CNET_TUN_F_TSO6 = TUN_F_TSO6;

// struct ifreq: the interface name (IFNAMSIZ bytes, NUL-terminated) and, in its union, ifr_flags.
static const unsigned long CNET_IFREQ_SIZE = sizeof(struct ifreq);
static const unsigned long CNET_IFREQ_FLAGS_OFFSET = offsetof(struct ifreq, ifr_flags);
static const unsigned long CNET_IFNAMSIZ = IFNAMSIZ;

// MARK: - Non-variadic ioctl shims (each returns what ioctl(2) returns; errno is left to read)

int cnet_ioctl_pointer(int fd, unsigned long request, void *argument);
int cnet_ioctl_value(int fd, unsigned long request, unsigned long value);

// MARK: - Network namespaces (setns(2); glibc's Swift module map leaves it out)

static const int CNET_CLONE_NEWNET = CLONE_NEWNET;
/// Moves the calling thread into the namespace `fd` refers to; returns what setns(2) returns.
int cnet_setns(int fd, int nstype);

// MARK: - Process descriptors (pidfd_open(2), pidfd_send_signal(2); Linux 5.3)
// A child's pidfd names that process and no other, even after its pid is reused: the VMM signals
// passt through it, which a seccomp filter can allow where it must refuse kill(2) on any pid.

/// Returns a pidfd for `pid` (close-on-exec), or -1 with errno.
int cnet_pidfd_open(int pid);
/// Sends `signal` to the process `pidfd` names; returns what pidfd_send_signal(2) returns.
int cnet_pidfd_send_signal(int pidfd, int signal);

#endif
