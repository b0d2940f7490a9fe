/*
 * acpi-power - a bzImage-shaped guest that ends the machine the way a Linux kernel would.
 *
 * `action=poweroff` (the default): like Linux's acpi_power_off, it finds the RSDP
 * (boot_params.acpi_rsdp_addr, zero page offset 0x070, else by scanning 0xE0000-0xFFFFF), follows it to the XSDT, finds the FADT
 * ("FACP") and the S5 sleep type in the DSDT's `\_S5_` package, and then, as ACPICA does:
 * on a fixed-hardware platform writes SLP_TYP << 10 | SLP_EN (bit 13) to PM1a_CNT (16 bits);
 * on a hardware-reduced one (FADT flag HW_REDUCED_ACPI) writes SLP_TYP << 2 | SLP_EN (bit 5) to
 * SLEEP_CONTROL_REG.
 * `action=panic`: what Linux's pvpanic driver does in a panic notifier: writes PANICKED (1) to
 * the pvpanic I/O port, 0x505 (the port the DSDT's QEMU0001 device declares).
 * `action=button` (fixed hardware only): what Linux's ACPI button driver and acpid do: enables
 * the power-button event (PWRBTN_EN in PM1_EN), takes the SCI (SCI_INT through the 8259, vector
 * 0x20 + SCI_INT, with interrupts on and the vCPU halted in between), and when PWRBTN_STS is set
 * clears it and powers off as above. Prints `POWER waiting for the power button`, then
 * `POWER sci N` and `POWER button pressed` once it came.
 *
 * `action=ignore`: a guest that never listens: prints `POWER ignoring the power button` and halts
 * for ever with interrupts off (the kept-VM tests: `swiftkvm stop` must force it after its timeout).
 *
 * Prints one `POWER …` line per step on COM1. If the machine is still running afterwards it
 * prints `POWER still running` and returns (bzimage-start.S then resets through the i8042).
 * Ring 0, long mode, short loops: every instruction is emulated on KVM-PVM.
 */
#include "guest.h"

static int same(const volatile uint8_t *bytes, const char *text, int count)
{
    for (int i = 0; i < count; i++)
        if (bytes[i] != (uint8_t)text[i])
            return 0;
    return 1;
}

static uint32_t load32(const volatile uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t load64(const volatile uint8_t *p) { return load32(p) | (uint64_t)load32(p + 4) << 32; }

/* The table with `signature` listed in the XSDT at `xsdt`, or 0. */
static const volatile uint8_t *find_table(const volatile uint8_t *xsdt, const char *signature)
{
    uint32_t length = load32(xsdt + 4);
    for (uint32_t offset = 36; offset + 8 <= length; offset += 8) {
        const volatile uint8_t *table = (const volatile uint8_t *)(uintptr_t)load64(xsdt + offset);
        if (same(table, signature, 4))
            return table;
    }
    return 0;
}

/* SLP_TYPa of `\_S5_` in the DSDT: NameOp "_S5_" PackageOp PkgLength NumElements then the first
 * element (ZeroOp, OneOp or BytePrefix n). Returns -1 if it is not there. */
static int soft_off_type(const volatile uint8_t *dsdt)
{
    uint32_t length = load32(dsdt + 4);
    for (uint32_t i = 36; i + 8 < length; i++) {
        if (!same(dsdt + i, "_S5_", 4) || dsdt[i + 4] != 0x12)
            continue;
        uint32_t at = i + 5;
        at += 1 + (dsdt[at] >> 6);          /* PkgLength: lead byte + 0..3 follow bytes */
        at += 1;                            /* NumElements */
        switch (dsdt[at]) {
        case 0x00: return 0;
        case 0x01: return 1;
        case 0x0A: return dsdt[at + 1];
        default: return -1;
        }
    }
    return -1;
}

static int option_is(const char *command_line, const char *word)
{
    for (const char *p = command_line; *p; p++) {
        if (p != command_line && p[-1] != ' ')
            continue;
        const char *a = p, *b = word;
        while (*b && *a == *b) {
            a++;
            b++;
        }
        if (!*b && (*a == ' ' || *a == 0))
            return 1;
    }
    return 0;
}

static uint16_t inw(uint16_t port)
{
    uint16_t value;
    __asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void outw(uint16_t port, uint16_t value) { __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port)); }

/* The SCI's handler: counts, acknowledges the 8259 (non-specific EOI), returns. */
volatile uint64_t sci_count;
void sci_entry(void);
__asm__(".globl sci_entry\n"
        "sci_entry:\n"
        "    push %rax\n"
        "    lock incq sci_count(%rip)\n"
        "    mov $0x20, %al\n"
        "    out %al, $0x20\n"
        "    pop %rax\n"
        "    iretq\n");

/* One 16-byte interrupt gate per vector up to the SCI's. */
static struct {
    uint16_t offset_low, selector;
    uint8_t ist, type;
    uint16_t offset_middle;
    uint32_t offset_high, reserved;
} __attribute__((packed)) idt[0x30];

/* Waits for the power button's SCI on `irq`, with PWRBTN_EN set in the PM1 block at `pm1_event`. */
static void wait_for_power_button(uint16_t pm1_event, uint8_t irq)
{
    /* The loader's CS may not be this image's 64-bit code selector (0x18): make it so, since an
     * interrupt gate loads 0x18 and IRETQ returns to whatever CS was. */
    __asm__ volatile("pushq $0x18\n lea 1f(%%rip), %%rax\n pushq %%rax\n lretq\n 1:" : : : "rax", "memory");
    uint64_t handler = (uint64_t)(uintptr_t)sci_entry;
    uint8_t vector = (uint8_t)(0x20 + irq);
    idt[vector].offset_low = (uint16_t)handler;
    idt[vector].selector = 0x18;
    idt[vector].type = 0x8E; /* present, DPL 0, 64-bit interrupt gate */
    idt[vector].offset_middle = (uint16_t)(handler >> 16);
    idt[vector].offset_high = (uint32_t)(handler >> 32);
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) pointer = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" : : "m"(pointer));
    /* 8259 master: ICW1 (edge, cascade, ICW4), ICW2 vector base 0x20, ICW3 slave on IRQ 2, ICW4
     * 8086 mode; then unmask the SCI's line only. */
    outb(0x20, 0x11);
    outb(0x21, 0x20);
    outb(0x21, 0x04);
    outb(0x21, 0x01);
    outb(0x21, (uint8_t)~(1u << irq));
    outw(pm1_event + 2, 1u << 8); /* PM1_EN: PWRBTN_EN */
    puts("POWER waiting for the power button\n");
    while (!(inw(pm1_event) & (1u << 8)))
        __asm__ volatile("sti\n hlt\n cli" : : : "memory");
    put_line_hex("POWER sci ", sci_count);
    outw(pm1_event, 1u << 8); /* PM1_STS: PWRBTN_STS is write-1-to-clear */
    puts("POWER button pressed\n");
}

int guest_main(const unsigned char *boot_params)
{
    uint64_t pointer = *(const uint32_t *)(boot_params + 0x228) | (uint64_t)*(const uint32_t *)(boot_params + 0x0C8) << 32;
    const char *command_line = pointer ? (const char *)(uintptr_t)pointer : "";

    if (option_is(command_line, "action=ignore")) {
        puts("POWER ignoring the power button\n");
        for (;;)
            __asm__ volatile("cli; hlt");
    }
    if (option_is(command_line, "action=panic")) {
        puts("POWER panic: writing PANICKED to the pvpanic port 0x505\n");
        outb(0x505, 1);
        puts("POWER still running\n");
        return 1;
    }

    uint64_t rsdp_address = *(const volatile uint64_t *)(boot_params + 0x070);
    /* A loader that does not fill acpi_rsdp_addr (QEMU's qboot): scan the BIOS area as Linux does. */
    for (uint64_t at = 0xE0000; !rsdp_address && at < 0x100000; at += 16)
        if (same((const volatile uint8_t *)(uintptr_t)at, "RSD PTR ", 8))
            rsdp_address = at;
    put_line_hex("POWER rsdp ", rsdp_address);
    const volatile uint8_t *rsdp = (const volatile uint8_t *)(uintptr_t)rsdp_address;
    if (!rsdp_address || !same(rsdp, "RSD PTR ", 8) || rsdp[15] < 2) {
        puts("POWER FAIL no ACPI 2.0 RSDP at boot_params.acpi_rsdp_addr\n");
        return 1;
    }
    const volatile uint8_t *xsdt = (const volatile uint8_t *)(uintptr_t)load64(rsdp + 24);
    const volatile uint8_t *fadt = find_table(xsdt, "FACP");
    if (!same(xsdt, "XSDT", 4) || !fadt) {
        puts("POWER FAIL no XSDT or no FADT\n");
        return 1;
    }
    const volatile uint8_t *dsdt = (const volatile uint8_t *)(uintptr_t)load64(fadt + 140);  /* X_DSDT */
    int type = soft_off_type(dsdt);
    put_line_hex("POWER s5-type ", (uint64_t)type);
    if (type < 0) {
        puts("POWER FAIL no _S5_ in the DSDT\n");
        return 1;
    }
    if (load32(fadt + 112) & (1u << 20)) {
        /* Hardware-reduced: SLEEP_CONTROL_REG, a Generic Address Structure at FADT offset 244
         * (space id, width, offset, access size, 64-bit address). Space 1 is system I/O. */
        uint8_t space = fadt[244];
        uint64_t reg = load64(fadt + 248);
        put_line_hex("POWER sleep-control ", reg);
        if (space == 1 && reg <= 0xFFFF) {
            puts("POWER off\n");
            outb((uint16_t)reg, (uint8_t)(type << 2 | 0x20));
        } else if (space == 0 && reg < (4ull << 30)) {  /* MMIO, as QEMU microvm's GED has it */
            puts("POWER off\n");
            *(volatile uint8_t *)(uintptr_t)reg = (uint8_t)(type << 2 | 0x20);
        } else {
            puts("POWER FAIL no usable SLEEP_CONTROL_REG\n");
            return 1;
        }
    } else {
        /* Fixed hardware: PM1a_CNT_BLK, an I/O port at FADT offset 64. */
        if (option_is(command_line, "action=button")) {
            uint32_t event = load32(fadt + 56); /* PM1a_EVT_BLK */
            uint16_t sci = (uint16_t)(fadt[46] | fadt[47] << 8);
            if (event == 0 || event > 0xFFFF || sci > 7) {
                puts("POWER FAIL no PM1a_EVT_BLK or an SCI beyond the master 8259\n");
                return 1;
            }
            wait_for_power_button((uint16_t)event, (uint8_t)sci);
        }
        uint32_t port = load32(fadt + 64);
        put_line_hex("POWER pm1a-control ", port);
        if (port == 0 || port > 0xFFFF) {
            puts("POWER FAIL no PM1a_CNT_BLK\n");
            return 1;
        }
        uint16_t value;
        __asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"((uint16_t)port));
        value = (uint16_t)((value & ~(7u << 10)) | (uint16_t)type << 10 | 1u << 13);
        puts("POWER off\n");
        __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"((uint16_t)port));
    }
    puts("POWER still running\n");
    return 1;
}
