#!/usr/bin/env python3
"""pack-modules.py MODULES_DIR OUT_DIR MODULE... — kernel modules for an initramfs.

Resolves MODULE... (names as modprobe spells them, '-' or '_') through MODULES_DIR/modules.dep
into a load order, dependencies first; copies each module, decompressed, to OUT_DIR/N.ko; writes
OUT_DIR/load-order (one /lib/modules file name per line, the order an init insmods them in); and
prints the mkcpio.py list lines that put them all under /lib/modules. A module built into the
kernel (modules.builtin) is noted on stderr and skipped; one that is neither is an error.
Used by build.sh (the stock initramfs) and nested-kvm.sh (the nested lane's outer initramfs).
"""
import gzip, lzma, os, shutil, subprocess, sys


def name(path):
    base = os.path.basename(path)
    return base[: base.index(".ko")].replace("-", "_")


def load_order(mods, wanted):
    dep = {}
    for line in open(os.path.join(mods, "modules.dep")):
        path, _, deps = line.partition(":")
        dep[path] = deps.split()
    by_name = {name(p): p for p in dep}
    builtin_file = os.path.join(mods, "modules.builtin")
    builtin = {name(l.strip()) for l in open(builtin_file) if l.strip()} if os.path.exists(builtin_file) else set()
    order, seen = [], set()

    def visit(p):
        if p in seen:
            return
        seen.add(p)
        for d in reversed(dep[p]):  # modules.dep lists the nearest dependency first
            visit(d)
        order.append(p)

    for w in (w.replace("-", "_") for w in wanted):
        if w in by_name:
            visit(by_name[w])
        elif w in builtin:
            print("built in: " + w, file=sys.stderr)
        else:
            sys.exit("module %s is neither in modules.dep nor built in" % w)
    return order


def copy_decompressed(source, target):
    if source.endswith(".ko.xz"):
        opener = lzma.open
    elif source.endswith(".ko.gz"):
        opener = gzip.open
    elif source.endswith(".ko.zst"):
        with open(target, "wb") as out:
            subprocess.run(["zstd", "-q", "-dc", source], stdout=out, check=True)
        return
    elif source.endswith(".ko"):
        opener = open
    else:
        sys.exit("unknown module file " + source)
    with opener(source, "rb") as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    mods, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
    flats = []
    for n, path in enumerate(load_order(mods, wanted)):
        target = os.path.join(out, "%d.ko" % n)
        copy_decompressed(os.path.join(mods, path), target)
        flat = os.path.basename(path)
        flat = flat[: flat.index(".ko")] + ".ko"
        flats.append(flat)
        print("file /lib/modules/%s %s 644" % (flat, target))
    with open(os.path.join(out, "load-order"), "w") as order:
        order.write("".join(f + "\n" for f in flats))
    print("file /lib/modules/load-order %s 644" % os.path.join(out, "load-order"))


if __name__ == "__main__":
    main()
