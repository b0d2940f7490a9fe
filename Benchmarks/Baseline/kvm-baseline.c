/*
 * kvm-baseline - minimal raw-KVM runner for real-mode flat binaries.
 *
 * The C baseline that SwiftKVM's `make bench` (swiftkvm-bench) compares
 * against. It issues exactly the ioctls SwiftKVM's UnitGuest.run() issues for
 * a real-mode guest (Sources/VMM/UnitGuest.swift, Machine.swift), in the same
 * order, with plain C around them - so the difference between the two is the
 * cost of the Swift VMM's own code, not of different KVM work.
 *
 * Once per process (outside every timed span), like SwiftKVM's HostKVM:
 *   open /dev/kvm, KVM_GET_API_VERSION, KVM_GET_VCPU_MMAP_SIZE,
 *   KVM_GET_SUPPORTED_CPUID (its result is kept and given to every vCPU).
 * Per VM (one "iteration"):
 *   mmap guest memory (default 2 MiB, anonymous, MAP_NORESERVE), copy FILE
 *   to guest address 0, KVM_CREATE_VM, KVM_SET_IDENTITY_MAP_ADDR (0xFFFBC000),
 *   KVM_SET_TSS_ADDR (0xFFFBD000), KVM_SET_USER_MEMORY_REGION (slot 0),
 *   KVM_CREATE_VCPU, mmap its kvm_run, KVM_SET_CPUID2, KVM_GET_SREGS,
 *   KVM_SET_SREGS (real mode), KVM_SET_REGS, KVM_RUN until the guest's exit,
 *   KVM_GET_REGS + KVM_GET_SREGS (SwiftKVM reads the final registers),
 *   munmap kvm_run, close the vCPU, close the VM, munmap guest memory.
 * What SwiftKVM does beyond that and this program does not: it runs KVM_RUN
 * on a new thread per vCPU (pthread_create/join; set BASELINE_VCPU_THREAD=1
 * to do the same here) and builds its bus, devices and result objects.
 *
 * Usage:
 *   kvm-baseline roundtrip FILE.bin ITERATIONS [MEMORY_BYTES]
 *       One untimed warm-up VM, then ITERATIONS VMs, each timed
 *       (CLOCK_MONOTONIC) from before the guest-memory mmap to after the
 *       last munmap; prints
 *         roundtrip median_ns=N min_ns=N p90_ns=N iterations=N
 *       With BASELINE_SAMPLES=1 it first prints every sample, in order:
 *         sample ns=N
 *   kvm-baseline exitrate FILE.bin [MEMORY_BYTES [RUNS]]
 *       RUNS VMs (default 1), one after another; for each, counts the
 *       KVM_EXIT_IO exits from the first KVM_RUN to the guest's exit and
 *       times that span; prints one line per VM:
 *         exitrate exits=N ns=N per_second=N
 *
 * Guest contract (the subset of the SwiftKVM "unit guest" ABI that real-mode
 * guests need): loaded at 0, CS=DS=ES=SS=FS=GS=0, IP=0, SP=0xFFF0,
 * RFLAGS=2. An 8-bit OUT to 0xF4 ends the guest (the byte is its status);
 * HLT ends it too. Reads of COM1 LSR (0x3FD) return 0x60, every other read
 * returns all ones; writes to other ports are ignored. Bytes written to COM1
 * (0x3F8) are dropped unless BASELINE_CONSOLE=1 is set, in which case they go
 * to stdout.
 *
 * Environment:
 *   BASELINE_CONSOLE=1     echo COM1 output to stdout
 *   BASELINE_TRACE=1       print every port-I/O exit to stderr (debugging;
 *                          distorts the timings)
 *   BASELINE_SAMPLES=1     roundtrip: print every iteration's time
 *   BASELINE_VCPU_THREAD=1 run each VM's KVM_RUN loop on a new thread (as
 *                          SwiftKVM does) instead of the main thread
 *   BASELINE_EXPECT_STATUS=N  every run must end with exit status N (an OUT
 *                          of N to 0xF4); anything else, HLT included, is
 *                          an error (exit 1)
 *   BASELINE_TIMEOUT=SEC   per-run deadline in seconds (default 60); a guest
 *                          still running then is kicked out and reported as
 *                          an error (KVM-PVM can hang on some instructions)
 *
 * Errors: every ioctl is checked; a failure prints
 *   kvm-baseline: IOCTL_NAME: strerror
 * to stderr and exits with status 1. An unexpected exit reason also exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MEMORY   (2u << 20)
#define PORT_EXIT        0xF4
#define PORT_COM1        0x3F8
#define PORT_COM1_LSR    0x3FD
#define LSR_IDLE         0x60

/* Where SwiftKVM's Machine puts the pages Intel's real-mode support needs
 * (Machine.tssAddress / Machine.identityMapAddress). */
#define TSS_ADDRESS          0xFFFBD000ul
#define IDENTITY_MAP_ADDRESS 0xFFFBC000ull

static const char *prog = "kvm-baseline";
static int console_enabled;
static int trace_enabled;
static int samples_enabled;
static int vcpu_thread_enabled;
static unsigned timeout_seconds = 60;
static int expected_status = -2;    /* -2: any outcome is accepted */

/* Opened and asked once per process, as SwiftKVM's HostKVM does. */
static int kvm_fd = -1;
static size_t run_size;
static struct kvm_cpuid2 *supported_cpuid;

/* The kvm_run of the vCPU currently running; the SIGALRM handler sets
 * immediate_exit on it so a KVM_RUN entered after the signal returns too. */
static struct kvm_run *volatile current_run;
static volatile sig_atomic_t deadline_hit;

static void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(1);
}

static void __attribute__((format(printf, 1, 2), noreturn))
fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ioctl wrapper: checked, named after the request for the error message. */
#define XIOCTL(fd, req, arg) xioctl((fd), (req), (unsigned long)(arg), #req)

static int xioctl(int fd, unsigned long req, unsigned long arg,
                  const char *name)
{
    int r;
    do {
        r = ioctl(fd, req, arg);
    } while (r < 0 && errno == EINTR && req != KVM_RUN);
    if (r < 0)
        die(name);
    return r;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        die("clock_gettime");
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_alarm(int sig)
{
    (void)sig;
    deadline_hit = 1;
    struct kvm_run *run = current_run;
    if (run)
        run->immediate_exit = 1;
}

static int env_flag(const char *name)
{
    const char *env = getenv(name);
    return env && *env && strcmp(env, "0") != 0;
}

struct image {
    uint8_t *data;
    size_t size;
};

static struct image load_image(const char *path, size_t memory)
{
    struct image img = { 0 };
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(path);
    struct stat st;
    if (fstat(fd, &st) != 0)
        die(path);
    if ((size_t)st.st_size > memory)
        fail("%s: image (%llu bytes) larger than guest memory (%zu bytes)",
             path, (unsigned long long)st.st_size, memory);
    img.size = (size_t)st.st_size;
    img.data = malloc(img.size ? img.size : 1);
    if (!img.data)
        die("malloc");
    size_t done = 0;
    while (done < img.size) {
        ssize_t n = read(fd, img.data + done, img.size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die(path);
        if (n == 0)
            break;
        done += (size_t)n;
    }
    img.size = done;
    close(fd);
    return img;
}

/* Once per process: /dev/kvm, its API version, the kvm_run size and the
 * supported CPUID (grown on E2BIG from 128 entries, as KVMSystem does). */
static void open_kvm(void)
{
    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0)
        die("/dev/kvm");
    int api = XIOCTL(kvm_fd, KVM_GET_API_VERSION, 0);
    if (api != KVM_API_VERSION)
        fail("KVM_GET_API_VERSION: version %d, expected %d", api,
             KVM_API_VERSION);
    run_size = (size_t)XIOCTL(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);

    for (unsigned capacity = 128;; capacity *= 2) {
        struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid
                                          + capacity * sizeof cpuid->entries[0]);
        if (!cpuid)
            die("calloc");
        cpuid->nent = capacity;
        if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) == 0) {
            supported_cpuid = cpuid;
            return;
        }
        free(cpuid);
        if (errno != E2BIG || capacity >= 4096)
            die("KVM_GET_SUPPORTED_CPUID");
    }
}

struct vm {
    int vm, vcpu;
    uint8_t *mem;
    size_t mem_size;
    struct kvm_run *run;
};

static void set_segment(struct kvm_segment *s, uint8_t type)
{
    /* SwiftKVM's Segment(base: 0, limit: 0xFFFF, selector: 0, type:):
     * present, DPL 0, 16-bit, code/data, byte granularity. */
    memset(s, 0, sizeof *s);
    s->base = 0;
    s->limit = 0xFFFF;
    s->selector = 0;
    s->type = type;
    s->present = 1;
    s->s = 1;
}

static void vm_create(struct vm *v, const struct image *img, size_t mem_size)
{
    /* GuestMemory(size:), then the program written at 0 - before the VM,
     * as UnitGuest.run() does. */
    v->mem_size = mem_size;
    v->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v->mem == MAP_FAILED)
        die("mmap guest memory");
    memcpy(v->mem, img->data, img->size);

    /* Machine.init */
    v->vm = XIOCTL(kvm_fd, KVM_CREATE_VM, 0);
    uint64_t identity_map = IDENTITY_MAP_ADDRESS;
    XIOCTL(v->vm, KVM_SET_IDENTITY_MAP_ADDR, &identity_map);
    XIOCTL(v->vm, KVM_SET_TSS_ADDR, TSS_ADDRESS);
    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = 0,
        .guest_phys_addr = 0,
        .memory_size = mem_size,
        .userspace_addr = (uint64_t)(uintptr_t)v->mem,
    };
    XIOCTL(v->vm, KVM_SET_USER_MEMORY_REGION, &region);

    /* Machine.addVCPU */
    v->vcpu = XIOCTL(v->vm, KVM_CREATE_VCPU, 0);
    v->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                  v->vcpu, 0);
    if (v->run == MAP_FAILED)
        die("mmap kvm_run");
    XIOCTL(v->vcpu, KVM_SET_CPUID2, supported_cpuid);

    /* UnitGuestLayout.cpuState(entry: 0) for real mode: get, edit, set. */
    struct kvm_sregs sregs;
    XIOCTL(v->vcpu, KVM_GET_SREGS, &sregs);
    set_segment(&sregs.cs, 0xB);
    set_segment(&sregs.ds, 0x3);
    set_segment(&sregs.es, 0x3);
    set_segment(&sregs.fs, 0x3);
    set_segment(&sregs.gs, 0x3);
    set_segment(&sregs.ss, 0x3);
    sregs.cr0 &= ~0x80000001ull;    /* PE and PG off */
    XIOCTL(v->vcpu, KVM_SET_SREGS, &sregs);

    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = 0;
    regs.rflags = 2;
    regs.rsp = (mem_size < 0x10000 ? mem_size : 0x10000) - 0x10;
    XIOCTL(v->vcpu, KVM_SET_REGS, &regs);
}

/* In SwiftKVM's order: the VCPU (run area, then fd), the VM, then guest
 * memory when the GuestRun that holds it goes away. */
static void vm_destroy(struct vm *v)
{
    if (munmap(v->run, run_size) != 0)
        die("munmap kvm_run");
    if (close(v->vcpu) != 0)
        die("close vcpu");
    if (close(v->vm) != 0)
        die("close vm");
    if (munmap(v->mem, v->mem_size) != 0)
        die("munmap guest memory");
}

struct outcome {
    int status;             /* exit status byte, or -1 for HLT */
    uint64_t io_exits;      /* KVM_EXIT_IO exits, the final one included */
    uint64_t first_run_ns;  /* time of the first KVM_RUN */
    uint64_t end_ns;        /* time the guest's exit was seen */
};

static void handle_io(struct kvm_run *run, struct outcome *out, int *done)
{
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    size_t bytes = (size_t)run->io.size * run->io.count;

    if (trace_enabled && run->io.direction == KVM_EXIT_IO_OUT) {
        uint32_t first = 0;
        memcpy(&first, data, run->io.size <= 4 ? run->io.size : 4);
        fprintf(stderr, "io out port=0x%x size=%u count=%u data[0]=0x%x\n",
                run->io.port, run->io.size, run->io.count, first);
    } else if (trace_enabled) {
        fprintf(stderr, "io in  port=0x%x size=%u count=%u\n",
                run->io.port, run->io.size, run->io.count);
    }

    if (run->io.direction == KVM_EXIT_IO_IN) {
        memset(data, 0xFF, bytes);
        if (run->io.port == PORT_COM1_LSR)
            for (size_t i = 0; i < bytes; i += run->io.size)
                data[i] = LSR_IDLE;
        return;
    }
    if (run->io.port == PORT_EXIT && run->io.size == 1) {
        out->status = data[0];
        *done = 1;
    } else if (run->io.port == PORT_COM1 && console_enabled) {
        for (size_t i = 0; i < bytes; i += run->io.size)
            putchar(data[i]);
    }
}

/* The KVM_RUN loop, then the final KVM_GET_REGS / KVM_GET_SREGS that
 * SwiftKVM's vCPU thread does before it ends. */
static void run_loop(struct vm *v, struct outcome *out)
{
    struct kvm_run *run = v->run;
    int done = 0;

    out->first_run_ns = now_ns();
    while (!done) {
        if (ioctl(v->vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR && deadline_hit)
                fail("KVM_RUN: guest still running after %u s (timeout)",
                     timeout_seconds);
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            out->io_exits++;
            handle_io(run, out, &done);
            break;
        case KVM_EXIT_HLT:
            done = 1;
            break;
        case KVM_EXIT_INTERNAL_ERROR:
            fail("KVM_RUN: KVM_EXIT_INTERNAL_ERROR suberror %u",
                 run->internal.suberror);
        case KVM_EXIT_FAIL_ENTRY:
            fail("KVM_RUN: KVM_EXIT_FAIL_ENTRY reason 0x%llx",
                 (unsigned long long)
                     run->fail_entry.hardware_entry_failure_reason);
        case KVM_EXIT_SHUTDOWN:
            fail("KVM_RUN: KVM_EXIT_SHUTDOWN (triple fault)");
        default:
            fail("KVM_RUN: unexpected exit reason %u", run->exit_reason);
        }
    }
    out->end_ns = now_ns();

    struct kvm_regs regs;
    struct kvm_sregs sregs;
    XIOCTL(v->vcpu, KVM_GET_REGS, &regs);
    XIOCTL(v->vcpu, KVM_GET_SREGS, &sregs);
}

struct thread_start {
    struct vm *v;
    struct outcome *out;
};

static void *vcpu_thread(void *argument)
{
    struct thread_start *start = argument;
    sigset_t alarm_set;
    sigemptyset(&alarm_set);
    sigaddset(&alarm_set, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &alarm_set, NULL);
    run_loop(start->v, start->out);
    return NULL;
}

static struct outcome vm_run(struct vm *v)
{
    struct outcome out = { .status = -1 };

    deadline_hit = 0;
    current_run = v->run;
    alarm(timeout_seconds);

    if (vcpu_thread_enabled) {
        /* SIGALRM must land on the vCPU thread to interrupt its KVM_RUN:
         * the main thread blocks it while it waits. */
        sigset_t alarm_set, previous;
        sigemptyset(&alarm_set);
        sigaddset(&alarm_set, SIGALRM);
        pthread_sigmask(SIG_BLOCK, &alarm_set, &previous);
        struct thread_start start = { v, &out };
        pthread_t thread;
        int r = pthread_create(&thread, NULL, vcpu_thread, &start);
        if (r != 0) {
            errno = r;
            die("pthread_create");
        }
        pthread_join(thread, NULL);
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
    } else {
        run_loop(v, &out);
    }

    alarm(0);
    current_run = NULL;
    if (console_enabled)
        fflush(stdout);
    if (expected_status != -2 && out.status != expected_status) {
        if (out.status < 0)
            fail("the guest halted; expected exit status %d", expected_status);
        fail("the guest exited with status %d; expected %d", out.status,
             expected_status);
    }
    return out;
}

static unsigned long long parse_number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || v == 0) {
        fprintf(stderr, "%s: bad %s: %s\n", prog, what, s);
        exit(2);
    }
    return v;
}

static size_t parse_memory(const char *s)
{
    unsigned long long v = parse_number(s, "MEMORY_BYTES");
    if (v < 0x10000 || v % 4096 != 0) {
        fprintf(stderr, "%s: MEMORY_BYTES must be a multiple of 4096 and at "
                "least 65536 (real-mode SP is 0xFFF0): %s\n", prog, s);
        exit(2);
    }
    return (size_t)v;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: %s roundtrip FILE.bin ITERATIONS [MEMORY_BYTES]\n"
            "       %s exitrate FILE.bin [MEMORY_BYTES [RUNS]]\n"
            "env:   BASELINE_CONSOLE=1 (echo COM1 to stdout), BASELINE_TRACE=1 "
            "(log I/O exits),\n       BASELINE_SAMPLES=1 (print each "
            "roundtrip sample), BASELINE_VCPU_THREAD=1 (KVM_RUN on a\n"
            "       thread per VM), BASELINE_EXPECT_STATUS=N (fail on any other "
            "outcome),\n       BASELINE_TIMEOUT=SECONDS (default 60)\n",
            prog, prog);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();

    console_enabled = env_flag("BASELINE_CONSOLE");
    trace_enabled = env_flag("BASELINE_TRACE");
    samples_enabled = env_flag("BASELINE_SAMPLES");
    vcpu_thread_enabled = env_flag("BASELINE_VCPU_THREAD");
    const char *env = getenv("BASELINE_TIMEOUT");
    if (env && *env)
        timeout_seconds = (unsigned)parse_number(env, "BASELINE_TIMEOUT");
    env = getenv("BASELINE_EXPECT_STATUS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 0);
        if (*end || v < 0 || v > 255) {
            fprintf(stderr, "%s: bad BASELINE_EXPECT_STATUS: %s\n", prog, env);
            exit(2);
        }
        expected_status = (int)v;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;        /* no SA_RESTART: KVM_RUN must return EINTR */
    if (sigaction(SIGALRM, &sa, NULL) != 0)
        die("sigaction");

    const char *mode = argv[1];
    const char *file = argv[2];

    if (strcmp(mode, "roundtrip") == 0) {
        if (argc < 4 || argc > 5)
            usage();
        unsigned long long iterations = parse_number(argv[3], "ITERATIONS");
        size_t memory = argc > 4 ? parse_memory(argv[4])
                                 : DEFAULT_MEMORY;
        struct image img = load_image(file, memory);
        open_kvm();
        uint64_t *samples = calloc(iterations, sizeof *samples);
        if (!samples)
            die("calloc");

        for (unsigned long long i = 0; i <= iterations; i++) {
            struct vm v;
            uint64_t t0 = now_ns();
            vm_create(&v, &img, memory);
            vm_run(&v);
            vm_destroy(&v);
            uint64_t elapsed = now_ns() - t0;
            if (i > 0)      /* iteration 0 is the untimed warm-up */
                samples[i - 1] = elapsed;
        }
        if (samples_enabled)
            for (unsigned long long i = 0; i < iterations; i++)
                printf("sample ns=%llu\n", (unsigned long long)samples[i]);
        qsort(samples, iterations, sizeof *samples, cmp_u64);
        uint64_t median = iterations % 2
            ? samples[iterations / 2]
            : (samples[iterations / 2 - 1] + samples[iterations / 2]) / 2;
        /* p90: nearest rank, ceil(0.9 * n). */
        unsigned long long rank = (iterations * 9 + 9) / 10;
        printf("roundtrip median_ns=%llu min_ns=%llu p90_ns=%llu "
               "iterations=%llu\n",
               (unsigned long long)median, (unsigned long long)samples[0],
               (unsigned long long)samples[rank - 1], iterations);
        free(samples);
        free(img.data);
    } else if (strcmp(mode, "exitrate") == 0) {
        if (argc > 5)
            usage();
        size_t memory = argc > 3 ? parse_memory(argv[3])
                                 : DEFAULT_MEMORY;
        unsigned long long runs = argc > 4 ? parse_number(argv[4], "RUNS")
                                           : 1;
        struct image img = load_image(file, memory);
        open_kvm();
        for (unsigned long long i = 0; i < runs; i++) {
            struct vm v;
            vm_create(&v, &img, memory);
            struct outcome out = vm_run(&v);
            vm_destroy(&v);
            uint64_t ns = out.end_ns - out.first_run_ns;
            uint64_t per_second = ns ? (uint64_t)((double)out.io_exits * 1e9
                                                  / (double)ns)
                                     : 0;
            printf("exitrate exits=%llu ns=%llu per_second=%llu\n",
                   (unsigned long long)out.io_exits, (unsigned long long)ns,
                   (unsigned long long)per_second);
        }
        free(img.data);
    } else {
        usage();
    }
    return 0;
}
