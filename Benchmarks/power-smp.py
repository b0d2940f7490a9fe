#!/usr/bin/env python3
"""make bench (last part): power-off latency and vCPU count, swiftkvm against QEMU microvm.

Two guests, each run under both VMMs alternately, medians and the ratio swiftkvm / QEMU (below 1
means swiftkvm took less time):

  power-off  Firmware/build/acpi-power.bin finds the ACPI sleep register as Linux does (swiftkvm:
             PM1a_CNT of its FADT; QEMU microvm,acpi=on: the GED sleep-control register) and
             writes S5. Timed on the host from the guest's "POWER off" console line to the VMM
             process's exit: how long the VMM takes to notice, stop every vCPU and go.
  probe      Firmware/build/boot-probe.bin with 1 and with 2 vCPUs, spawn to exit: what an idle
             second vCPU costs each VMM.

Every run has a deadline.
"""
import argparse, os, statistics, subprocess, sys, time

QEMU = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "64M", "-nodefaults",
        "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot"]


def timed(command, marker, deadline):
    """Seconds from spawn to `marker` on stdout (None if no marker) and to the process's exit."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.set_blocking(process.stdout.fileno(), False)
    output, seen = b"", None
    while time.monotonic() - start < deadline:
        chunk = process.stdout.read1(65536)
        if chunk:
            output += chunk
            if marker and seen is None and marker in output:
                seen = time.monotonic() - start
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.0005)
    ended = time.monotonic() - start
    if process.poll() is None:
        process.kill()
        process.wait()
        raise SystemExit(f"power-smp bench: {command[0]} did not end within {deadline} s: {output[-400:]!r}")
    if marker and seen is None:
        raise SystemExit(f"power-smp bench: {command[0]} never printed {marker!r}: {output[-400:]!r}")
    return seen, ended


def compare(title, sides, measure, rounds, unit="ms"):
    samples = {side: [] for side in sides}
    for index in range(rounds):
        for side in (list(sides) if index % 2 == 0 else list(reversed(sides))):
            samples[side].append(measure(sides[side]))
    ours, theirs = statistics.median(samples["swiftkvm"]), statistics.median(samples["qemu"])
    print(f"  {title:34} {ours * 1000:9.1f} {unit} {theirs * 1000:9.1f} {unit} {ours / theirs:7.2f}")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--deadline", type=int, default=60)
    parser.add_argument("--swiftkvm", default=".build/release/swiftkvm")
    args = parser.parse_args()
    power, probe = "Firmware/build/acpi-power.bin", "Firmware/build/boot-probe.bin"
    for path in (args.swiftkvm, power, probe):
        if not os.path.exists(path):
            raise SystemExit(f"power-smp bench: {path} is missing: run `make release firmware` first")

    kvm = "KVM-PVM (nested, ring 0 emulated)" if os.path.isdir("/sys/module/kvm_pvm") else "hardware KVM"
    print(f"\npower-off and vCPUs: {kvm}; medians of {args.rounds} rounds, alternating (ratio = swiftkvm / QEMU; below 1 is faster)")
    print(f"  {'':34} {'swiftkvm':>12} {'QEMU':>12} {'ratio':>7}")

    off = {
        "swiftkvm": [args.swiftkvm, "run", "--kernel", power, "--memory", "64M", "--cmdline", "console=ttyS0",
                     "--time-limit", str(args.deadline)],
        "qemu": QEMU + ["-M", "microvm,acpi=on", "-kernel", power, "-append", "console=ttyS0"],
    }

    def power_off(command):
        seen, ended = timed(command, b"POWER off", args.deadline)
        return ended - seen

    compare("power-off request to VMM exit", off, power_off, args.rounds)

    # The probe checks its command line and initrd; give both sides the same ones.
    initrd = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"swiftkvm-probe-initrd-{os.getpid()}")
    with open(initrd, "wb") as file:
        file.write(b"PROBE-INITRD-OK!" + bytes(range(256)) * 16)
    try:
        append = "probe-marker=1234 console=ttyS0"
        for cpus in (1, 2):
            sides = {
                "swiftkvm": [args.swiftkvm, "run", "--kernel", probe, "--initrd", initrd, "--memory", "64M",
                             "--cpus", str(cpus), "--cmdline", append, "--time-limit", str(args.deadline)],
                "qemu": QEMU + ["-M", "microvm,acpi=off", "-smp", str(cpus), "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                                "-kernel", probe, "-initrd", initrd, "-append", append],
            }
            compare(f"boot probe, {cpus} vCPU{'s' if cpus > 1 else ''}, spawn to exit", sides,
                    lambda command: timed(command, None, args.deadline)[1], args.rounds)
    finally:
        os.unlink(initrd)


if __name__ == "__main__":
    main()
