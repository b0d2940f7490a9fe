#
# crt0-user - start file for freestanding 64-bit C guests (user or long mode).
#
# Entry at address 0 (section .text.start, placed first by flat.ld).
# Does: zeroes .bss ([__bss_start, __bss_end): not part of the flat binary),
#       aligns RSP to 16 bytes, calls main(), then writes main's return value
#       (low byte) to the debug-exit port 0xF4. Touches nothing else: RSP is
#       whatever the VMM set (top of usable RAM).
#
        .intel_syntax noprefix
        .code64

        .section .text.start, "ax"
        .globl  _start
_start:
        cld
        lea     rdi, [rip + __bss_start]
        lea     rcx, [rip + __bss_end]
        sub     rcx, rdi
        xor     eax, eax
        rep stosb
        and     rsp, -16
        call    main
        mov     dx, 0xF4
        out     dx, al
        hlt                     # not reached unless the VMM ignores 0xF4
