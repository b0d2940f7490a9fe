#
# memory - guest memory read/write test.
#
# Mode: long (ring 0).
# Before the run the TEST writes 16 UInt32 values (little endian) at guest
# physical 0x8000..0x803F.
# Does:
#   1. sums the 16 values (wrapping 32-bit), stores the sum as a UInt32 at
#      0x9000 and reports it to port 0xF8;
#   2. fills 0xA000..0xA0FF with byte k = k (0x00, 0x01, ..., 0xFF) using 64
#      dword stores;
#   3. writes 0 to port 0xF4.
# A test should expect: reported values [sum], the UInt32 at 0x9000 == sum,
#   bytes 0xA000 + k == k for k in 0..255, exit status 0. The guest does not
#   touch any other memory outside its image (the stack is not used).
#
        .include "guest.S.inc"
        guest_code 64

        .section .text.start, "ax"
        .globl  _start
_start:
        cld
        mov     esi, 0x8000
        xor     eax, eax
        mov     ecx, 16
sum:    add     eax, [rsi]
        add     rsi, 4
        loop    sum
        mov     [0x9000], eax
        report  eax

        mov     edi, 0xA000
        mov     eax, 0x03020100         # bytes 0,1,2,3
        mov     ecx, 64
fill:   stosd
        add     eax, 0x04040404         # next 4 bytes; no carries: max 0xFF
        loop    fill

        exit    0
