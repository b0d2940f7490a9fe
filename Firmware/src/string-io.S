#
# string-io - exercises the VMM's string port-I/O path (INS/OUTS with REP).
#
# Mode: long (ring 0).
# Does, each step ONE string instruction (no LSR polling, no per-byte loop):
#   1. rep outsb: the 17 bytes "string I/O works\n" to COM1 data port 0x3F8.
#   2. rep outsd: the 4 dwords 0x11111111, 0x22222222, 0x33333333, 0x44444444
#      to the REPORT port 0xF8.
#   3. zeroes guest memory 0x6000..0x601F (rep stosd), then rep insw: 8 words
#      from port 0x0CF0 (no device there: reads return all ones) into 0x6000.
#   4. writes 0 to port 0xF4.
# A test should expect:
#   - console output exactly "string I/O works\n"
#   - reported values [0x11111111, 0x22222222, 0x33333333, 0x44444444]
#   - memory 0x6000..0x600F all 0xFF, 0x6010..0x601F all 0x00
#   - exit status 0.
# Note for the VMM: KVM reports string I/O as KVM_EXIT_IO with size, count
# and data_offset; data holds count * size bytes, element i at offset
# i * size. A REP instruction may arrive as one exit with count > 1 or as
# several exits. Measured on this KVM-PVM host (same pattern as KVM's x86
# emulator, which VMX/SVM also use for string I/O): `rep outsb`/`rep outsd`
# give ONE EXIT PER ELEMENT (17 exits, then 4 exits, each count = 1), while
# `rep insw` gives one exit with count = 8 (INS is batched up to a page).
# So the VMM must handle any split, and tests should assert on the resulting
# console output / reported values / memory, not on exit counts.
# The source data below is 16-byte aligned and the image is far smaller than
# a page, so no element straddles a page boundary.
#
        .include "guest.S.inc"
        guest_code 64

        .section .text.start, "ax"
        .globl  _start
_start:
        cld
        lea     rsi, [rip + text]
        mov     ecx, text_end - text
        mov     dx, 0x3F8
        rep outsb

        lea     rsi, [rip + values]
        mov     ecx, 4
        mov     dx, 0xF8
        rep outsd

        mov     edi, 0x6000
        xor     eax, eax
        mov     ecx, 8
        rep stosd               # 0x6000..0x601F = 0

        mov     edi, 0x6000
        mov     ecx, 8
        mov     dx, 0x0CF0
        rep insw                # 0x6000..0x600F = 0xFF

        exit    0

        .balign 16
values: .long   0x11111111, 0x22222222, 0x33333333, 0x44444444
text:   .ascii  "string I/O works\n"
text_end:
