#!/usr/bin/env python3
"""make bench-linux: boot the same Linux guest under swiftkvm (with KVM's in-kernel PIT, the
default, and with the PIT emulated in swiftkvm, `--pit emulated`) and under QEMU microvm, taking
turns, and print medians and ratios for: the first console byte, `Run /init as init process`, and
the initramfs's ready marker (the shell).

Every side gets the same bzImage, initramfs, command line, memory and one vCPU; QEMU runs with
`-M microvm,acpi=off -enable-kvm` (ring 0 is emulated on KVM-PVM hosts, so `-cpu host` needs
`-arch-capabilities` there). Each round boots every side once, the order rotating by one per round
so each side takes each place in turn. Every run has a deadline. Numbers are wall-clock times from
process start, so every side pays its own start-up.
"""
import argparse, os, statistics, subprocess, sys, time

CACHE = os.environ.get("SWIFTKVM_CACHE", "/var/cache/swiftkvm")
MARKER = b"SWIFTKVM-INIT-READY"


# Side names (for --sides) and their column headings.
SIDES = {
    "swiftkvm": "swiftkvm pit=kvm",
    "swiftkvm-pit-emulated": "swiftkvm pit=emulated",
    "swiftkvm-in-guest": "swiftkvm entry=64",
    "qemu": "QEMU microvm",
    "qemu-pvh": "QEMU microvm vmlinux",
}
# Not run unless asked for with --sides: the in-guest decompressor (swiftkvm's old default path)
# and QEMU from the uncompressed vmlinux through its PVH note (QEMU's fastest path).
DEFAULT_SIDES = ["swiftkvm", "swiftkvm-pit-emulated", "qemu"]


def commands(args):
    append = "console=ttyS0 reboot=k panic=-1"
    swiftkvm = [args.swiftkvm, "run", "--kernel", args.kernel, "--initrd", args.initrd,
                "--cmdline", append, "--memory", "256M", "--time-limit", str(args.deadline)]
    qemu = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host,-arch-capabilities",
            "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-no-reboot", "-initrd", args.initrd, "-append", append]
    return {
        # The default entry: the bzImage decompressed in the host (from the cache after the first boot).
        "swiftkvm": swiftkvm + ["--pit", "kvm"],
        "swiftkvm-pit-emulated": swiftkvm + ["--pit", "emulated"],
        "swiftkvm-in-guest": swiftkvm + ["--pit", "kvm", "--boot-entry", "64"],
        "qemu": qemu + ["-kernel", args.kernel],
        # An ELF -kernel with a XEN_ELFNOTE_PHYS32_ENTRY note: QEMU boots it through PVH.
        "qemu-pvh": qemu + ["-kernel", args.vmlinux],
    }


def boot(command, deadline, log=None):
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
        if log:
            with open(log, "wb") as file:
                file.write(output)
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
    parser.add_argument("--vmlinux", default=f"{CACHE}/test-kernel/vmlinux", help="the kernel's vmlinux, for qemu-pvh")
    parser.add_argument("--save-output", metavar="DIR",
                        help="write each boot's console output to DIR/SIDE-roundN.log (the kernel's timestamps show where time goes)")
    parser.add_argument("--sides", default=",".join(DEFAULT_SIDES),
                        help=f"comma-separated, from {', '.join(SIDES)} (default: {', '.join(DEFAULT_SIDES)})")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.sides.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SIDES]
    if unknown or not chosen:
        raise SystemExit(f"linux-boot: --sides takes names from {', '.join(SIDES)}, not {args.sides!r}")
    for path in (args.swiftkvm, args.kernel, args.initrd) + ((args.vmlinux,) if "qemu-pvh" in chosen else ()):
        if not os.path.exists(path):
            raise SystemExit(f"linux-boot: {path} is missing: run `make release test-guest` first")
    if args.save_output:
        os.makedirs(args.save_output, exist_ok=True)
    sides = {name: command for name, command in commands(args).items() if name in chosen}
    names = list(sides)
    samples = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            log = os.path.join(args.save_output, f"{name}-round{round_index + 1}.log") if args.save_output else None
            result = boot(sides[name], args.deadline, log)
            samples[name].append(result)
            print(f"round {round_index + 1}/{args.rounds} {SIDES[name]:22}: first byte {result[0]:6.2f} s, "
                  f"Run /init {result[1]:6.1f} s, shell {result[2]:6.1f} s", file=sys.stderr, flush=True)

    kvm = "KVM-PVM (nested, ring 0 emulated)" if os.path.isdir("/sys/module/kvm_pvm") else "hardware KVM"
    print(f"linux-boot: {os.uname().release}, {kvm}, {os.cpu_count()} CPUs; {args.rounds} rounds, "
          f"the order rotating each round")
    print(f"guest: {args.kernel} + {args.initrd}, 256 MiB, 1 vCPU; QEMU -M microvm,acpi=off -enable-kvm")
    metrics = ["first console byte", "Run /init", "shell ready"]
    medians = {name: [statistics.median(sample[index] for sample in samples[name]) for index in range(len(metrics))]
               for name in names}
    # Ratios: each swiftkvm side against QEMU (goal: below 1), and the two PITs against each other.
    ratios = [(f"{SIDES[name].split()[-1]}/QEMU", name, "qemu") for name in names if name.startswith("swiftkvm") and "qemu" in names]
    ratios += [(f"{SIDES[name].split()[-1]}/QEMU-pvh", name, "qemu-pvh") for name in names
               if name.startswith("swiftkvm") and "qemu-pvh" in names]
    if "swiftkvm" in names and "swiftkvm-pit-emulated" in names:
        ratios.append(("pit=emulated/kvm", "swiftkvm-pit-emulated", "swiftkvm"))
    header = f"{'metric (median)':20}" + "".join(f"{SIDES[name]:>24}" for name in names)
    header += "".join(f"{label:>20}" for label, _, _ in ratios)
    print(header)
    for index, metric in enumerate(metrics):
        line = f"{metric:20}" + "".join(f"{medians[name][index]:23.2f}s" for name in names)
        line += "".join(f"{medians[ours][index] / medians[theirs][index]:20.2f}" for _, ours, theirs in ratios)
        print(line)
    if "qemu" in names:
        for name in names:
            if not name.startswith("swiftkvm"):
                continue
            verdicts = ", ".join(f"{metric} {'meets' if medians[name][index] < medians['qemu'][index] else 'misses'}"
                                 for index, metric in enumerate(metrics[1:], start=1))
            print(f"goal, {SIDES[name]} faster than QEMU: {verdicts}")
    if "swiftkvm" in names and "swiftkvm-pit-emulated" in names:
        faster = ["kvm" if medians["swiftkvm"][index] <= medians["swiftkvm-pit-emulated"][index] else "emulated"
                  for index in range(len(metrics))]
        print(f"faster PIT: Run /init {faster[1]}, shell {faster[2]} (the default is kvm)")


if __name__ == "__main__":
    main()
