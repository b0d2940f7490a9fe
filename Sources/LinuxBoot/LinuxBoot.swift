// LinuxBoot: the x86 Linux boot protocol (Documentation/arch/x86/boot.rst) — the bzImage setup
// header, the zero page, the e820 map, the command line and initrd placement. It depends only on
// VMMCore's guest memory, so every part of it is testable on in-memory images without /dev/kvm.
