#
# hello-user - 64-bit user-mode (CPL 3) "hello" guest.
#
# Mode: user (CPL 3; CS=0x2B, SS/DS=0x23; port I/O granted by the VMM, see
#       include/guest.S.inc about IOPL on KVM-PVM).
# Does: prints "Hello from user mode!\n" on COM1, reports CS & 3 (the current
#       privilege level) to port 0xF8, then writes 0 to port 0xF4.
# A test should expect: console output exactly "Hello from user mode!\n",
#       reported values [3], exit status 0.
# Note: on KVM-PVM the CS the guest reads natively is the host's user CS
#       (0x33), not the 0x2B the VMM set; only the RPL bits (3) are reliable,
#       which is why the guest reports CS & 3 and not CS.
#
        .include "guest.S.inc"
        guest_code 64

        .section .text.start, "ax"
        .globl  _start
_start:
        puts    msg
        mov     eax, cs
        and     eax, 3
        report  eax
        exit    0

msg:    .asciz  "Hello from user mode!\n"
