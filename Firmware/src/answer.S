#
# answer - the example guest of docs/unit-guests.md.
#
# Mode: long (ring 0). Computes 6 * 7, reports it, prints "done\n", exits 0.
# A test should expect: reports [42], console "done\n", exit status 0.
#
        .include "guest.S.inc"
        guest_code 64
        .section .text.start, "ax"
        .globl _start
_start:
        mov     eax, 6
        imul    eax, eax, 7
        report  eax             # 42 → GuestRun.reports
        puts    msg
        exit    0
msg:    .asciz  "done\n"
