#
# bzimage-start - the start of a C firmware guest shaped like a Linux bzImage, so that any
# Linux loader boots it: SwiftKVM (64-bit entry), QEMU (real-mode setup entry, through its
# option ROM or qboot), or a 32-bit boot-protocol loader (code32_start).
#
# Layout (bzimage.ld): the setup part (boot sector + 1 setup sector, the header at 0x1F1) at
# file offset 0; the protected-mode part after it, loaded at 1 MiB, with
#   +0x000  startup_32  32-bit protected mode, paging off, flat segments, ESI = boot_params
#   +0x200  startup_64  long mode, identity-mapped, ESI = boot_params (SwiftKVM's entry)
# and the real-mode entry at setup offset 0x200 (CS = DS + 0x20, DS = the setup segment, whose
# base is boot_params).
#
# All three end in long mode on this image's own page tables (the low 4 GiB identity-mapped with
# 2 MiB pages, so virtio-mmio windows below 4 GiB are reachable), with a stack and a zeroed .bss,
# and call
#       int guest_main(const unsigned char *boot_params);
# Its return value goes to port 0xF4 (QEMU's isa-debug-exit; SwiftKVM's Linux machine ignores
# it), then 0xFE to port 0x64 resets through the i8042 (ends a SwiftKVM Linux guest, outcome
# .rebooted), then the CPU halts.
#
        .intel_syntax noprefix

        .set    LOAD_ADDRESS,   0x100000
        .set    SETUP_SECTS,    1
        .set    CODE32,         0x08
        .set    DATA,           0x10
        .set    CODE64,         0x18
        .set    STACK_SIZE,     0x4000

# ---------------------------------------------------------------------------------------------
# The setup part: the boot-protocol header (Documentation/arch/x86/boot.rst, protocol 2.15) and
# the real-mode entry.
# ---------------------------------------------------------------------------------------------
        .section .setup, "ax"
        .code16
setup_start:
        cli
1:      hlt
        jmp     1b

        .org    0x1F1
        .byte   SETUP_SECTS             # setup_sects
        .word   0                       # root_flags
        .long   __pm_paragraphs         # syssize: the protected-mode part, in 16-byte units
        .word   0                       # ram_size
        .word   0xFFFF                  # vid_mode
        .word   0                       # root_dev
        .word   0xAA55                  # boot_flag
        .org    0x200
        .byte   0xEB, setup_code - 0x202 # jump over the header to the real-mode entry
        .ascii  "HdrS"                  # header
        .word   0x020F                  # version 2.15
        .long   0                       # realmode_swtch
        .word   0                       # start_sys_seg
        .word   kernel_version - 0x200  # kernel_version
        .byte   0                       # type_of_loader
        .byte   0x01                    # loadflags: LOADED_HIGH
        .word   0                       # setup_move_size
        .long   LOAD_ADDRESS            # code32_start
        .long   0                       # ramdisk_image
        .long   0                       # ramdisk_size
        .long   0                       # bootsect_kludge
        .word   0                       # heap_end_ptr
        .byte   0                       # ext_loader_ver
        .byte   0                       # ext_loader_type
        .long   0                       # cmd_line_ptr
        .long   0x7FFFFFFF              # initrd_addr_max
        .long   0x200000                # kernel_alignment
        .byte   0                       # relocatable_kernel
        .byte   21                      # min_alignment
        .word   0x0001                  # xloadflags: XLF_KERNEL_64 (startup_64 at +0x200)
        .long   2047                    # cmdline_size
        .long   0                       # hardware_subarch
        .quad   0                       # hardware_subarch_data
        .long   0                       # payload_offset
        .long   0                       # payload_length
        .quad   0                       # setup_data
        .quad   LOAD_ADDRESS            # pref_address
        .long   __init_size             # init_size
        .long   0                       # handover_offset
        .long   0                       # kernel_info_offset

# The real-mode entry: CS = DS + 0x20, DS = ES = SS = the setup segment (boot_params at its base).
setup_code:
        cli
        xor     esi, esi
        mov     si, ds
        shl     esi, 4                  # ESI = boot_params, as startup_32 wants it
        lgdt    [gdt_pointer16]         # DS-relative: the descriptor lies in this sector
        mov     eax, cr0
        or      eax, 1
        mov     cr0, eax
        .byte   0x66, 0xEA              # ljmpl CODE32:startup_32
        .long   startup_32
        .word   CODE32

        .balign 8
gdt_pointer16:
        .word   gdt_end - gdt - 1
        .long   gdt

        .org    0x300
kernel_version:
        .asciz  "SwiftKVM firmware guest (bzImage-shaped)"
        .org    0x400

# ---------------------------------------------------------------------------------------------
# The protected-mode part, at 1 MiB.
# ---------------------------------------------------------------------------------------------
        .section .text.entry, "ax"
        .code32
        .globl  startup_32
startup_32:                             # +0x000
        cli
        # CS, not DS: coming from setup_code, DS still has the real-mode setup segment's base.
        lgdt    cs:[gdt_pointer]
        mov     eax, DATA
        mov     ds, eax
        mov     es, eax
        mov     ss, eax
        mov     eax, cr4
        or      eax, 0x20               # PAE
        mov     cr4, eax
        mov     eax, offset pml4
        mov     cr3, eax
        mov     ecx, 0xC0000080         # EFER
        rdmsr
        or      eax, 0x100              # LME
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000001         # PG | PE
        mov     cr0, eax
        .byte   0xEA                    # ljmp CODE64:long_mode
        .long   long_mode
        .word   CODE64

        .org    0x200
        .code64
        .globl  startup_64
startup_64:                             # +0x200: the loader's page tables map this image
        cli
        lgdt    [gdt_pointer]
        mov     rax, offset pml4
        mov     cr3, rax                # now ours: the low 4 GiB, MMIO windows included
long_mode:
        mov     eax, DATA
        mov     ss, eax
        lea     rsp, [stack_top]
        mov     r12d, esi               # boot_params (below 4 GiB)
        lea     rdi, [__bss_start]
        lea     rcx, [__bss_end]
        sub     rcx, rdi
        shr     rcx, 3
        xor     eax, eax
        rep stosq
        mov     rdi, r12
        call    guest_main
        out     0xF4, al                # QEMU isa-debug-exit: status (al << 1) | 1
        mov     al, 0xFE
        out     0x64, al                # i8042 reset
2:      cli
        hlt
        jmp     2b

        .section .data
        .balign 16
gdt:
        .quad   0
        .quad   0x00CF9A000000FFFF      # CODE32: 32-bit flat code
        .quad   0x00CF92000000FFFF      # DATA: flat data
        .quad   0x00AF9A000000FFFF      # CODE64: long-mode code
gdt_end:
gdt_pointer:
        .word   gdt_end - gdt - 1
        .quad   gdt

# Identity map of the low 4 GiB with 2 MiB pages: PML4 -> one PDPT -> four page directories.
        .balign 4096
pml4:
        .quad   pdpt + 0x03             # present, writable
        .fill   511, 8, 0
pdpt:
        .quad   page_directories + 0x0000 + 0x03
        .quad   page_directories + 0x1000 + 0x03
        .quad   page_directories + 0x2000 + 0x03
        .quad   page_directories + 0x3000 + 0x03
        .fill   508, 8, 0
page_directories:
        .set    page, 0
        .rept   2048
        .quad   (page << 21) | 0x83     # present, writable, 2 MiB
        .set    page, page + 1
        .endr

        .section .bss
        .balign 16
stack:
        .skip   STACK_SIZE
stack_top:
