/*
 * blkbench - block-device read benchmark for the SwiftKVM test initramfs.
 *
 *   blkbench DEVICE SEQUENTIAL_MIB RANDOM_READS
 *
 * Reads DEVICE with O_DIRECT (like `dd iflag=direct`, so the guest's page cache is bypassed and
 * every read is a virtio-blk request): first SEQUENTIAL_MIB MiB from the start in 1 MiB reads,
 * then RANDOM_READS reads of 4 KiB at random 4 KiB-aligned offsets. Prints
 *
 *   BLKBENCH seq bytes=<n> ns=<n>
 *   BLKBENCH rand reads=<n> ns=<n>
 *
 * timed with CLOCK_MONOTONIC inside the guest. No libc: raw system calls, so the binary is a few
 * KiB and costs the initramfs (and a KVM-PVM boot, where every page fault is slow) nothing.
 */
typedef unsigned long u64;
typedef long i64;

static i64 syscall3(i64 number, i64 a, i64 b, i64 c)
{
    i64 result;
    __asm__ volatile("syscall" : "=a"(result) : "a"(number), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return result;
}

static i64 syscall4(i64 number, i64 a, i64 b, i64 c, i64 d)
{
    i64 result;
    register i64 r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(result) : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return result;
}

enum { SYS_WRITE = 1, SYS_OPEN = 2, SYS_LSEEK = 8, SYS_PREAD64 = 17, SYS_EXIT = 60, SYS_CLOCK_GETTIME = 228 };
#define O_DIRECT 040000
#define MIB (1024ul * 1024ul)

static unsigned char buffer[MIB] __attribute__((aligned(4096)));

static void print(const char *text)
{
    u64 length = 0;
    while (text[length])
        length++;
    syscall3(SYS_WRITE, 1, (i64)text, (i64)length);
}

static void print_number(u64 value)
{
    char digits[24];
    int at = 23;
    digits[at] = 0;
    do {
        digits[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    print(digits + at);
}

static u64 parse(const char *text)
{
    u64 value = 0;
    while (*text >= '0' && *text <= '9')
        value = value * 10 + (u64)(*text++ - '0');
    return value;
}

static u64 now(void)
{
    struct { i64 seconds, nanoseconds; } time;
    syscall3(SYS_CLOCK_GETTIME, 1 /* CLOCK_MONOTONIC */, (i64)&time, 0);
    return (u64)time.seconds * 1000000000ul + (u64)time.nanoseconds;
}

static void fail(const char *what)
{
    print("BLKBENCH error ");
    print(what);
    print("\n");
    syscall3(SYS_EXIT, 1, 0, 0);
}

static int run(int argc, char **argv)
{
    if (argc != 4)
        fail("usage: blkbench DEVICE SEQUENTIAL_MIB RANDOM_READS");
    i64 fd = syscall3(SYS_OPEN, (i64)argv[1], O_DIRECT, 0);
    if (fd < 0)
        fail("open");
    i64 size = syscall3(SYS_LSEEK, fd, 0, 2 /* SEEK_END */);
    if (size < (i64)MIB)
        fail("device smaller than 1 MiB");
    u64 sequential = parse(argv[2]) * MIB, random_reads = parse(argv[3]);
    if (sequential > (u64)size)
        sequential = (u64)size / MIB * MIB;

    u64 start = now();
    for (u64 offset = 0; offset < sequential; offset += MIB)
        if (syscall4(SYS_PREAD64, fd, (i64)buffer, MIB, (i64)offset) != (i64)MIB)
            fail("sequential read");
    u64 elapsed = now() - start;
    print("BLKBENCH seq bytes=");
    print_number(sequential);
    print(" ns=");
    print_number(elapsed);
    print("\n");

    u64 state = 0x9E3779B97F4A7C15ul, blocks = (u64)size / 4096;
    start = now();
    for (u64 i = 0; i < random_reads; i++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if (syscall4(SYS_PREAD64, fd, (i64)buffer, 4096, (i64)(state % blocks * 4096)) != 4096)
            fail("random read");
    }
    elapsed = now() - start;
    print("BLKBENCH rand reads=");
    print_number(random_reads);
    print(" ns=");
    print_number(elapsed);
    print("\n");
    return 0;
}

/* The process entry: argc at [rsp], argv after it. */
__attribute__((used)) static void start_c(long *stack)
{
    syscall3(SYS_EXIT, run((int)stack[0], (char **)(stack + 1)), 0, 0);
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start_c\n\thlt\n");
