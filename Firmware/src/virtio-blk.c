/*
 * virtio-blk - a minimal virtio-mmio block driver as a bzImage-shaped firmware guest.
 *
 * Booted like a Linux kernel (bzimage-start.S), it finds its disk the way Linux's
 * virtio_mmio.c does without ACPI: from `virtio_mmio.device=SIZE@ADDR:IRQ` words on the kernel
 * command line (SwiftKVM adds one per --disk; QEMU's microvm adds them with acpi=off). It takes
 * the first window whose device is a virtio-blk (device ID 2), drives it through one split
 * virtqueue by polling (no interrupts), and reports on COM1, one line each:
 *
 *   VBLK device 0x<base> irq 0x<irq>
 *   VBLK capacity 0x<sectors> features 0x<offered features, low 32 bits>
 *   VBLK id <GET_ID answer>
 *   VBLK read sectors 0x<n> checksum 0x<64-bit>        (vblk.read=N, default: all, at most 2048)
 *   VBLK write sector 0x<s> status 0x<0 ok, 1 IOERR>   (vblk.write=S: 8 sectors of pattern at S)
 *   VBLK flush status 0x<status>                       (after a write)
 *   VBLK bench-start / VBLK bench-end requests 0x<n> bytes 0x<n>   (vblk.bench=MiB)
 *   VBLK DONE failures 0x<n>
 *
 * Two hostile drivers, for the regression tests of what an audit found (issue 16):
 *
 *   vblk.reset=1   queues 8 large reads at once, resets the device (Status = 0) while it works
 *                  on them, reads 0 back, then watches for a while: a device that goes on after
 *                  its reset (virtio 1.2 §2.4.1 forbids it) changes the used index, a status byte
 *                  or a buffer. Prints
 *                  `VBLK reset used 0x<at the reset> later 0x<after> touched 0x<n> of 0x8`
 *                  and powers off through the debug-exit port with the number of changes.
 *   vblk.flood=1   first sends one request with a segment twice size_max (the device must refuse
 *                  it: `VBLK oversized status 0x<status>`), then keeps the device busy for ever
 *                  with batches that fill the queue (8 writes of 30 size_max segments, all
 *                  aliasing one buffer): `VBLK flood batch 0x<n>` after each. The VMM must still
 *                  stop at once when asked (its time limit, a signal).
 *
 * The checksum is FNV-1a over 64-bit little-endian words: h = (h ^ word) * 0x100000001b3 from
 * h = 0xcbf29ce484222325. The write pattern's 64-bit word k (of the 512 words) is
 * 0x5357494654000000 + k ("SWIFT" and the index). Tests compute both on the host.
 *
 * Ring 0, long mode: keep loops short (on KVM-PVM ring 0 is emulated, ~2 µs an instruction).
 */
#include "guest.h"

#define SECTOR 512u

/* virtio-mmio registers (virtio 1.2 §4.2.2). */
enum {
    MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, DEVICE_FEATURES = 0x010,
    DEVICE_FEATURES_SEL = 0x014, DRIVER_FEATURES = 0x020, DRIVER_FEATURES_SEL = 0x024,
    QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034, QUEUE_NUM = 0x038, QUEUE_READY = 0x044,
    QUEUE_NOTIFY = 0x050, INTERRUPT_STATUS = 0x060, INTERRUPT_ACK = 0x064, STATUS = 0x070,
    QUEUE_DESC_LOW = 0x080, QUEUE_DESC_HIGH = 0x084, QUEUE_DRIVER_LOW = 0x090,
    QUEUE_DRIVER_HIGH = 0x094, QUEUE_DEVICE_LOW = 0x0A0, QUEUE_DEVICE_HIGH = 0x0A4,
    CONFIG = 0x100,
};
enum { ACKNOWLEDGE = 1, DRIVER = 2, DRIVER_OK = 4, FEATURES_OK = 8 };
enum { F_SIZE_MAX = 1u << 1, F_SEG_MAX = 1u << 2, F_RO = 1u << 5, F_FLUSH = 1u << 9 };  /* low word; VERSION_1 is bit 0 of the high word */
enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8 };

/* The device's largest queue (VirtioBlock.queueSize): the flood fills it with one request. */
#define QUEUE_SIZE 256
#define BENCH_REQUEST (512u * 1024u)

struct descriptor { uint64_t address; uint32_t length; uint16_t flags; uint16_t next; };
struct available { uint16_t flags; uint16_t index; uint16_t ring[QUEUE_SIZE]; uint16_t event; };
struct used_element { uint32_t id; uint32_t length; };
struct used { uint16_t flags; uint16_t index; struct used_element ring[QUEUE_SIZE]; uint16_t event; };
struct request_header { uint32_t type; uint32_t reserved; uint64_t sector; };

static struct descriptor descriptors[QUEUE_SIZE] __attribute__((aligned(16)));
static struct available available __attribute__((aligned(2)));
static struct used used __attribute__((aligned(4)));
static struct request_header header;
static volatile uint8_t status;
static uint8_t buffer[BENCH_REQUEST] __attribute__((aligned(4096)));

static volatile uint8_t *device;
static uint16_t next_used;
static unsigned failures;

static uint32_t reg_read(uint32_t offset) { return *(volatile uint32_t *)(device + offset); }
static void reg_write(uint32_t offset, uint32_t value) { *(volatile uint32_t *)(device + offset) = value; }

static int starts_with(const char *text, const char *prefix)
{
    while (*prefix)
        if (*text++ != *prefix++)
            return 0;
    return 1;
}

/* Parses a number (decimal, or hex after 0x) at *text and moves past it. */
static uint64_t parse_number(const char **text)
{
    const char *p = *text;
    uint64_t value = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        for (p += 2;; p++) {
            char c = *p;
            unsigned digit;
            if (c >= '0' && c <= '9') digit = c - '0';
            else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
            else break;
            value = value * 16 + digit;
        }
    } else {
        for (; *p >= '0' && *p <= '9'; p++)
            value = value * 10 + (uint64_t)(*p - '0');
    }
    *text = p;
    return value;
}

/* The value of NAME=... on the command line, or `fallback`. */
static uint64_t option(const char *command_line, const char *name, uint64_t fallback)
{
    for (const char *p = command_line; *p; p++) {
        if ((p == command_line || p[-1] == ' ') && starts_with(p, name)) {
            while (*p && *p != '=')
                p++;
            if (*p == '=') {
                p++;
                return parse_number(&p);
            }
        }
    }
    return fallback;
}

/* Finds the first virtio-mmio window on the command line whose device is a block device. */
static int find_device(const char *command_line, uint64_t *base, uint64_t *irq)
{
    static const char key[] = "virtio_mmio.device=";
    for (const char *p = command_line; *p; p++) {
        if ((p != command_line && p[-1] != ' ') || !starts_with(p, key))
            continue;
        p += sizeof key - 1;
        uint64_t size = parse_number(&p);          /* SIZE[KMG]@ADDR:IRQ */
        if (*p == 'K' || *p == 'k') { size <<= 10; p++; }
        else if (*p == 'M' || *p == 'm') { size <<= 20; p++; }
        if (*p++ != '@')
            continue;
        uint64_t address = parse_number(&p);
        if (*p++ != ':')
            continue;
        uint64_t line_number = parse_number(&p);
        if (size < 0x200 || address >= (4ull << 30))
            continue;                               /* our page tables map the low 4 GiB */
        volatile uint8_t *window = (volatile uint8_t *)(uintptr_t)address;
        if (*(volatile uint32_t *)(window + MAGIC) != 0x74726976 || *(volatile uint32_t *)(window + DEVICE_ID) != 2)
            continue;
        *base = address;
        *irq = line_number;
        return 1;
    }
    return 0;
}

/* The §3.1.1 initialisation: reset, negotiate VERSION_1 and FLUSH, one queue, DRIVER_OK. */
static int initialize(uint32_t *offered)
{
    if (reg_read(VERSION) != 2) {
        put_line_hex("VBLK FAIL version ", reg_read(VERSION));
        return 0;
    }
    reg_write(STATUS, 0);
    reg_write(STATUS, ACKNOWLEDGE);
    reg_write(STATUS, ACKNOWLEDGE | DRIVER);
    reg_write(DEVICE_FEATURES_SEL, 0);
    *offered = reg_read(DEVICE_FEATURES);
    reg_write(DEVICE_FEATURES_SEL, 1);
    uint32_t high = reg_read(DEVICE_FEATURES);
    if (!(high & 1)) {
        puts("VBLK FAIL no VERSION_1\n");
        return 0;
    }
    reg_write(DRIVER_FEATURES_SEL, 0);
    reg_write(DRIVER_FEATURES, *offered & (F_FLUSH | F_RO | F_SIZE_MAX | F_SEG_MAX));
    reg_write(DRIVER_FEATURES_SEL, 1);
    reg_write(DRIVER_FEATURES, 1);
    reg_write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    if (!(reg_read(STATUS) & FEATURES_OK)) {
        puts("VBLK FAIL features not accepted\n");
        return 0;
    }
    reg_write(QUEUE_SEL, 0);
    if (reg_read(QUEUE_READY) != 0 || reg_read(QUEUE_NUM_MAX) < QUEUE_SIZE) {
        puts("VBLK FAIL queue 0 unusable\n");
        return 0;
    }
    reg_write(QUEUE_NUM, QUEUE_SIZE);
    reg_write(QUEUE_DESC_LOW, (uint32_t)(uintptr_t)descriptors);
    reg_write(QUEUE_DESC_HIGH, 0);
    reg_write(QUEUE_DRIVER_LOW, (uint32_t)(uintptr_t)&available);
    reg_write(QUEUE_DRIVER_HIGH, 0);
    reg_write(QUEUE_DEVICE_LOW, (uint32_t)(uintptr_t)&used);
    reg_write(QUEUE_DEVICE_HIGH, 0);
    reg_write(QUEUE_READY, 1);
    available.flags = 1;  /* VIRTQ_AVAIL_F_NO_INTERRUPT: this driver polls */
    reg_write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    return 1;
}

/* One request: header, an optional data buffer, the status byte. Returns the status (0xFF if
 * the device never answered). */
static uint8_t request(uint32_t type, uint64_t sector, void *data, uint32_t length, int device_writes)
{
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    status = 0xFF;
    int count = 0;
    descriptors[count++] = (struct descriptor){ (uint64_t)(uintptr_t)&header, sizeof header, 1, 1 };
    if (length) {
        descriptors[count - 1].next = (uint16_t)count;
        descriptors[count] = (struct descriptor){ (uint64_t)(uintptr_t)data, length, (uint16_t)(1 | (device_writes ? 2 : 0)), 0 };
        count++;
    }
    descriptors[count - 1].next = (uint16_t)count;
    descriptors[count] = (struct descriptor){ (uint64_t)(uintptr_t)&status, 1, 2, 0 };

    available.ring[available.index % QUEUE_SIZE] = 0;
    __asm__ volatile("" ::: "memory");
    available.index++;
    __asm__ volatile("" ::: "memory");
    reg_write(QUEUE_NOTIFY, 0);
    for (unsigned long spins = 0; *(volatile uint16_t *)&used.index == next_used; spins++)
        if (spins > 50000000ul)
            return 0xFF;
    next_used++;
    __asm__ volatile("" ::: "memory");
    return status;
}

static uint64_t checksum(uint64_t hash, const uint64_t *words, unsigned count)
{
    for (unsigned i = 0; i < count; i++)
        hash = (hash ^ words[i]) * 0x100000001b3ull;
    return hash;
}

/* Puts chain `head` (its descriptors already written) on the available ring without waiting. */
static void offer(uint16_t head)
{
    available.ring[available.index % QUEUE_SIZE] = head;
    __asm__ volatile("" ::: "memory");
    available.index++;
    __asm__ volatile("" ::: "memory");
}

/* Waits (bounded) for the used index to pass `target`; returns whether it did. */
static int wait_used(uint16_t target)
{
    for (unsigned long spins = 0; (uint16_t)(*(volatile uint16_t *)&used.index - target) >= 0x8000u; spins++)
        if (spins > 200000000ul)
            return 0;
    return 1;
}

#define RESET_REQUESTS 8
#define RESET_SEGMENTS 30   /* 8 chains of 32 descriptors fill the 256-entry queue */
static struct request_header reset_headers[RESET_REQUESTS];
static volatile uint8_t reset_status[RESET_REQUESTS];
static uint8_t reset_buffers[RESET_REQUESTS][BENCH_REQUEST] __attribute__((aligned(4096)));

/* vblk.reset=1: the device must not touch a request once a reset has been acknowledged. */
static unsigned reset_during_io(void)
{
    uint16_t next = 0;
    for (unsigned r = 0; r < RESET_REQUESTS; r++) {
        reset_headers[r] = (struct request_header){ T_IN, 0, 0 };
        reset_status[r] = 0xFF;
        uint64_t *words = (uint64_t *)reset_buffers[r];
        words[0] = words[BENCH_REQUEST / 8 - 1] = 0xAAAAAAAAAAAAAAAAull;
        uint16_t head = next;
        descriptors[next] = (struct descriptor){ (uint64_t)(uintptr_t)&reset_headers[r], sizeof reset_headers[r], 1, (uint16_t)(next + 1) };
        next++;
        /* Every segment of a request aliases its one buffer: 30 x 512 KiB = 15 MiB of reading. */
        for (unsigned k = 0; k < RESET_SEGMENTS; k++, next++)
            descriptors[next] = (struct descriptor){ (uint64_t)(uintptr_t)reset_buffers[r], BENCH_REQUEST, 1 | 2, (uint16_t)(next + 1) };
        descriptors[next++] = (struct descriptor){ (uint64_t)(uintptr_t)&reset_status[r], 1, 2, 0 };
        offer(head);
    }
    reg_write(QUEUE_NOTIFY, 0);
    /* Once the first request is back, the device is at work on the next ones: reset then. */
    if (!wait_used(1)) {
        puts("VBLK FAIL the first read was never answered\n");
        return 1;
    }
    reg_write(STATUS, 0);
    if (reg_read(STATUS) != 0) {
        puts("VBLK FAIL the status does not read 0 after the reset\n");
        return 1;
    }
    uint16_t at_reset = *(volatile uint16_t *)&used.index;
    uint8_t statuses[RESET_REQUESTS];
    uint64_t firsts[RESET_REQUESTS], lasts[RESET_REQUESTS];
    for (unsigned r = 0; r < RESET_REQUESTS; r++) {
        statuses[r] = reset_status[r];
        firsts[r] = ((volatile uint64_t *)reset_buffers[r])[0];
        lasts[r] = ((volatile uint64_t *)reset_buffers[r])[BENCH_REQUEST / 8 - 1];
    }
    /* Long enough for a device that went on to finish the batch: 2000 register reads, each an
     * exit to the VMM (milliseconds on hardware KVM, more where ring 0 is emulated). */
    for (unsigned i = 0; i < 2000; i++)
        (void)reg_read(MAGIC);
    uint16_t later = *(volatile uint16_t *)&used.index;
    unsigned touched = later != at_reset;
    for (unsigned r = 0; r < RESET_REQUESTS; r++)
        touched += reset_status[r] != statuses[r] || ((volatile uint64_t *)reset_buffers[r])[0] != firsts[r]
            || ((volatile uint64_t *)reset_buffers[r])[BENCH_REQUEST / 8 - 1] != lasts[r];
    puts("VBLK reset used ");
    put_hex(at_reset);
    puts(" later ");
    put_hex(later);
    puts(" touched ");
    put_hex(touched);
    put_line_hex(" of ", RESET_REQUESTS);
    return touched;
}

/* vblk.flood=1: an oversized request is refused; then the queue is kept full, for ever. */
static void flood(uint32_t offered)
{
    uint32_t size_max = (offered & F_SIZE_MAX) ? *(volatile uint32_t *)(device + CONFIG + 8) : 8u << 20;
    if (size_max > BENCH_REQUEST)
        size_max = BENCH_REQUEST;   /* this guest's one buffer: every segment aliases it */
    /* One segment of twice size_max (past the buffer's end: the device must refuse it unread). */
    put_line_hex("VBLK oversized status ", request(T_OUT, 0, buffer, 2 * size_max, 0));
    /* The 256-entry queue full: 8 writes of 30 segments (15 MiB each with a 512 KiB size_max). */
    for (uint64_t n = 1;; n++) {
        uint16_t next = 0;
        for (unsigned r = 0; r < RESET_REQUESTS; r++) {
            reset_headers[r] = (struct request_header){ T_OUT, 0, (uint64_t)r * RESET_SEGMENTS * (size_max / SECTOR) };
            reset_status[r] = 0xFF;
            uint16_t head = next;
            descriptors[next] = (struct descriptor){ (uint64_t)(uintptr_t)&reset_headers[r], sizeof reset_headers[r], 1, (uint16_t)(next + 1) };
            next++;
            for (unsigned k = 0; k < RESET_SEGMENTS; k++, next++)
                descriptors[next] = (struct descriptor){ (uint64_t)(uintptr_t)buffer, size_max, 1, (uint16_t)(next + 1) };
            descriptors[next++] = (struct descriptor){ (uint64_t)(uintptr_t)&reset_status[r], 1, 2, 0 };
            offer(head);
        }
        reg_write(QUEUE_NOTIFY, 0);
        next_used += RESET_REQUESTS;
        if (!wait_used(next_used)) {
            puts("VBLK FAIL the flood was never answered\n");
            return;
        }
        put_line_hex("VBLK flood batch ", n);
    }
}

static const char *command_line_of(const unsigned char *boot_params)
{
    uint64_t pointer = *(const uint32_t *)(boot_params + 0x228) | (uint64_t)*(const uint32_t *)(boot_params + 0x0C8) << 32;
    return pointer ? (const char *)(uintptr_t)pointer : "";
}

int guest_main(const unsigned char *boot_params)
{
    const char *command_line = command_line_of(boot_params);
    uint64_t base, irq;
    if (!find_device(command_line, &base, &irq)) {
        puts("VBLK FAIL no virtio-blk in virtio_mmio.device= on the command line\nVBLK DONE failures 0x1\n");
        return 1;
    }
    device = (volatile uint8_t *)(uintptr_t)base;
    puts("VBLK device ");
    put_hex(base);
    put_line_hex(" irq ", irq);
    uint32_t offered = 0;
    if (!initialize(&offered)) {
        puts("VBLK DONE failures 0x1\n");
        return 1;
    }
    uint64_t capacity = *(volatile uint32_t *)(device + CONFIG) | (uint64_t)*(volatile uint32_t *)(device + CONFIG + 4) << 32;
    puts("VBLK capacity ");
    put_hex(capacity);
    put_line_hex(" features ", offered);

    if (option(command_line, "vblk.reset", 0))
        return (int)reset_during_io();
    if (option(command_line, "vblk.flood", 0)) {
        flood(offered);
        return 1;
    }

    char id[21] = { 0 };
    if (request(T_GET_ID, 0, id, 20, 1) == 0) {
        puts("VBLK id ");
        puts(id);
        putc('\n');
    }

    uint64_t to_read = option(command_line, "vblk.read", capacity < 2048 ? capacity : 2048);
    if (to_read > capacity)
        to_read = capacity;
    uint64_t hash = 0xcbf29ce484222325ull;
    for (uint64_t sector = 0; sector < to_read;) {
        uint64_t chunk = to_read - sector < 128 ? to_read - sector : 128;  /* 64 KiB requests */
        uint8_t result = request(T_IN, sector, buffer, (uint32_t)(chunk * SECTOR), 1);
        if (result != 0) {
            put_line_hex("VBLK FAIL read status ", result);
            failures++;
            break;
        }
        hash = checksum(hash, (const uint64_t *)buffer, (unsigned)(chunk * SECTOR / 8));
        sector += chunk;
    }
    puts("VBLK read sectors ");
    put_hex(to_read);
    put_line_hex(" checksum ", hash);

    uint64_t write_at = option(command_line, "vblk.write", ~0ull);
    if (write_at != ~0ull) {
        uint64_t *words = (uint64_t *)buffer;
        for (unsigned k = 0; k < 8 * SECTOR / 8; k++)
            words[k] = 0x5357494654000000ull + k;
        uint8_t result = request(T_OUT, write_at, buffer, 8 * SECTOR, 0);
        puts("VBLK write sector ");
        put_hex(write_at);
        put_line_hex(" status ", result);
        put_line_hex("VBLK flush status ", request(T_FLUSH, 0, 0, 0, 0));
    }

    uint64_t bench = option(command_line, "vblk.bench", 0);
    if (bench) {
        uint64_t total = bench << 20, done = 0, requests = 0, sector = 0;
        uint64_t per_request = BENCH_REQUEST / SECTOR;
        puts("VBLK bench-start\n");
        while (done < total && capacity >= per_request) {
            if (sector + per_request > capacity)
                sector = 0;
            if (request(T_IN, sector, buffer, BENCH_REQUEST, 1) != 0) {
                failures++;
                break;
            }
            sector += per_request;
            done += BENCH_REQUEST;
            requests++;
        }
        puts("VBLK bench-end requests ");
        put_hex(requests);
        put_line_hex(" bytes ", done);
    }

    put_line_hex("VBLK DONE failures ", failures);
    return (int)failures;
}
