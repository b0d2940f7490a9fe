#
# hello-long - 64-bit long-mode (ring 0) "hello" guest.
#
# Mode: long (CS=0x08, identity-mapped paging, ring 0).
# Does: prints "Hello from long mode!\n" on COM1, then writes 0 to the
#       debug-exit port 0xF4.
# A test should expect: console output exactly "Hello from long mode!\n",
#       exit status 0, no reported values.
#
        .include "guest.S.inc"
        guest_code 64

        .section .text.start, "ax"
        .globl  _start
_start:
        puts    msg
        exit    0

msg:    .asciz  "Hello from long mode!\n"
