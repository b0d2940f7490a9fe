#
# spin - long-mode (ring 0) guest that never ends.
#
# Mode: long (ring 0). On KVM-PVM ring 0 is emulated, so this loop runs in
#       KVM's instruction emulator.
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
