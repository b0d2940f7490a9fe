/*
 * primes-user - freestanding C guest doing real compute in user mode.
 *
 * Mode: user (CPL 3, 64-bit). Start file: crt0-user.S (zeroes .bss, calls
 *       main, exits with main's return value via port 0xF4).
 * Does: counts the primes below 200000 with a sieve of Eratosthenes in a
 *       static (.bss) byte array, reports the count to port 0xF8, prints
 *       "primes: <count>\n" on COM1, returns 0.
 * A test should expect: reported values [17984], console output exactly
 *       "primes: 17984\n", exit status 0.
 * Memory: the image plus ~200 KB of .bss right after it (well under 1 MiB),
 *       and a few hundred bytes of stack at the top of RAM.
 */
#include "guest.h"

#define LIMIT 200000u

static uint8_t composite[LIMIT];        /* .bss, zeroed by crt0-user.S */

static uint32_t count_primes(void)
{
    uint32_t count = 0;
    for (uint32_t i = 2; i < LIMIT; i++) {
        if (composite[i])
            continue;
        count++;
        if ((uint64_t)i * i >= LIMIT)
            continue;
        for (uint32_t j = i * i; j < LIMIT; j += i)
            composite[j] = 1;
    }
    return count;
}

static void put_u32(uint32_t value)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n > 0)
        putc(digits[--n]);
}

int main(void)
{
    uint32_t count = count_primes();
    report(count);
    puts("primes: ");
    put_u32(count);
    putc('\n');
    return 0;
}
