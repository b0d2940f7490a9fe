#
# smp-report - every vCPU reports its APIC id, then vCPU 0 waits for all of them and exits.
#
# Mode: long (ring 0), started on N vCPUs at once (UnitGuest.cpus = N), all at _start with the
#       same registers. No stack is used: the vCPUs share the one the VMM set up.
# Does: CPUID leaf 1 gives each vCPU its initial APIC id (EBX[31:24]) and the vCPU count
#       (EBX[23:16]), as the VMM's CPUID policy set them. Each reports its APIC id (port 0xF8)
#       and counts itself in `arrived` with a locked increment. vCPU 0 then waits until `arrived`
#       equals the count and exits 0; the others spin until the VMM stops them.
# Expect: N reports that are 0 ..< N in some order, exit status 0.
#
        .include "guest.S.inc"
        guest_code 64
        .section .text.start, "ax"
        .globl _start
_start:
        mov     eax, 1
        cpuid
        mov     esi, ebx
        shr     esi, 24                 # this vCPU's APIC id
        shr     ebx, 16
        and     ebx, 0xFF               # how many vCPUs there are
        report  esi
        lock inc dword ptr [rip + arrived]
        test    esi, esi
        jnz     others
1:      mov     eax, dword ptr [rip + arrived]
        cmp     eax, ebx
        jb      1b
        exit    0
others:
        jmp     others

        .balign 4
arrived:
        .long   0
