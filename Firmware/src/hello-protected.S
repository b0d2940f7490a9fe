#
# hello-protected - 32-bit protected-mode "hello" guest.
#
# Mode: protected (flat 32-bit, CS=0x18, data segments 0x10, no paging).
# Does: prints "Hello from protected mode!\n" on COM1, then writes 0 to the
#       debug-exit port 0xF4.
# A test should expect: console output exactly "Hello from protected mode!\n",
#       exit status 0, no reported values.
#
        .include "guest.S.inc"
        guest_code 32

        .section .text.start, "ax"
        .globl  _start
_start:
        puts    msg
        exit    0

msg:    .asciz  "Hello from protected mode!\n"
