/*
 * guest.h - helpers for freestanding 64-bit C guests of SwiftKVM.
 *
 * Compile with: -m64 -ffreestanding -fno-pic -fno-pie -nostdlib
 *   -mno-red-zone -fno-stack-protector -fno-asynchronous-unwind-tables
 *   -mgeneral-regs-only
 * and link with flat.ld after a start file (see src/crt0-user.S).
 *
 * Ports of the "unit guest" ABI:
 *   0x3F8 COM1 data, 0x3FD COM1 LSR (bit 5 = transmitter empty),
 *   0xF4  debug exit (8-bit write = exit status),
 *   0xF8  report (32-bit write appends a value to the run's report list).
 * In user mode (CPL 3) port I/O works because the VMM grants it: RFLAGS.IOPL
 * = 3 per the ABI, and on KVM-PVM (which drops IOPL at CPL 3) a TSS I/O
 * permission bitmap allowing the ports; otherwise IN/OUT raise #GP(0).
 *
 * The names putc/puts/exit shadow libc's; that is fine here because
 * -ffreestanding implies -fno-builtin and there is no libc.
 */
#ifndef SWIFTKVM_GUEST_H
#define SWIFTKVM_GUEST_H

#include <stdint.h>

#define GUEST_PORT_COM1      0x3F8
#define GUEST_PORT_COM1_LSR  0x3FD
#define GUEST_PORT_EXIT      0xF4
#define GUEST_PORT_REPORT    0xF8
#define GUEST_LSR_THRE       0x20

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

/* Write one byte to COM1 after waiting for the transmitter to be empty. */
static inline void putc(char c)
{
    while (!(inb(GUEST_PORT_COM1_LSR) & GUEST_LSR_THRE))
        ;
    outb(GUEST_PORT_COM1, (uint8_t)c);
}

/* Write a zero-terminated string to COM1 (no newline is added). */
static inline void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

/* Write VALUE to COM1 in hex with a 0x prefix and no leading zeros (0x0 for zero). */
static inline void put_hex(uint64_t value)
{
    char digits[19] = "0x";
    int length = 2;
    int shift = 60;
    while (shift > 0 && ((value >> shift) & 0xF) == 0)
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        digits[length++] = "0123456789abcdef"[(value >> shift) & 0xF];
    digits[length] = 0;
    puts(digits);
}

/* Write TEXT, VALUE in hex, and a newline: one "NAME 0x..." line of a guest's report. */
static inline void put_line_hex(const char *text, uint64_t value)
{
    puts(text);
    put_hex(value);
    putc('\n');
}

/* Append a 32-bit value to the run's report list. */
static inline void report(uint32_t value)
{
    outl(GUEST_PORT_REPORT, value);
}

/* End the guest with the given exit status. Does not return: should the VMM
 * resume the guest anyway, the hlt faults (#GP at CPL 3) or halts (ring 0). */
static inline __attribute__((noreturn)) void exit(uint8_t status)
{
    outb(GUEST_PORT_EXIT, status);
    for (;;)
        __asm__ volatile("hlt");
}

#endif /* SWIFTKVM_GUEST_H */
