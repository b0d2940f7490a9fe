#
# boot-probe - a bzImage-shaped guest that checks what a Linux loader hands it.
#
# Shape: a real x86 boot-protocol image (Documentation/arch/x86/boot.rst, protocol 2.15):
#   file 0x000 ..< 0x400   setup: one boot sector plus setup_sects = 1 sector; the setup
#                          header at 0x1F1 (boot flag, "HdrS", LOADED_HIGH, XLF_KERNEL_64, ...)
#                          and a small real-mode setup after it
#   file 0x400 ..< 0x1400  the protected-mode kernel (syssize 0x100 paragraphs), loaded at
#                          1 MiB; its byte 0 (guest 0x100000, code32_start) is the 32-bit entry,
#                          its byte 0x200 (file 0x600, guest 0x100200) the 64-bit entry
#
# Three ways in, as Linux has (boot.rst, "Running the kernel", "32-bit/64-bit Boot Protocol"):
#   - 64-bit entry (SwiftKVM's default): long mode, paging on, identity map, CS = 0x10,
#     DS/ES/SS = 0x18, interrupts off, RSI = the zero page.
#   - 32-bit entry (code32_start, like Linux's startup_32): protected mode, paging off, flat
#     CS = 0x10 and DS/ES/SS = 0x18, interrupts off, ESI = the zero page, EBX = EDI = EBP = 0.
#     It checks that state (the entry32-* checks), identity-maps what it reads with 2 MiB pages,
#     enters long mode itself and joins the 64-bit checks, skipping the ones about the 64-bit
#     entry state (cs-selector ... rflags-if-clear), which it made itself.
#   - real-mode setup (the jump at 0x200, CS = DS + 0x20): what a BIOS-style loader runs, e.g.
#     QEMU's qboot for `-M microvm -kernel`. Like Linux's setup it builds a zeroed zero page with
#     a copy of the setup header and the BIOS e820 map (int 0x15, AX = 0xE820), switches to
#     protected mode and jumps to code32_start. It prints nothing.
# Every entry runs ring 0 (emulated on KVM-PVM hosts, so the code is short and loops run over a
# few hundred bytes, or one page-table entry per 2 MiB the probe reads: 32 for a 64 MiB guest).
# No IDT: any exception triple-faults.
#
# Does: the first line, at the first instruction that can print, is
#           PROBE start boot-probe
#       then one line on COM1 per check,
#           PROBE ok NAME
#           PROBE FAIL NAME got=0x<16 hex digits>
#       values the host has to compare itself as
#           PROBE value NAME 0x<16 hex digits>
#       the command line as "PROBE cmdline <text>", then "PROBE DONE failures=0x...".
#       Finally it writes the failure count to port 0xF4 (a debug exit like QEMU's
#       isa-debug-exit, whose exit status is then count * 2 + 1; a SwiftKVM Linux guest's VMM
#       drops it) and resets through the i8042 (0xFE to port 0x64), which ends a SwiftKVM Linux
#       guest with outcome .rebooted.
# Expects from the host: the command line starts with "probe-marker=1234", the initrd starts
#       with "PROBE-INITRD-OK!" and is at least 256 bytes long.
#
# The file links at 0 (flat.ld). 64-bit code uses RIP-relative data, so it runs at 1 MiB as
# linked; 32-bit code uses absolute addresses (label + RUN), 16-bit code addresses the setup
# through DS.
#
        .intel_syntax noprefix

        .set    LOAD_ADDRESS,   0x100000        # where the loader puts the protected-mode part
        .set    SETUP_SECTS,    1
        .set    PM_OFFSET,      (SETUP_SECTS + 1) * 512
        .set    PM_SIZE,        0x1000          # the protected-mode part, padded to this size
        .set    INIT_SIZE,      0x100000
        .set    CMDLINE_SIZE,   2047            # as Linux: COMMAND_LINE_SIZE - 1
        .set    STACK_TOP,      LOAD_ADDRESS + INIT_SIZE - 0x1000   # in our init_size region
        .set    PAGE_TABLES,    LOAD_ADDRESS + 0x10000  # 32-bit entry: PML4, PDPT, 4 PDs (init_size region)
        .set    SETUP_ZERO_PAGE, 0x1000         # real-mode setup: its zero page, at DS:0x1000 (the heap)
        .set    RUN,            LOAD_ADDRESS - PM_OFFSET  # label + RUN: its run-time address (32-bit code)

        # boot_params offsets
        .set    BP_EXT_RAMDISK_IMAGE, 0x0C0
        .set    BP_EXT_RAMDISK_SIZE,  0x0C4
        .set    BP_EXT_CMD_LINE_PTR,  0x0C8
        .set    BP_E820_ENTRIES,      0x1E8
        .set    BP_SENTINEL,          0x1EF
        .set    BP_SETUP_HEADER,      0x1F1
        .set    BP_HEADER,            0x202
        .set    BP_VERSION,           0x206
        .set    BP_TYPE_OF_LOADER,    0x210
        .set    BP_LOADFLAGS,         0x211
        .set    BP_CODE32_START,      0x214
        .set    BP_RAMDISK_IMAGE,     0x218
        .set    BP_RAMDISK_SIZE,      0x21C
        .set    BP_CMD_LINE_PTR,      0x228
        .set    BP_CMDLINE_SIZE,      0x238
        .set    BP_INIT_SIZE,         0x260
        .set    BP_E820_TABLE,        0x2D0
        .set    E820_MAX_ENTRIES,     128

        .set    COM1,           0x3F8
        .set    COM1_LSR,       0x3FD
        .set    COM1_SCR,       0x3FF

        .section .text.start, "ax"
        .globl  _start
_start:

# ---------------------------------------------------------------------------------------------
# Setup sectors: a boot sector that is never run, the setup header, the real-mode setup.
# ---------------------------------------------------------------------------------------------
        .code16
        cli
1:      hlt
        jmp     1b
        .ascii  "boot-probe: not a boot sector\0"

        .org    0x1F1
hdr_setup_sects:        .byte   SETUP_SECTS
hdr_root_flags:         .word   0
hdr_syssize:            .long   PM_SIZE / 16
hdr_ram_size:           .word   0
hdr_vid_mode:           .word   0xFFFF
hdr_root_dev:           .word   0
hdr_boot_flag:          .word   0xAA55
        .org    0x200
hdr_jump:               .byte   0xEB, setup_code - 0x202   # also the header length: ends at 0x26C
hdr_header:             .ascii  "HdrS"
hdr_version:            .word   0x020F
hdr_realmode_swtch:     .long   0
hdr_start_sys_seg:      .word   0
hdr_kernel_version:     .word   kernel_version - 0x200
hdr_type_of_loader:     .byte   0
hdr_loadflags:          .byte   0x01                        # LOADED_HIGH
hdr_setup_move_size:    .word   0
hdr_code32_start:       .long   LOAD_ADDRESS
hdr_ramdisk_image:      .long   0
hdr_ramdisk_size:       .long   0
hdr_bootsect_kludge:    .long   0
hdr_heap_end_ptr:       .word   0
hdr_ext_loader_ver:     .byte   0
hdr_ext_loader_type:    .byte   0
hdr_cmd_line_ptr:       .long   0
hdr_initrd_addr_max:    .long   0x7FFFFFFF
hdr_kernel_alignment:   .long   0x200000
hdr_relocatable_kernel: .byte   0
hdr_min_alignment:      .byte   21
hdr_xloadflags:         .word   0x0001                      # XLF_KERNEL_64
hdr_cmdline_size:       .long   CMDLINE_SIZE
hdr_hardware_subarch:   .long   0
hdr_hardware_subarch_data: .quad 0
hdr_payload_offset:     .long   0
hdr_payload_length:     .long   0
hdr_setup_data:         .quad   0
hdr_pref_address:       .quad   LOAD_ADDRESS
hdr_init_size:          .long   INIT_SIZE
hdr_handover_offset:    .long   0
hdr_kernel_info_offset: .long   0

# ---------------------------------------------------------------------------------------------
# The real-mode setup (boot.rst, "Running the kernel"): entered at CS = DS + 0x20, IP = 0 (the
# jump at 0x200) with DS = ES = SS = the setup's segment and interrupts off. It does what Linux's
# setup does for a 32-bit entry, no more: a zero page, the BIOS memory map, protected mode.
# Data is addressed through DS (base = the file's start), so labels are DS offsets.
# ---------------------------------------------------------------------------------------------
setup_code:                                                 # 0x26C
        cli
        cld
        mov     ax, ds
        mov     es, ax
        mov     gs, ax                                      # GS keeps the setup's base below

        # The zero page: 4 KiB of zeros at DS:SETUP_ZERO_PAGE, then the setup header copied in.
        mov     di, SETUP_ZERO_PAGE
        xor     eax, eax
        mov     cx, 1024
        rep     stosd
        mov     si, BP_SETUP_HEADER
        mov     di, SETUP_ZERO_PAGE + BP_SETUP_HEADER
        mov     cx, offset setup_code - BP_SETUP_HEADER     # up to the end of the header (0x26C)
        rep     movsb

        # e820 (ACPI "Query System Address Map"): EBX carries the continuation value.
        xor     ebx, ebx
        mov     di, SETUP_ZERO_PAGE + BP_E820_TABLE
1:      mov     eax, 0xE820
        mov     edx, 0x534D4150                             # "SMAP"
        mov     ecx, 20
        int     0x15
        jc      2f
        cmp     eax, 0x534D4150
        jne     2f
        add     di, 20
        inc     byte ptr [SETUP_ZERO_PAGE + BP_E820_ENTRIES]
        test    ebx, ebx
        jz      2f
        cmp     byte ptr [SETUP_ZERO_PAGE + BP_E820_ENTRIES], E820_MAX_ENTRIES
        jb      1b
2:
        # Protected mode with a flat __BOOT_CS (0x10) and __BOOT_DS (0x18), then a far jump to
        # code32_start with ESI = the zero page and EBX = EDI = EBP = 0 (the 32-bit boot protocol).
        mov     ax, ds
        movzx   eax, ax
        shl     eax, 4                                      # the setup's linear base
        add     dword ptr [setup_gdt_pointer + 2], eax
        data32 lgdt [setup_gdt_pointer]                     # a 32-bit base
        mov     esi, eax
        add     esi, SETUP_ZERO_PAGE
        mov     ecx, [SETUP_ZERO_PAGE + BP_CODE32_START]
        mov     [setup_jump_target], ecx
        xor     ebx, ebx
        xor     edi, edi
        xor     ebp, ebp
        mov     eax, cr0
        or      al, 1                                       # PE
        mov     cr0, eax
        mov     ax, 0x18
        mov     ds, ax
        mov     es, ax
        mov     fs, ax
        mov     ss, ax
        jmp     fword ptr gs:[setup_jump_target]            # GS still has the real-mode base

        .balign 8
setup_gdt:
        .quad   0, 0
        .quad   0x00CF9B000000FFFF                          # 0x10: 32-bit code, flat
        .quad   0x00CF93000000FFFF                          # 0x18: data, flat
setup_gdt_pointer:
        .word   4 * 8 - 1
        .long   setup_gdt                                   # + the setup's linear base at run time
setup_jump_target:
        .long   0                                           # code32_start
        .word   0x10

kernel_version:
        .asciz  "0.1.0-boot-probe (SwiftKVM boot-protocol probe)"

# ---------------------------------------------------------------------------------------------
# The protected-mode kernel: loaded at LOAD_ADDRESS.
# ---------------------------------------------------------------------------------------------
        .org    PM_OFFSET
pm_start:

# ---------------------------------------------------------------------------------------------
# The 32-bit entry (code32_start), like Linux's startup_32. Registers kept: EBP the failure
# count (it must be 0 at entry, checked first). Everything else is in memory at absolute
# addresses (label + RUN), as DS is flat.
# ---------------------------------------------------------------------------------------------
        .code32

# verdict32 CC, NAME - the 32-bit verdict: CC true means passed; EAX is printed on failure.
# Clobbers EAX, EBX, ECX, EDX, ESI, EDI, flags.
.macro verdict32 cc, name
        mov     esi, offset .Lname\@ + RUN
        j\cc    .Lok\@
        call    fail32
        jmp     .Lend\@
.Lok\@:
        call    pass32
        jmp     .Lend\@
.Lname\@:
        .asciz  "\name"
.Lend\@:
.endm

entry32:
        mov     esp, STACK_TOP
        pushfd
        pop     dword ptr [entry32_flags + RUN]
        mov     [zero_page32 + RUN], esi
        or      ebx, edi
        or      ebx, ebp
        mov     [entry32_registers + RUN], ebx
        mov     byte ptr [entered_at_32 + RUN], 1
        xor     ebp, ebp
        cld

        mov     esi, offset s_start + RUN
        call    puts32

        call    1f                                          # where we run
1:      pop     eax
        sub     eax, offset 1b - entry32
        cmp     eax, LOAD_ADDRESS
        verdict32 e, entry32-address

        mov     ax, cs
        movzx   eax, ax
        cmp     eax, 0x10
        verdict32 e, entry32-cs-selector
        mov     ax, ds
        movzx   eax, ax
        cmp     eax, 0x18
        verdict32 e, entry32-ds-selector
        mov     ax, es
        movzx   eax, ax
        cmp     eax, 0x18
        verdict32 e, entry32-es-selector
        mov     ax, ss
        movzx   eax, ax
        cmp     eax, 0x18
        verdict32 e, entry32-ss-selector

        mov     eax, cr0
        and     eax, 0x80000001
        cmp     eax, 1
        verdict32 e, entry32-cr0-pe-no-pg

        mov     eax, [entry32_flags + RUN]
        test    eax, 0x200
        verdict32 z, entry32-rflags-if-clear

        mov     eax, [entry32_registers + RUN]
        test    eax, eax
        verdict32 z, entry32-ebx-edi-ebp-zero

        jmp     long_mode32
        .org    PM_OFFSET + 0x200
        .code64

# verdict CC, NAME - after a compare, CC true means the check passed. RAX holds the value
# found (printed on failure). Clobbers RAX, RBX, RCX, RDX, RSI, RDI, flags.
.macro verdict cc, name
        lea     rsi, [rip + .Lname\@]
        j\cc    .Lok\@
        call    fail
        jmp     .Lend\@
.Lok\@:
        call    pass
        jmp     .Lend\@
.Lname\@:
        .asciz  "\name"
.Lend\@:
.endm

# value NAME - prints "PROBE value NAME 0x<RAX>". Same clobbers.
.macro value name
        lea     rsi, [rip + .Lname\@]
        call    print_value
        jmp     .Lend\@
.Lname\@:
        .asciz  "\name"
.Lend\@:
.endm

# ---------------------------------------------------------------------------------------------
# The 64-bit entry, like Linux's startup_64 (and, from `checks` on, the 32-bit entry's path).
# Registers kept across the checks: R15 the zero page, R14 the failure count, R13 RFLAGS at
# entry, R12 the command line, R11 the initrd, R10 the end of the RAM entry holding the kernel,
# R9 the e820 RAM total, R8 scratch, RBP the end of the kernel's init_size region.
entry64:
        mov     r15, rsi
        lea     rsp, [rip + pm_start + INIT_SIZE - 0x1000]  # a stack in our init_size region
        pushfq
        pop     r13
        xor     r14d, r14d
        cld

        lea     rsi, [rip + s_start]
        call    puts

        # --- where we run -----------------------------------------------------------------------
        lea     rax, [rip + entry64]
        cmp     rax, LOAD_ADDRESS + 0x200
        verdict e, entry-address

checks:                                                     # the 32-bit entry joins here
        mov     rax, [rip + image_end_magic]                # the last bytes of syssize * 16
        movabs  rbx, 0x21444E452D424F52                     # "ROB-END!"
        cmp     rax, rbx
        verdict e, image-loaded-whole

        # --- 1. the zero page -------------------------------------------------------------------
        mov     rax, r15
        value   zero-page-address

        mov     eax, [r15 + BP_HEADER]
        cmp     eax, 0x53726448                             # "HdrS"
        verdict e, zero-page-signature

        movzx   eax, word ptr [r15 + BP_VERSION]
        cmp     eax, 0x020F
        verdict e, zero-page-version

        mov     eax, [r15 + BP_INIT_SIZE]
        cmp     eax, INIT_SIZE
        verdict e, zero-page-init-size

        movzx   eax, byte ptr [r15 + BP_TYPE_OF_LOADER]
        value   type-of-loader

        movzx   eax, byte ptr [r15 + BP_LOADFLAGS]
        test    al, 0x01
        verdict nz, loadflags-loaded-high

        movzx   eax, byte ptr [r15 + BP_SENTINEL]
        test    eax, eax
        verdict z, sentinel-clear

        # --- 2. the command line ----------------------------------------------------------------
        mov     eax, [r15 + BP_CMD_LINE_PTR]
        mov     ecx, [r15 + BP_EXT_CMD_LINE_PTR]
        shl     rcx, 32
        or      rax, rcx
        mov     r12, rax
        test    rax, rax
        verdict nz, cmdline-pointer

        lea     rsi, [rip + s_marker]
        mov     rdi, r12
        call    memeq
        verdict z, cmdline-marker

        mov     rdi, r12                                    # length, up to CMDLINE_SIZE + 1
        xor     eax, eax
1:      cmp     byte ptr [rdi + rax], 0
        je      2f
        inc     rax
        cmp     rax, CMDLINE_SIZE + 1
        jb      1b
2:      mov     r8, rax
        mov     ecx, [r15 + BP_CMDLINE_SIZE]
        cmp     rax, rcx
        verdict be, cmdline-terminated
        cmp     r8, CMDLINE_SIZE
        ja      3f
        lea     rsi, [rip + s_cmdline]
        call    puts
        mov     rsi, r12
        call    puts
        call    newline
3:
        # --- 3. e820 ----------------------------------------------------------------------------
        mov     eax, [r15 + BP_INIT_SIZE]
        lea     rbp, [rip + pm_start]
        add     rbp, rax                                    # end of the kernel's memory

        movzx   eax, byte ptr [r15 + BP_E820_ENTRIES]
        mov     r8, rax
        lea     ecx, [rax - 2]
        cmp     ecx, 128 - 2
        verdict be, e820-entries                            # 2 ..< 129

        xor     r9d, r9d
        xor     r10d, r10d
        lea     rdi, [r15 + BP_E820_TABLE]
        mov     ecx, r8d
        cmp     ecx, 128
        jbe     1f
        mov     ecx, 128
1:      test    ecx, ecx
        jz      3f
        cmp     dword ptr [rdi + 16], 1                     # E820_TYPE_RAM
        jne     2f
        mov     rax, [rdi]
        mov     rdx, [rdi + 8]
        add     r9, rdx
        cmp     rax, LOAD_ADDRESS
        ja      2f
        add     rdx, rax
        cmp     rdx, rbp
        jb      2f
        mov     r10, rdx
2:      add     rdi, 20
        dec     ecx
        jmp     1b
3:
        mov     rax, r10
        test    rax, rax
        verdict nz, e820-ram-covers-kernel
        mov     rax, r8
        value   e820-entries
        mov     rax, r9
        value   e820-ram-total

        # --- 4. the initrd ----------------------------------------------------------------------
        mov     eax, [r15 + BP_RAMDISK_IMAGE]
        mov     ecx, [r15 + BP_EXT_RAMDISK_IMAGE]
        shl     rcx, 32
        or      rax, rcx
        mov     r11, rax
        mov     eax, [r15 + BP_RAMDISK_SIZE]
        mov     ecx, [r15 + BP_EXT_RAMDISK_SIZE]
        shl     rcx, 32
        or      rax, rcx
        mov     r8, rax

        mov     rax, r11
        test    r8, r8
        cmovz   rax, r8                                     # 0 unless address and size are set
        test    rax, rax
        verdict nz, initrd-present

        mov     rax, r11
        test    eax, 0xFFF
        verdict z, initrd-page-aligned

        mov     rax, r11
        cmp     rax, rbp
        verdict ae, initrd-above-kernel

        lea     rax, [r11 + r8]
        cmp     rax, r10
        verdict be, initrd-in-ram

        lea     rsi, [rip + s_initrd_pattern]
        mov     rdi, r11
        call    memeq
        verdict z, initrd-pattern

        mov     rdi, r11
        xor     eax, eax
        mov     ecx, 256
1:      movzx   edx, byte ptr [rdi]
        add     eax, edx
        inc     rdi
        dec     ecx
        jnz     1b
        value   initrd-sum
        mov     rax, r11
        value   initrd-address
        mov     rax, r8
        value   initrd-size

        # --- 5. the CPU state at the 64-bit entry (the 32-bit entry checked its own) ------------
        cmp     byte ptr [rip + entered_at_32], 0
        jne     6f
        mov     ax, cs
        movzx   eax, ax
        cmp     eax, 0x10
        verdict e, cs-selector
        mov     ax, ds
        movzx   eax, ax
        cmp     eax, 0x18
        verdict e, ds-selector
        mov     ax, es
        movzx   eax, ax
        cmp     eax, 0x18
        verdict e, es-selector
        mov     ax, ss
        movzx   eax, ax
        cmp     eax, 0x18
        verdict e, ss-selector

        mov     rax, cr0
        mov     ecx, eax
        and     ecx, 0x80000001
        cmp     ecx, 0x80000001
        verdict e, cr0-pg-pe

        mov     rax, cr4
        test    eax, 0x20
        verdict nz, cr4-pae

        mov     ecx, 0xC0000080
        rdmsr
        shl     rdx, 32
        or      rax, rdx
        test    eax, 0x400
        verdict nz, efer-lma

        mov     rax, r13
        test    eax, 0x200
        verdict z, rflags-if-clear
6:
        # --- 6. the serial port -----------------------------------------------------------------
        mov     dx, COM1_LSR
        in      al, dx
        movzx   eax, al
        cmp     eax, 0x60
        verdict e, serial-lsr-idle

        mov     dx, COM1_SCR
        mov     al, 0xA5
        out     dx, al
        in      al, dx
        movzx   ecx, al
        mov     al, 0x5A
        out     dx, al
        in      al, dx
        movzx   eax, al
        shl     ecx, 8
        or      eax, ecx
        cmp     eax, 0xA55A
        verdict e, serial-scratch

        # --- the end ----------------------------------------------------------------------------
        lea     rsi, [rip + s_done]
        call    puts
        mov     rax, r14
        call    puthex
        call    newline

        mov     eax, r14d
        out     0xF4, al
        mov     al, 0xFE                                    # i8042: pulse the reset line
        out     0x64, al
1:      hlt
        jmp     1b

# ---------------------------------------------------------------------------------------------
# Routines. None touches R8-R15 or RBP.
# ---------------------------------------------------------------------------------------------

# putc: writes CL to COM1 once LSR.THRE is set. Clobbers AL, DX.
putc:
        mov     dx, COM1_LSR
1:      in      al, dx
        test    al, 0x20
        jz      1b
        mov     dx, COM1
        mov     al, cl
        out     dx, al
        ret

newline:
        mov     cl, 10
        jmp     putc

# puts: writes the NUL-terminated string at RSI. Clobbers AL, CL, DX, RSI.
puts:
1:      mov     cl, [rsi]
        test    cl, cl
        jz      2f
        call    putc
        inc     rsi
        jmp     1b
2:      ret

# puthex: writes RAX as "0x" and 16 upper-case hex digits. Clobbers RAX, RBX, CL, DX, EDI.
puthex:
        mov     rbx, rax
        mov     cl, '0'
        call    putc
        mov     cl, 'x'
        call    putc
        mov     edi, 16
1:      rol     rbx, 4
        mov     cl, bl
        and     cl, 0x0F
        add     cl, '0'
        cmp     cl, '9'
        jbe     2f
        add     cl, 'A' - '0' - 10
2:      call    putc
        dec     edi
        jnz     1b
        ret

# pass: "PROBE ok <RSI>".
pass:
        push    rsi
        lea     rsi, [rip + s_ok]
        call    puts
        pop     rsi
        call    puts
        jmp     newline

# fail: "PROBE FAIL <RSI> got=0x<RAX>", and one more failure counted.
fail:
        inc     r14
        push    rax
        push    rsi
        lea     rsi, [rip + s_fail]
        call    puts
        pop     rsi
        call    puts
        lea     rsi, [rip + s_got]
        call    puts
        pop     rax
        call    puthex
        jmp     newline

# print_value: "PROBE value <RSI> 0x<RAX>".
print_value:
        push    rax
        push    rsi
        lea     rsi, [rip + s_value]
        call    puts
        pop     rsi
        call    puts
        mov     cl, ' '
        call    putc
        pop     rax
        call    puthex
        jmp     newline

# memeq: compares memory at RDI with the NUL-terminated string at RSI (the NUL excluded).
# Equal: RAX = 0 and ZF set. Different: RAX = 1 + the offset of the first difference, ZF clear.
# Clobbers CL.
memeq:
        xor     eax, eax
1:      mov     cl, [rsi + rax]
        test    cl, cl
        jz      2f
        cmp     cl, [rdi + rax]
        jne     3f
        inc     rax
        jmp     1b
2:      xor     eax, eax
        ret
3:      inc     rax
        ret

# ---------------------------------------------------------------------------------------------
# The 32-bit entry, continued: page tables, long mode, then the 64-bit checks.
# ---------------------------------------------------------------------------------------------
        .code32

# Identity-maps [0, end) with 2 MiB pages, where end covers what the probe touches: its own
# init_size region (code, stack, these tables), the zero page, the command line and the initrd.
# Only the entries on those paths are written (the rest of each table is never walked).
long_mode32:
        mov     esi, [zero_page32 + RUN]
        mov     eax, LOAD_ADDRESS + INIT_SIZE
        lea     ecx, [esi + 0x1000]
        cmp     ecx, eax
        cmova   eax, ecx
        mov     ecx, [esi + BP_CMD_LINE_PTR]
        add     ecx, CMDLINE_SIZE + 1
        jc      2f
        cmp     ecx, eax
        cmova   eax, ecx
        mov     ecx, [esi + BP_RAMDISK_IMAGE]
        add     ecx, [esi + BP_RAMDISK_SIZE]
        jc      2f
        cmp     ecx, eax
        cmova   eax, ecx
        add     eax, 0x1FFFFF
        jc      2f
        shr     eax, 21                                     # 2 MiB pages, at most 2048
        jmp     3f
2:      mov     eax, 2048                                   # an address wrapped: all of 4 GiB
3:      mov     ecx, eax
        mov     edi, PAGE_TABLES + 0x2000                   # the four page directories, in a row
        mov     eax, 0x83                                   # present, writable, 2 MiB page
1:      mov     [edi], eax
        mov     dword ptr [edi + 4], 0
        add     eax, 0x200000
        add     edi, 8
        dec     ecx
        jnz     1b
        mov     edi, PAGE_TABLES + 0x1000                   # PDPT[0..3] -> the directories
        mov     eax, PAGE_TABLES + 0x2003
        mov     ecx, 4
1:      mov     [edi], eax
        mov     dword ptr [edi + 4], 0
        add     eax, 0x1000
        add     edi, 8
        dec     ecx
        jnz     1b
        mov     dword ptr [PAGE_TABLES], PAGE_TABLES + 0x1003   # PML4[0] -> the PDPT
        mov     dword ptr [PAGE_TABLES + 4], 0

        # Long mode (Intel SDM 3A, 10.8.5): PAE, CR3, EFER.LME, then CR0.PG; a 64-bit CS last.
        lgdt    [gdt64_pointer + RUN]
        mov     ax, 0x18
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     eax, cr4
        or      eax, 0x20                                   # PAE
        mov     cr4, eax
        mov     eax, PAGE_TABLES
        mov     cr3, eax
        mov     ecx, 0xC0000080                             # EFER
        rdmsr
        or      eax, 0x100                                  # LME
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000000                             # PG
        mov     cr0, eax
        push    0x10
        push    offset entry64_via32 + RUN
        retf

# putc32: writes CL to COM1 once LSR.THRE is set. Clobbers AL, DX.
putc32:
        mov     dx, COM1_LSR
1:      in      al, dx
        test    al, 0x20
        jz      1b
        mov     dx, COM1
        mov     al, cl
        out     dx, al
        ret

# puts32: writes the NUL-terminated string at ESI (an absolute address). Clobbers AL, CL, DX, ESI.
puts32:
1:      mov     cl, [esi]
        test    cl, cl
        jz      2f
        call    putc32
        inc     esi
        jmp     1b
2:      ret

# pass32: "PROBE ok <ESI>".
pass32:
        push    esi
        mov     esi, offset s_ok + RUN
        call    puts32
        pop     esi
        call    puts32
        mov     cl, 10
        jmp     putc32

# fail32: "PROBE FAIL <ESI> got=0x00000000<EAX>", and one more failure counted (EBP).
fail32:
        inc     ebp
        mov     ebx, eax
        push    esi
        mov     esi, offset s_fail + RUN
        call    puts32
        pop     esi
        call    puts32
        mov     esi, offset s_got32 + RUN
        call    puts32
        mov     edi, 8
1:      rol     ebx, 4
        mov     cl, bl
        and     cl, 0x0F
        add     cl, '0'
        cmp     cl, '9'
        jbe     2f
        add     cl, 'A' - '0' - 10
2:      call    putc32
        dec     edi
        jnz     1b
        mov     cl, 10
        jmp     putc32

        .code64
entry64_via32:
        mov     esi, [rip + zero_page32]                    # zero-extends: the upper half is 0
        mov     r15, rsi
        lea     rsp, [rip + pm_start + INIT_SIZE - 0x1000]
        mov     r14d, ebp                                   # failures so far
        xor     r13d, r13d
        cld
        jmp     checks

        .balign 8
gdt64:
        .quad   0
        .quad   0x00CF9B000000FFFF                          # 0x08: 32-bit code, flat
        .quad   0x00AF9B000000FFFF                          # 0x10: 64-bit code
        .quad   0x00CF93000000FFFF                          # 0x18: data, flat
gdt64_pointer:
        .word   4 * 8 - 1
        .long   gdt64 + RUN
zero_page32:    .long   0                                   # the 32-bit entry's ESI
entry32_flags:  .long   0                                   # its EFLAGS
entry32_registers: .long 0                                  # its EBX | EDI | EBP
entered_at_32:  .byte   0                                   # 1: the 32-bit entry ran

s_start:        .asciz  "PROBE start boot-probe\n"
s_got32:        .asciz  " got=0x00000000"
s_ok:           .asciz  "PROBE ok "
s_fail:         .asciz  "PROBE FAIL "
s_got:          .asciz  " got="
s_value:        .asciz  "PROBE value "
s_cmdline:      .asciz  "PROBE cmdline "
s_done:         .asciz  "PROBE DONE failures="
s_marker:       .asciz  "probe-marker=1234"
s_initrd_pattern: .asciz "PROBE-INITRD-OK!"

        # The image's last 16 bytes: present only if all syssize * 16 bytes were loaded.
        .org    PM_OFFSET + PM_SIZE - 16
        .ascii  "PROBE-I"
        .byte   0
image_end_magic:
        .ascii  "ROB-END!"
        .org    PM_OFFSET + PM_SIZE
