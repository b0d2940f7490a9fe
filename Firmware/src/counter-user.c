/*
 * counter-user - counts for ever, one decimal number a line, for pause/resume tests.
 *
 * Mode: user (CPL 3, 64-bit). Start file: crt0-user.S.
 * Does: prints "0\n", "1\n", "2\n", … on COM1 with a short busy wait after each line (ring 3
 *       runs natively, so the wait costs no exits); never ends by itself.
 * A test should expect: consecutive numbers from 0 with none repeated or missing, however
 *       often the VM is paused and resumed; nothing printed while it is paused.
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

int main(void)
{
    for (uint64_t count = 0;; count++) {
        put_decimal(count);
        putc('\n');
        for (volatile uint32_t wait = 0; wait < 200000; wait++) {
        }
    }
}
