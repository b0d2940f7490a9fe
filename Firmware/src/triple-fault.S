#
# triple-fault - protected-mode guest that triple-faults on its last vCPU.
#
# Mode: protected (32-bit flat, no IDT loaded), on one or more vCPUs (UnitGuest.cpus).
# Does: CPUID leaf 1 gives each vCPU its APIC id (EBX[31:24]) and the vCPU count (EBX[23:16]).
#       The vCPU with the highest APIC id prints "faulting\n" on COM1, then divides by zero
#       (xor ecx,ecx; div ecx): with no IDT the #DE cannot be delivered, that becomes a double
#       fault, which cannot be delivered either: triple fault. The other vCPUs spin.
# A test should expect: console output "faulting\n", run status "shutdown"
#       (KVM_EXIT_SHUTDOWN) decided by the last vCPU, no reported values.
#
        .include "guest.S.inc"
        guest_code 32

        .section .text.start, "ax"
        .globl  _start
_start:
        mov     eax, 1
        cpuid
        mov     eax, ebx
        shr     eax, 24                 # this vCPU's APIC id
        shr     ebx, 16
        and     ebx, 0xFF               # the vCPU count
        inc     eax
        cmp     eax, ebx
        jb      others                  # not the last one
        puts    msg
        xor     ecx, ecx
        div     ecx
        # Not reached.
        jmp     .
others:
        pause
        jmp     others

msg:    .asciz  "faulting\n"
