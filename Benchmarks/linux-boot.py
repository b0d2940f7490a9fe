#!/usr/bin/env python3
"""make bench-linux: boot the same Linux guest under swiftkvm and QEMU microvm, alternating, and
print medians and the ratio for: the first console byte, `Run /init as init process`, and the
initramfs's ready marker.

Both sides get the same bzImage, initramfs, command line, memory and one vCPU; QEMU runs with
`-M microvm,acpi=off -enable-kvm` (ring 0 is emulated on KVM-PVM hosts, so `-cpu host` needs
`-arch-capabilities` there). Every run has a deadline. Numbers are wall-clock times from process
start, so both sides pay their own start-up.
"""
import argparse, os, statistics, subprocess, sys, time

CACHE = os.environ.get("SWIFTKVM_CACHE", "/var/cache/swiftkvm")
MARKER = b"SWIFTKVM-INIT-READY"


def commands(args):
    append = "console=ttyS0 reboot=k panic=-1"
    return {
        "swiftkvm": [args.swiftkvm, "run", "--kernel", args.kernel, "--initrd", args.initrd,
                     "--cmdline", append, "--memory", "256M", "--time-limit", str(args.deadline)],
        "qemu": ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host,-arch-capabilities",
                 "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                 "-no-reboot", "-kernel", args.kernel, "-initrd", args.initrd, "-append", append],
    }


def boot(command, deadline):
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    output, first, init, ready = b"", None, None, None
    try:
        os.set_blocking(process.stdout.fileno(), False)
        while time.monotonic() - start < deadline:
            chunk = process.stdout.read1(65536) if process.stdout else b""
            if chunk:
                now = time.monotonic() - start
                first = first if first is not None else now
                output += chunk
                if init is None and b"Run /init as init process" in output:
                    init = now
                if MARKER in output:
                    ready = now
                    break
            elif process.poll() is not None:
                break
            else:
                time.sleep(0.005)
    finally:
        process.kill()
        process.wait()
    if ready is None:
        raise SystemExit(f"linux-boot: {command[0]} did not reach the shell within {deadline} s")
    return first, init, ready


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deadline", type=int, default=600, help="seconds per boot")
    parser.add_argument("--swiftkvm", default=".build/release/swiftkvm")
    parser.add_argument("--kernel", default=f"{CACHE}/test-kernel/bzImage")
    parser.add_argument("--initrd", default=f"{CACHE}/test-initramfs.cpio")
    args = parser.parse_args()
    for path in (args.swiftkvm, args.kernel, args.initrd):
        if not os.path.exists(path):
            raise SystemExit(f"linux-boot: {path} is missing: run `make release test-guest` first")
    sides = commands(args)
    samples = {name: [] for name in sides}
    for round_index in range(args.rounds):
        order = ["swiftkvm", "qemu"] if round_index % 2 == 0 else ["qemu", "swiftkvm"]
        for name in order:
            result = boot(sides[name], args.deadline)
            samples[name].append(result)
            print(f"round {round_index + 1}/{args.rounds} {name:8}: first byte {result[0]:6.2f} s, "
                  f"Run /init {result[1]:6.1f} s, shell {result[2]:6.1f} s", file=sys.stderr, flush=True)

    kvm = "KVM-PVM (nested, ring 0 emulated)" if os.path.isdir("/sys/module/kvm_pvm") else "hardware KVM"
    print(f"linux-boot: {os.uname().release}, {kvm}, {os.cpu_count()} CPUs; {args.rounds} rounds, alternating")
    print(f"guest: {args.kernel} + {args.initrd}, 256 MiB, 1 vCPU; QEMU -M microvm,acpi=off -enable-kvm")
    print(f"{'metric (median)':28}{'swiftkvm':>12}{'QEMU microvm':>14}{'ratio':>8}  goal")
    for index, metric in enumerate(["first console byte", "Run /init", "shell ready"]):
        ours = statistics.median(sample[index] for sample in samples["swiftkvm"])
        theirs = statistics.median(sample[index] for sample in samples["qemu"])
        verdict = "meets" if ours < theirs else "misses"
        print(f"{metric:28}{ours:11.2f}s{theirs:13.2f}s{ours / theirs:8.2f}  faster than QEMU: {verdict}")


if __name__ == "__main__":
    main()
