#
# hello-real - real-mode "hello" guest.
#
# Mode: real (CS=DS=ES=SS=0, IP=0, SP=0xFFF0).
# Does: prints "Hello from real mode!\n" on COM1 (polling the LSR before each
#       byte), then writes 0 to the debug-exit port 0xF4.
# A test should expect: console output exactly "Hello from real mode!\n",
#       exit status 0, no reported values.
#
        .include "guest.S.inc"
        guest_code 16

        .section .text.start, "ax"
        .globl  _start
_start:
        puts    msg
        exit    0

msg:    .asciz  "Hello from real mode!\n"
