#!/usr/bin/env python3
"""make bench: snapshot and restore, swiftkvm against QEMU's migration to a file.

Both VMMs run the same bzImage-shaped guest (Firmware/build/counter-bzimage.bin, which prints
"COUNT n" lines for ever) with 256 MiB and 2 GiB of RAM. For each VMM, from the host, over its
control socket, with the VMM process already started (its start-up is not counted):

  snapshot   the VM paused, the request to its answer: swiftkvm PUT /snapshot/create (state file
             and memory file); QEMU `migrate` to "exec:cat > FILE" until query-migrate says
             completed (max-bandwidth raised so QEMU's 128 MiB/s default does not throttle it)
  load       on a VMM started empty, the request to the guest running: swiftkvm PUT /snapshot/load
             with resume_vm (answered once the vCPUs run); QEMU (-incoming defer)
             `migrate-incoming` "exec:cat FILE", until the migration completed, then `cont`
  first out  from the same request to the restored guest's first byte on its console

Rounds alternate between the VMMs; medians. The files live in a temporary folder (the page cache
keeps them warm for both: no cache is dropped). Every VMM run has a deadline.
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time

GUEST = "Firmware/build/counter-bzimage.bin"
QEMU = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-nodefaults", "-no-user-config",
        "-nographic", "-serial", "stdio", "-no-reboot", "-M", "microvm,acpi=off"]


def fail(message):
    raise SystemExit(f"snapshot bench: {message}")


class Console:
    """A child's stdout, read without blocking."""

    def __init__(self, process):
        self.process = process
        self.output = b""
        os.set_blocking(process.stdout.fileno(), False)

    def poll(self):
        chunk = self.process.stdout.read1(65536)
        if chunk:
            self.output += chunk
        return bool(chunk)

    def wait_for(self, marker, deadline):
        start = time.monotonic()
        while time.monotonic() - start < deadline:
            if self.poll():
                if marker in self.output:
                    return
            elif self.process.poll() is not None:
                break
            else:
                time.sleep(0.001)
        fail(f"never saw {marker!r}: {self.output[-300:]!r}")

    def wait_for_first_byte(self, deadline):
        """The time the first byte arrived (busy-polled: this is what is measured)."""
        start = time.monotonic()
        while time.monotonic() - start < deadline:
            if self.poll():
                return time.monotonic()
            if self.process.poll() is not None:
                break
        fail("the restored guest printed nothing")


def connect(path, deadline=20):
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            client.settimeout(120)
            return client
        except OSError:
            time.sleep(0.005)
    fail(f"no socket at {path}")


def http(path, method, target, body):
    client = connect(path)
    data = json.dumps(body).encode()
    client.sendall(b"%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (method.encode(), target.encode(), len(data), data))
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = client.recv(4096)
        if not chunk:
            break
        reply += chunk
    client.close()
    if not reply.startswith(b"HTTP/1.1 204"):
        fail(f"swiftkvm {method} {target}: {reply[:300]!r}")


class QMP:
    def __init__(self, path):
        self.client = connect(path)
        self.buffer = b""
        self.message()  # the greeting
        self.execute("qmp_capabilities")

    def message(self):
        while b"\n" not in self.buffer:
            chunk = self.client.recv(65536)
            if not chunk:
                fail("QEMU closed QMP")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, **arguments):
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.client.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self.message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                fail(f"QEMU {command}: {message['error']}")

    def wait_migration(self, deadline=600):
        start = time.monotonic()
        while time.monotonic() - start < deadline:
            status = self.execute("query-migrate").get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                fail(f"QEMU migration {status}")
            time.sleep(0.0005)
        fail("QEMU migration did not complete")


def stop(process):
    process.kill()
    process.wait()


def swiftkvm_round(binary, memory, folder, deadline):
    state, mem = os.path.join(folder, "state"), os.path.join(folder, "memory")
    api = os.path.join(folder, "run.sock")
    vm = subprocess.Popen([binary, "run", "--kernel", GUEST, "--memory", memory, "--api-socket", api, "--time-limit", str(deadline)],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        Console(vm).wait_for(b"COUNT 5\n", deadline)
        http(api, "PATCH", "/vm", {"state": "Paused"})
        start = time.monotonic()
        http(api, "PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem})
        snapshot = time.monotonic() - start
    finally:
        stop(vm)
    api = os.path.join(folder, "serve.sock")
    vm = subprocess.Popen([binary, "serve", "--api-socket", api, "--time-limit", str(deadline)],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        console = Console(vm)
        connect(api).close()
        start = time.monotonic()
        http(api, "PUT", "/snapshot/load",
             {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem}, "resume_vm": True})
        running = time.monotonic() - start
        first = console.wait_for_first_byte(deadline) - start
    finally:
        stop(vm)
    os.unlink(state)
    os.unlink(mem)
    return snapshot, running, first


def qemu_round(memory, folder, deadline):
    image = os.path.join(folder, "qemu-state")
    qmp_path = os.path.join(folder, "qmp-out.sock")
    vm = subprocess.Popen(QEMU + ["-m", memory, "-kernel", GUEST, "-append", "console=ttyS0",
                                  "-qmp", f"unix:{qmp_path},server=on,wait=off"],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        Console(vm).wait_for(b"COUNT 5\n", deadline)
        qmp = QMP(qmp_path)
        qmp.execute("stop")
        qmp.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        start = time.monotonic()
        qmp.execute("migrate", uri=f"exec:cat > {image}")
        qmp.wait_migration()
        snapshot = time.monotonic() - start
    finally:
        stop(vm)
    qmp_path = os.path.join(folder, "qmp-in.sock")
    vm = subprocess.Popen(QEMU + ["-m", memory, "-kernel", GUEST, "-append", "console=ttyS0", "-incoming", "defer",
                                  "-qmp", f"unix:{qmp_path},server=on,wait=off"],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        console = Console(vm)
        qmp = QMP(qmp_path)
        start = time.monotonic()
        qmp.execute("migrate-incoming", uri=f"exec:cat {image}")
        qmp.wait_migration()
        qmp.execute("cont")
        running = time.monotonic() - start
        first = console.wait_for_first_byte(deadline) - start
    finally:
        stop(vm)
    os.unlink(image)
    return snapshot, running, first


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deadline", type=int, default=120)
    parser.add_argument("--sizes", default="256M,2G")
    parser.add_argument("--sides", default="swiftkvm,qemu")
    parser.add_argument("--swiftkvm", default=".build/release/swiftkvm")
    args = parser.parse_args()
    sides = args.sides.split(",")
    for path in ([args.swiftkvm] if "swiftkvm" in sides else []) + [GUEST]:
        if not os.path.exists(path):
            fail(f"{path} is missing: run `make release firmware` first")
    kvm = "KVM-PVM (nested, ring 0 emulated)" if os.path.isdir("/sys/module/kvm_pvm") else "hardware KVM"
    print(f"\nsnapshot and restore: {kvm}; {GUEST}; medians of {args.rounds} rounds, alternating "
          "(ratio = swiftkvm / QEMU; below 1 is faster)")
    print(f"  {'':30} {'swiftkvm':>12} {'QEMU':>12} {'ratio':>7}")
    for memory in args.sizes.split(","):
        samples = {side: [] for side in sides}
        with tempfile.TemporaryDirectory(prefix="swiftkvm-snapshot-bench-") as folder:
            for index in range(args.rounds):
                for side in (sides if index % 2 == 0 else list(reversed(sides))):
                    if side == "swiftkvm":
                        samples[side].append(swiftkvm_round(args.swiftkvm, memory, folder, args.deadline))
                    else:
                        samples[side].append(qemu_round(memory, folder, args.deadline))
        for position, what in enumerate(("snapshot", "load to running", "load to first output")):
            values = {side: statistics.median(sample[position] for sample in samples[side]) for side in sides}
            ours, theirs = values.get("swiftkvm"), values.get("qemu")
            ratio = f"{ours / theirs:7.3f}" if ours and theirs else "      -"
            cell = lambda value: f"{value * 1e3:9.2f} ms" if value is not None else f"{'-':>12}"
            print(f"  {what + ', ' + memory:30} {cell(ours)} {cell(theirs)} {ratio}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
