#!/usr/bin/env python3
"""make bench: pause and resume latency, swiftkvm's control API against QEMU's QMP.

Both VMMs run a bzImage-shaped guest (Firmware/build/acpi-power.bin) that ends up with its vCPUs
halted inside KVM_RUN: under swiftkvm `action=button` waits for the power button with `sti; hlt`;
under QEMU microvm (acpi=off) it finds no RSDP and halts. For each VMM, from the host, over its
Unix control socket:

  pause    the request (swiftkvm: PATCH /vm {"state": "Paused"}; QEMU: {"execute": "stop"}) to its
           answer, which both give only once every vCPU has left KVM_RUN
  resume   the request (PATCH /vm {"state": "Resumed"}; {"execute": "cont"}) to its answer

Rounds alternate between the VMMs; medians, and the ratio swiftkvm / QEMU (below 1 is faster).
Every VMM run has a deadline.
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time

QEMU = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "64M", "-nodefaults",
        "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot", "-M", "microvm,acpi=off"]


def wait_for_output(process, marker, deadline):
    os.set_blocking(process.stdout.fileno(), False)
    output, start = b"", time.monotonic()
    while time.monotonic() - start < deadline:
        chunk = process.stdout.read1(65536)
        if chunk:
            output += chunk
            if marker in output:
                return
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.001)
    raise SystemExit(f"pause bench: never saw {marker!r}: {output[-400:]!r}")


def connect(path, deadline=20):
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            client.settimeout(10)
            return client
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"pause bench: no socket at {path}")


class SwiftKVM:
    name = "swiftkvm"

    def __init__(self, binary, guest, cpus, folder, deadline):
        self.socket_path = os.path.join(folder, "api.sock")
        self.process = subprocess.Popen(
            [binary, "run", "--kernel", guest, "--memory", "64M", "--cpus", str(cpus), "--cmdline", "console=ttyS0 action=button",
             "--api-socket", self.socket_path, "--time-limit", str(deadline)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_output(self.process, b"POWER waiting for the power button", deadline)
        self.client = connect(self.socket_path)

    def request(self, state):
        body = json.dumps({"state": state}).encode()
        start = time.monotonic()
        self.client.sendall(b"PATCH /vm HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = self.client.recv(4096)
            if not chunk:
                raise SystemExit("pause bench: swiftkvm closed the API connection")
            reply += chunk
        elapsed = time.monotonic() - start
        if not reply.startswith(b"HTTP/1.1 204"):
            raise SystemExit(f"pause bench: swiftkvm answered {reply[:200]!r}")
        return elapsed

    def pause(self): return self.request("Paused")
    def resume(self): return self.request("Resumed")

    def close(self):
        self.client.close()
        self.process.kill()
        self.process.wait()


class QEMUSide:
    name = "qemu"

    def __init__(self, guest, cpus, folder, deadline):
        self.socket_path = os.path.join(folder, "qmp.sock")
        self.process = subprocess.Popen(
            QEMU + ["-smp", str(cpus), "-kernel", guest, "-append", "console=ttyS0", "-qmp", f"unix:{self.socket_path},server=on,wait=off"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_output(self.process, b"POWER FAIL", deadline)
        self.client = connect(self.socket_path)
        self.buffer = b""
        self.read_message()  # the greeting
        self.execute("qmp_capabilities")

    def read_message(self):
        while b"\n" not in self.buffer:
            chunk = self.client.recv(4096)
            if not chunk:
                raise SystemExit("pause bench: QEMU closed QMP")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command):
        start = time.monotonic()
        self.client.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            message = self.read_message()
            if "return" in message:
                return time.monotonic() - start
            if "error" in message:
                raise SystemExit(f"pause bench: QEMU {command}: {message}")

    def pause(self): return self.execute("stop")
    def resume(self): return self.execute("cont")

    def close(self):
        self.client.close()
        self.process.kill()
        self.process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--deadline", type=int, default=120)
    parser.add_argument("--swiftkvm", default=".build/release/swiftkvm")
    args = parser.parse_args()
    guest = "Firmware/build/acpi-power.bin"
    for path in (args.swiftkvm, guest):
        if not os.path.exists(path):
            raise SystemExit(f"pause bench: {path} is missing: run `make release firmware` first")
    kvm = "KVM-PVM (nested, ring 0 emulated)" if os.path.isdir("/sys/module/kvm_pvm") else "hardware KVM"
    print(f"\npause and resume: {kvm}; request to answer over the control socket, medians of {args.rounds} rounds, "
          "alternating (ratio = swiftkvm / QEMU; below 1 is faster)")
    print(f"  {'':34} {'swiftkvm':>12} {'QEMU':>12} {'ratio':>7}")
    for cpus in (1, 2):
        with tempfile.TemporaryDirectory(prefix="swiftkvm-pause-") as folder:
            sides = [SwiftKVM(args.swiftkvm, guest, cpus, folder, args.deadline), QEMUSide(guest, cpus, folder, args.deadline)]
            try:
                samples = {side.name: {"pause": [], "resume": []} for side in sides}
                for index in range(args.rounds):
                    for side in (sides if index % 2 == 0 else list(reversed(sides))):
                        samples[side.name]["pause"].append(side.pause())
                        time.sleep(0.005)
                        samples[side.name]["resume"].append(side.resume())
                        time.sleep(0.005)
                for what in ("pause", "resume"):
                    ours = statistics.median(samples["swiftkvm"][what])
                    theirs = statistics.median(samples["qemu"][what])
                    title = f"{what}, {cpus} vCPU{'s' if cpus > 1 else ''}"
                    print(f"  {title:34} {ours * 1e6:9.0f} µs {theirs * 1e6:9.0f} µs {ours / theirs:7.2f}")
                    sys.stdout.flush()
            finally:
                for side in sides:
                    side.close()


if __name__ == "__main__":
    main()
