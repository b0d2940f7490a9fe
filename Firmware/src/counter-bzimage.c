/*
 * counter-bzimage - a bzImage-shaped guest that counts for ever, one decimal number a line.
 *
 * Booted by any Linux loader (swiftkvm run --kernel, QEMU -kernel), for the snapshot benchmark
 * (Benchmarks/snapshot.py): the same guest under both VMMs, whose first line after a restore says
 * the guest runs again. Prints "COUNT 0\n", "COUNT 1\n", … on COM1, with a short wait between
 * lines (ring 0 is emulated on KVM-PVM: keep loops short). Never ends by itself.
 * A test or benchmark should expect: consecutive numbers with none repeated or missing.
 */
#include "guest.h"

static void put_decimal(uint64_t value)
{
    char digits[21];
    int at = 20;
    digits[at] = 0;
    do {
        digits[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    puts(&digits[at]);
}

int guest_main(const unsigned char *boot_params)
{
    (void)boot_params;
    for (uint64_t count = 0;; count++) {
        puts("COUNT ");
        put_decimal(count);
        putc('\n');
        for (volatile uint32_t wait = 0; wait < 100; wait++) {
        }
    }
    return 0;
}
