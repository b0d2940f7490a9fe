#
# triple-fault - protected-mode guest that triple-faults.
#
# Mode: protected (32-bit flat, no IDT loaded).
# Does: prints "faulting\n" on COM1, then divides by zero (xor ecx,ecx;
#       div ecx). With no IDT the #DE cannot be delivered, that becomes a
#       double fault, which cannot be delivered either: triple fault.
# A test should expect: console output "faulting\n", run status "shutdown"
#       (KVM_EXIT_SHUTDOWN), no reported values.
#
        .include "guest.S.inc"
        guest_code 32

        .section .text.start, "ax"
        .globl  _start
_start:
        puts    msg
        xor     ecx, ecx
        div     ecx
        # Not reached.
        jmp     .

msg:    .asciz  "faulting\n"
