#
# reset-once - resets itself once, then ends: for on_reboot=restart.
#
# Mode: protected (32-bit, flat, no paging, no IDT).
# Does: looks for a marker at 0x100000 (1 MiB, outside the image). Without it, it writes it,
#       prints "first boot\n" and triple-faults (a divide error with no IDT), which a VMM with
#       on_reboot=restart turns into a reset: the same program starts again with RAM kept.
#       With the marker, it prints "second boot\n" and writes 0 to the debug-exit port.
# A test should expect: with on_reboot=restart, console "first boot\nsecond boot\n", exit
#       status 0 and two boots; otherwise "first boot\n" and a shutdown (triple fault).
# Memory: at least 2 MiB (the marker is at 1 MiB).
#
        .include "guest.S.inc"
        guest_code 32

        .equ    MARKER, 0x100000
        .equ    MAGIC, 0x5EB00701

        .section .text.start, "ax"
        .globl  _start
_start:
        mov     eax, [MARKER]
        cmp     eax, MAGIC
        je      second
        mov     dword ptr [MARKER], MAGIC
        puts    first
        xor     ecx, ecx
        div     ecx
        jmp     .                       # not reached
second:
        puts    again
        exit    0

first:  .asciz  "first boot\n"
again:  .asciz  "second boot\n"
