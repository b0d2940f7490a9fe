#!/usr/bin/env python3
"""Boot a guest kernel + busybox initramfs under QEMU and drive its serial shell.

    boot-test.py [--kernel K] [--initrd I] [--accel kvm|tcg] [--append ARGS]
                 [--timeout SECONDS] [--log FILE] [--no-quiet]

Defaults: the test kernel and initramfs in ${SWIFTKVM_CACHE:-/var/cache/swiftkvm},
QEMU microvm with KVM (the configuration shared/HOST.md measured). Waits for
"SWIFTKVM-INIT-READY" (printed by the initramfs /init), then runs
`uname -r`, `cat /proc/cpuinfo | head -3`, `echo hello | cat` and `reboot -f`,
checks the answers and prints the time to "Run /init" (when the kernel prints
it) and to the marker. Exit status 0 when every check passed. Standard library
only (no pexpect): QEMU's serial console is its stdin/stdout.
"""
import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time

CACHE = os.environ.get("SWIFTKVM_CACHE", "/var/cache/swiftkvm")
MARKER = b"SWIFTKVM-INIT-READY"


class Guest:
    def __init__(self, argv, log, echo):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.buf = b""      # everything the guest printed
        self.pos = 0        # where the next expect() starts looking
        self.log = log
        self.echo = echo
        self.events = {}    # name -> seconds since start

    def elapsed(self):
        return time.monotonic() - self.start

    def _read(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return True
        data = os.read(self.proc.stdout.fileno(), 65536)
        if not data:
            return False
        self.buf += data
        if self.log:
            self.log.write(data)
            self.log.flush()
        if self.echo:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        if b"Run /init" in self.buf and "run_init" not in self.events:
            self.events["run_init"] = self.elapsed()
        return True

    def expect(self, pattern, deadline):
        """Wait for regex `pattern` (bytes) after the last match; returns the match."""
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(pattern)
            if not self._read(min(left, 1.0)):
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                raise EOFError(pattern)

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, command, n, deadline):
        """Run a shell command; returns its output (what came between the echo and the end mark)."""
        # The end mark is made by the shell ($((n))), so the tty's echo of the
        # command line does not match it.
        self.send("%s; echo '@@'END$((%d))'@@'\n" % (command, n))
        m = self.expect(rb"@@END%d@@" % n, deadline)
        out = self.buf[:m.start()]
        # Output starts after the echoed command line.
        line_start = out.rfind(b"echo '@@'END$((%d))'@@'" % n)
        if line_start >= 0:
            out = out[line_start:]
            out = out[out.find(b"\n") + 1:]
        return out.replace(b"\r", b"").decode(errors="replace")

    def wait_exit(self, deadline):
        while self.proc.poll() is None and time.monotonic() < deadline:
            if not self._read(0.5):
                break
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default=os.path.join(CACHE, "test-kernel/bzImage"))
    ap.add_argument("--initrd", default=os.path.join(CACHE, "test-initramfs.cpio.gz"))
    ap.add_argument("--accel", choices=["kvm", "tcg"], default="kvm")
    ap.add_argument("--append", default="", help="extra kernel command-line words")
    ap.add_argument("--no-quiet", action="store_true", help="leave out `quiet`")
    ap.add_argument("--timeout", type=float, default=900, help="deadline for the whole run")
    ap.add_argument("--log", help="write the serial output here")
    ap.add_argument("--echo", action="store_true", help="copy the serial output to stdout")
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--run", action="append", default=[], metavar="CMD",
                    help="also run CMD in the guest shell and print its output (repeatable)")
    args = ap.parse_args()

    cmdline = "console=ttyS0 %spanic=-1 %s" % ("" if args.no_quiet else "quiet ", args.append)
    if args.accel == "kvm":
        machine = ["-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host,-arch-capabilities"]
    else:
        machine = ["-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max"]
    argv = (["qemu-system-x86_64"] + machine +
            ["-m", args.memory, "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
             "-serial", "stdio", "-no-reboot", "-kernel", args.kernel, "-initrd", args.initrd,
             "-append", cmdline.strip()])
    print("$ " + " ".join(repr(a) if " " in a else a for a in argv), flush=True)

    log = open(args.log, "wb") if args.log else None
    g = Guest(argv, log, args.echo)
    deadline = g.start + args.timeout
    failures = []
    warnings = []
    try:
        g.expect(re.escape(MARKER), deadline)
        g.events["marker"] = g.elapsed()
        print("marker after %.1f s" % g.events["marker"], flush=True)
        # The shell's first prompt.
        g.expect(rb"[#$] ", deadline)
        g.events["prompt"] = g.elapsed()

        checks = [
            ("uname -r", lambda o: re.search(r"^\d+\.\d+\.\d+\S*$", o, re.M)),
            ("cat /proc/cpuinfo | head -3", lambda o: "processor" in o and "vendor_id" in o),
            ("echo hello | cat", lambda o: re.search(r"^hello$", o, re.M)),
        ] + [(c, lambda o: True) for c in args.run]
        for n, (command, ok) in enumerate(checks, 1):
            t0 = g.elapsed()
            out = g.run(command, n, deadline)
            verdict = "ok" if ok(out) else "FAILED"
            if verdict != "ok":
                failures.append(command)
            print("[%s] %s (%.1f s):\n%s" % (verdict, command, g.elapsed() - t0,
                                           "\n".join("    " + l for l in out.strip().splitlines())),
                  flush=True)
        t0 = g.elapsed()
        g.send("reboot -f\n")
        # "reboot: Restarting system" is printed at KERN_EMERG, so even with `quiet`.
        restarting = False
        try:
            g.expect(rb"Restarting system", min(deadline, time.monotonic() + 120))
            restarting = True
            print("[ok] reboot -f: the kernel restarts after %.1f s" % (g.elapsed() - t0), flush=True)
        except (TimeoutError, EOFError):
            pass
        status = g.wait_exit(min(deadline, time.monotonic() + 30))
        if status is not None:
            print("[ok] reboot -f: QEMU exited (status %d) %.1f s later" % (status, g.elapsed() - t0))
        elif restarting:
            # Without ACPI, an i8042 or port 0xcf9, x86 Linux ends its restart
            # attempts by jumping to the BIOS reset vector in real mode
            # (machine_real_restart), which reboots the guest without QEMU
            # seeing a reset, so -no-reboot cannot end the run.
            warnings.append("reboot -f: the guest restarted by itself (BIOS reset vector);"
                            " QEMU did not exit and was killed")
        else:
            failures.append("reboot -f: no restart and QEMU still running %.0f s later"
                            % (g.elapsed() - t0))
    except (TimeoutError, EOFError) as e:
        what = "deadline passed" if isinstance(e, TimeoutError) else "QEMU exited"
        failures.append("%s while waiting for %r" % (what, e.args[0]))
        tail = g.buf[-3000:].decode(errors="replace")
        print("--- last serial output ---\n" + tail + "\n---", flush=True)
    finally:
        g.kill()
        if log:
            log.close()

    for name in ("run_init", "marker", "prompt"):
        if name in g.events:
            print("time to %-8s %6.1f s" % (name + ":", g.events[name]))
    print("total %.1f s" % g.elapsed())
    for w in warnings:
        print("warning: " + w)
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("boot test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
