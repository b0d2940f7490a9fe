#
# exit-code - the smallest guest: exits immediately with status 42.
#
# Mode: real. Used by the VM round-trip benchmark (create VM -> first exit).
# Does: `mov al, 42; out 0xF4, al` - exactly one port-I/O exit.
# A test should expect: exit status 42 (0x2A), no console output, no reports.
#
        .intel_syntax noprefix
        .code16

        .section .text.start, "ax"
        .globl  _start
_start:
        mov     al, 42
        out     0xF4, al
        # Not reached unless the VMM ignores the exit port.
        hlt
