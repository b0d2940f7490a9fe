#
# io-loop - port-I/O exit-rate loop.
#
# Mode: real. Used by the exit-rate benchmark.
# Does: 20000 times `out 0x80, al` (0x80 is not a device of the unit-guest
#       ABI, so the VMM ignores the write), then writes 0 to port 0xF4.
#       That is 20001 port-I/O exits in total.
# A test should expect: exit status 0, no console output, no reports.
#
        .intel_syntax noprefix
        .code16

        .section .text.start, "ax"
        .globl  _start
_start:
        xor     al, al
        mov     cx, 20000
1:      out     0x80, al
        loop    1b
        out     0xF4, al        # AL is still 0: exit status 0
        # Not reached unless the VMM ignores the exit port.
        hlt
