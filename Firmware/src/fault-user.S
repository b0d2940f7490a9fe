#
# fault-user - user-mode (CPL 3) guest that takes #GP.
#
# Mode: user (CPL 3).
# Does: prints "about to fault\n" on COM1, then executes HLT at CPL 3, which
#       raises #GP(0).
# The HLT is at the FIXED address 0x100 (label fault_rip; also listed in
#       build/fault-user.sym).
# A test should expect: console output "about to fault\n", run status
#       exception(vector 13, errorCode 0, rip 0x100), no reported values.
#
        .include "guest.S.inc"
        guest_code 64

        .section .text.start, "ax"
        .globl  _start
_start:
        puts    msg
        jmp     fault_rip

msg:    .asciz  "about to fault\n"

        .org    0x100
        .globl  fault_rip
fault_rip:
        hlt                     # #GP(0) at CPL 3, rip = 0x100
        # Not reached unless the VMM resumes after the fault.
        exit    1
