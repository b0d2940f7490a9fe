#!/usr/bin/env python3
"""make bench-disk: virtio-blk read throughput, swiftkvm against QEMU microvm, side by side.

Two guests, each run under both VMMs alternately on the same disk image (a file of random bytes),
with medians and the ratio swiftkvm / QEMU (above 1 means swiftkvm moved more data):

  firmware  Firmware/build/virtio-blk.bin with vblk.bench=MiB: a polling driver reading the image
            sequentially in 512 KiB requests. Timed on the host, between the guest's
            "VBLK bench-start" and "VBLK bench-end" console lines.
  linux     the test kernel and initramfs; from its shell, /bin/blkbench (Firmware/linux/tools)
            reads /dev/vda with O_DIRECT, as `dd iflag=direct` would: sequentially in 1 MiB
            reads, then 4 KiB reads at random offsets. Timed inside the guest.

QEMU runs `-M microvm,acpi=off -enable-kvm` with a modern virtio-mmio (force-legacy=false) and
`virtio-blk-device` on the same file (cache=writeback, like swiftkvm's page-cache I/O). Every run
has a deadline.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

CACHE = os.environ.get("SWIFTKVM_CACHE", "/var/cache/swiftkvm")
QEMU_BASE = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host,-arch-capabilities",
             "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
             "-global", "virtio-mmio.force-legacy=false"]


def qemu_disk(image):
    return ["-drive", f"id=d0,file={image},format=raw,if=none,cache=writeback", "-device", "virtio-blk-device,drive=d0"]


class Guest:
    """A VMM process whose console is read as it arrives, with timestamps."""

    def __init__(self, command):
        self.start = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(self.process.stdout.fileno(), False)
        self.output = b""

    def wait_for(self, text, deadline, after=0):
        """Seconds from start until `text` appears past offset `after`; raises on deadline or exit."""
        while time.monotonic() - self.start < deadline:
            found = self.output.find(text, after)
            if found >= 0:
                return time.monotonic() - self.start, found + len(text)
            chunk = self.process.stdout.read1(65536)
            if chunk:
                self.output += chunk
            elif self.process.poll() is not None:
                raise RuntimeError(f"the VMM ended before {text!r}: {self.output[-800:]!r}")
            else:
                time.sleep(0.002)
        raise RuntimeError(f"{text!r} did not appear within {deadline} s: {self.output[-800:]!r}")

    def send(self, line):
        self.process.stdin.write(line.encode() + b"\r")
        self.process.stdin.flush()

    def close(self):
        self.process.kill()
        self.process.wait()


def firmware_run(command, deadline):
    guest = Guest(command)
    try:
        begin, offset = guest.wait_for(b"VBLK bench-start", deadline)
        end, offset = guest.wait_for(b"VBLK bench-end", deadline, offset)
        guest.wait_for(b"\n", deadline, guest.wait_for(b"VBLK DONE", deadline, offset)[1])
        match = re.search(rb"VBLK bench-end requests (0x[0-9a-f]+) bytes (0x[0-9a-f]+)", guest.output)
        if not match or b"VBLK DONE failures 0x0" not in guest.output:
            raise RuntimeError(f"the firmware guest failed: {guest.output[-800:]!r}")
        requests, size = int(match.group(1), 16), int(match.group(2), 16)
        return {"MB/s": size / (end - begin) / 1e6, "requests/s": requests / (end - begin)}
    finally:
        guest.close()


def linux_run(command, args):
    guest = Guest(command)
    try:
        _, offset = guest.wait_for(b"SWIFTKVM-INIT-READY", args.deadline)
        _, offset = guest.wait_for(b"# ", args.deadline, offset)
        guest.send(f"blkbench /dev/vda {args.sequential_mib} {args.random_reads}; echo BENCH-$((20 + 1))")
        guest.wait_for(b"BENCH-21", args.deadline, offset)
        text = guest.output.decode(errors="replace")
        sequential = re.search(r"BLKBENCH seq bytes=(\d+) ns=(\d+)", text)
        random_reads = re.search(r"BLKBENCH rand reads=(\d+) ns=(\d+)", text)
        if not sequential or not random_reads:
            raise RuntimeError(f"blkbench failed: {text[-800:]}")
        guest.send("reboot -f")
        return {
            "seq MB/s": int(sequential.group(1)) / (int(sequential.group(2)) / 1e9) / 1e6,
            "4K random reads/s": int(random_reads.group(1)) / (int(random_reads.group(2)) / 1e9),
        }
    finally:
        guest.close()


def measure(name, sides, run, rounds):
    samples = {side: [] for side in sides}
    for round_index in range(rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for side in order:
            result = run(sides[side])
            samples[side].append(result)
            shown = ", ".join(f"{key} {value:,.1f}" for key, value in result.items())
            print(f"{name} round {round_index + 1}/{rounds} {side:8}: {shown}", file=sys.stderr, flush=True)
    print(f"\n{name}: medians of {rounds} rounds, alternating (ratio = swiftkvm / QEMU; above 1 is better)")
    print(f"  {'metric':20} {'swiftkvm':>12} {'QEMU':>12} {'ratio':>7}")
    for metric in samples["swiftkvm"][0]:
        ours = statistics.median(sample[metric] for sample in samples["swiftkvm"])
        theirs = statistics.median(sample[metric] for sample in samples["qemu"])
        print(f"  {metric:20} {ours:12,.1f} {theirs:12,.1f} {ours / theirs:7.2f}")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="firmware rounds per side")
    parser.add_argument("--linux-rounds", type=int, default=2, help="Linux boots per side (0: skip Linux)")
    parser.add_argument("--deadline", type=int, default=900, help="seconds per guest run")
    parser.add_argument("--image-mib", type=int, default=64)
    parser.add_argument("--firmware-mib", type=int, default=512, help="MiB the firmware guest reads")
    parser.add_argument("--sequential-mib", type=int, default=64)
    parser.add_argument("--random-reads", type=int, default=2000)
    parser.add_argument("--swiftkvm", default=".build/release/swiftkvm")
    parser.add_argument("--firmware", default="Firmware/build/virtio-blk.bin")
    parser.add_argument("--kernel", default=f"{CACHE}/test-kernel/bzImage")
    parser.add_argument("--initrd", default=f"{CACHE}/test-initramfs.cpio")
    args = parser.parse_args()
    for path in (args.swiftkvm, args.firmware, args.kernel, args.initrd):
        if not os.path.exists(path):
            raise SystemExit(f"disk bench: {path} is missing: run `make release firmware test-guest` first")

    kvm = "KVM-PVM (nested, ring 0 emulated)" if os.path.isdir("/sys/module/kvm_pvm") else "hardware KVM"
    print(f"disk bench: {os.uname().release}, {kvm}, {os.cpu_count()} CPUs; image {args.image_mib} MiB of random bytes")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as directory:
        image = os.path.join(directory, "disk.img")
        with open(image, "wb") as file:
            for _ in range(args.image_mib):
                file.write(os.urandom(1 << 20))

        append = f"console=ttyS0 vblk.read=0 vblk.bench={args.firmware_mib}"
        firmware = {
            "swiftkvm": [args.swiftkvm, "run", "--kernel", args.firmware, "--memory", "64M", "--disk", image,
                         "--cmdline", append, "--time-limit", str(args.deadline)],
            "qemu": QEMU_BASE + ["-m", "64M", "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", args.firmware,
                                 "-append", append] + qemu_disk(image),
        }
        measure(f"firmware guest, sequential {args.firmware_mib} MiB in 512 KiB requests", firmware,
                lambda command: firmware_run(command, args.deadline), args.rounds)

        if args.linux_rounds > 0:
            append = "console=ttyS0 reboot=k panic=-1 quiet"
            linux = {
                "swiftkvm": [args.swiftkvm, "run", "--kernel", args.kernel, "--initrd", args.initrd, "--memory", "256M",
                             "--disk", image, "--cmdline", append, "--time-limit", str(args.deadline)],
                "qemu": QEMU_BASE + ["-m", "256M", "-kernel", args.kernel, "-initrd", args.initrd, "-append", append]
                + qemu_disk(image),
            }
            measure(f"Linux guest, blkbench O_DIRECT: {args.sequential_mib} MiB in 1 MiB reads, "
                    f"{args.random_reads} random 4 KiB reads", linux, lambda command: linux_run(command, args),
                    args.linux_rounds)


if __name__ == "__main__":
    main()
