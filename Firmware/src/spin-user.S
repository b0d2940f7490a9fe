#
# spin-user - user-mode (CPL 3) guest that never ends.
#
# Mode: user. On KVM-PVM ring 3 runs natively, so the vCPU never exits by
#       itself: the VMM must kick it (signal / immediate_exit) at the deadline.
# Does: prints "spinning\n" on COM1, then `jmp .` forever.
# A test should expect: console output "spinning\n"; the run only ends by the
#       VMM's time limit (status "timeout" or equivalent).
#
        .include "guest.S.inc"
        guest_code 64

        .section .text.start, "ax"
        .globl  _start
_start:
        puts    msg
spin:   jmp     spin

msg:    .asciz  "spinning\n"
