#
# halt - long-mode guest that ends with HLT.
#
# Mode: long (ring 0).
# Does: reports 0x600DF00D to port 0xF8, then executes `cli; hlt`.
# A test should expect: reported values [0x600DF00D], run status "halted",
#       no console output.
#
        .include "guest.S.inc"
        guest_code 64

        .section .text.start, "ax"
        .globl  _start
_start:
        report  0x600DF00D
        cli
        hlt
        # Not reached: a VMM that resumes after HLT spins here (time limit).
        jmp     .
