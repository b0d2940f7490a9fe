#!/usr/bin/env python3
"""make bench (Linux on 1 and 2 vCPUs): the test kernel under swiftkvm and under QEMU microvm,
taking turns, with each vCPU count, and medians and the ratio swiftkvm / QEMU (below 1 means
swiftkvm took less time) for:

  smp up     the kernel's `smp: Brought up 1 node, N CPUs` (every application processor started)
  Run /init  the kernel hands over to user space
  user space the initramfs's /init prints `SWIFTKVM-CPUS N` (N must be the vCPU count)
  exit       the VMM process ends: /init reboots at once (`swiftkvm.ready=reboot`), the kernel
             resets by triple fault (`reboot=t`), which both VMMs end on

Every side gets the same bzImage, initramfs, command line and 256 MiB. QEMU runs with
`-M microvm,acpi=off -enable-kvm -cpu host -smp N` (the test kernel finds its CPUs in the MP
table, as it does under swiftkvm).

Where: on hardware KVM both VMMs run directly. On a KVM-PVM host (this project's CI) an SMP Linux
never comes up under either VMM (shared/HOST.md), so both run on the hardware-like lane of
Firmware/linux/nested-kvm.sh: Debian's kvm_amd inside a QEMU guest in software emulation (TCG),
QEMU packed in with `--qemu`. There the clock starts when the outer VM starts the VMM
(its NESTED-KVM-START line), and the absolute times are those of a nested, emulated machine:
read the ratios. Each round runs every side once, the order rotating by one per round.
"""
import argparse, os, statistics, subprocess, sys, time

CACHE = os.environ.get("SWIFTKVM_CACHE", "/var/cache/swiftkvm")
HERE = os.path.dirname(os.path.abspath(__file__))
LANE = os.path.join(HERE, "..", "Firmware", "linux", "nested-kvm.sh")
APPEND = "console=ttyS0 reboot=t panic=-1 swiftkvm.ready=reboot"
METRICS = ["smp up", "Run /init", "user space", "exit"]


def on_kvm_pvm():
    return os.path.isdir("/sys/module/kvm_pvm")


def command(side, cpus, args, lane):
    if side == "swiftkvm":
        inner = ["run", "--kernel", args.kernel, "--initrd", args.initrd, "--cmdline", APPEND, "--memory", "256M",
                 "--cpus", str(cpus), "--time-limit", str(args.deadline)]
        if lane:
            return [LANE, "--swiftkvm", args.swiftkvm, "--timeout", str(args.deadline + 60), "--"] + inner
        return [args.swiftkvm] + inner
    cpu = "host" if lane or not on_kvm_pvm() else "host,-arch-capabilities"
    inner = ["-M", "microvm,acpi=off", "-enable-kvm", "-cpu", cpu, "-smp", str(cpus), "-m", "256M", "-nodefaults",
             "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", args.kernel,
             "-initrd", args.initrd, "-append", APPEND]
    if lane:
        return [LANE, "--qemu", "--timeout", str(args.deadline + 60), "--"] + inner
    return ["qemu-system-x86_64"] + inner


def run(cmd, cpus, lane, deadline):
    """Seconds to each metric, from process start (direct) or from NESTED-KVM-START (lane)."""
    start = time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.set_blocking(process.stdout.fileno(), False)
    marks = {
        "smp up": f"smp: Brought up 1 node, {cpus} CPU".encode(),
        "Run /init": b"Run /init as init process",
        "user space": f"SWIFTKVM-CPUS {cpus}".encode(),
    }
    output, seen, origin = b"", {}, None if lane else start
    try:
        while time.monotonic() - start < deadline + 90:
            chunk = process.stdout.read1(65536)
            if chunk:
                now = time.monotonic()
                output += chunk
                if origin is None and b"NESTED-KVM-START" in output:
                    origin = now
                    output = output[output.index(b"NESTED-KVM-START"):]
                if origin is not None:
                    for name, mark in marks.items():
                        if name not in seen and mark in output:
                            seen[name] = now - origin
                    if lane and b"NESTED-KVM-END" in output and "exit" not in seen:
                        seen["exit"] = now - origin
            elif process.poll() is not None:
                break
            else:
                time.sleep(0.002)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    if not lane and origin is not None:
        seen.setdefault("exit", time.monotonic() - origin)
    missing = [name for name in METRICS if name not in seen]
    if missing or process.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-6:]
        err = process.stderr.read().decode(errors="replace").strip().splitlines()[-2:] if process.stderr else []
        raise RuntimeError(f"status {process.returncode}, never saw {', '.join(missing) or '-'}: "
                           + " | ".join(tail + err))
    return [seen[name] for name in METRICS]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", default="1,2", help="comma-separated vCPU counts (default: 1,2)")
    parser.add_argument("--deadline", type=int, default=120, help="seconds per guest run")
    parser.add_argument("--lane", choices=["auto", "direct", "nested"], default="auto",
                        help="auto: nested on KVM-PVM, direct elsewhere")
    parser.add_argument("--swiftkvm", default=".build/release/swiftkvm")
    parser.add_argument("--kernel", default=f"{CACHE}/test-kernel/bzImage")
    parser.add_argument("--initrd", default=f"{CACHE}/test-initramfs.cpio.gz")
    args = parser.parse_args()
    try:
        counts = [int(word) for word in args.cpus.split(",") if word.strip()]
    except ValueError:
        raise SystemExit(f"linux-smp: --cpus takes numbers like 1,2, not {args.cpus!r}")
    if not counts or min(counts) < 1:
        raise SystemExit(f"linux-smp: --cpus takes numbers from 1 up, not {args.cpus!r}")
    for path in (args.swiftkvm, args.kernel, args.initrd):
        if not os.path.exists(path):
            raise SystemExit(f"linux-smp: {path} is missing: run `make release test-guest` first")
    lane = args.lane == "nested" or (args.lane == "auto" and on_kvm_pvm())
    where = ("nested kvm_amd inside QEMU TCG (this host's KVM is KVM-PVM, where SMP Linux does not come up)"
             if lane else "directly on this host's KVM")

    sides = [(side, cpus) for cpus in counts for side in ("swiftkvm", "qemu")]
    samples = {key: [] for key in sides}
    failures = {key: [] for key in sides}
    for round_index in range(args.rounds):
        shift = round_index % len(sides)
        for side, cpus in sides[shift:] + sides[:shift]:
            try:
                result = run(command(side, cpus, args, lane), cpus, lane, args.deadline)
            except RuntimeError as error:
                failures[(side, cpus)].append(str(error))
                print(f"round {round_index + 1}/{args.rounds} {side:8} {cpus} vCPU: FAILED: {error}", file=sys.stderr, flush=True)
                continue
            samples[(side, cpus)].append(result)
            print(f"round {round_index + 1}/{args.rounds} {side:8} {cpus} vCPU: "
                  + ", ".join(f"{name} {value:6.2f} s" for name, value in zip(METRICS, result)), file=sys.stderr, flush=True)

    print(f"linux-smp: {os.uname().release}, {os.cpu_count()} CPUs; guest runs {where}; "
          f"{args.rounds} rounds, the order rotating each round")
    print(f"guest: {args.kernel} + {args.initrd}, 256 MiB; QEMU -M microvm,acpi=off -enable-kvm -smp N")
    print(f"{'metric (median)':16}{'vCPUs':>6}{'swiftkvm':>12}{'QEMU':>12}{'swiftkvm/QEMU':>15}")
    failed = False
    for cpus in counts:
        ours, theirs = samples[("swiftkvm", cpus)], samples[("qemu", cpus)]
        if not ours or not theirs:
            failed = True
            print(f"{'(no result)':16}{cpus:>6}  swiftkvm {len(ours)} runs, QEMU {len(theirs)} runs succeeded")
            continue
        for index, metric in enumerate(METRICS):
            a = statistics.median(sample[index] for sample in ours)
            b = statistics.median(sample[index] for sample in theirs)
            print(f"{metric:16}{cpus:>6}{a:11.2f}s{b:11.2f}s{a / b:15.2f}")
    for (side, cpus), errors in failures.items():
        for error in errors:
            print(f"failed run: {side} with {cpus} vCPUs: {error}")
    if failed:
        raise SystemExit("linux-smp: a side had no successful run (see above)")


if __name__ == "__main__":
    main()
