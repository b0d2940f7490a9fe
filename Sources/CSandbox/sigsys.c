#define _GNU_SOURCE
#include "CSandbox.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#define NAMES 1024
static const char *names[NAMES];

void csandbox_set_syscall_name(int number, const char *name)
{
    if (number >= 0 && number < NAMES)
        names[number] = name;
}

static void append(char *line, size_t *length, size_t capacity, const char *text)
{
    while (*text && *length + 1 < capacity)
        line[(*length)++] = *text++;
}

static void on_sigsys(int signal, siginfo_t *info, void *context)
{
    (void)signal;
    (void)context;
    char line[160];
    size_t length = 0;
    append(line, &length, sizeof line, "swiftkvm: seccomp: forbidden system call ");
    int number = info->si_syscall;
    char digits[12];
    int count = 0;
    unsigned value = number < 0 ? 0u : (unsigned)number;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value && count < (int)sizeof digits);
    while (count > 0 && length + 1 < sizeof line)
        line[length++] = digits[--count];
    if (number >= 0 && number < NAMES && names[number]) {
        append(line, &length, sizeof line, " (");
        append(line, &length, sizeof line, names[number]);
        append(line, &length, sizeof line, ")");
    }
    append(line, &length, sizeof line, ": stopping\n");
    ssize_t ignored = write(STDERR_FILENO, line, length);
    (void)ignored;
    _exit(CSANDBOX_EXIT_STATUS);
}

int csandbox_install_sigsys_handler(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigsys;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGSYS, &action, 0);
}
