#!/usr/bin/env python3
"""Write a newc ("070701") cpio archive from a gen_init_cpio-style list.

Usage: mkcpio.py LIST OUT

LIST lines (paths inside the archive, no leading slash needed):
    dir   PATH MODE
    file  PATH SOURCE MODE
    slink PATH TARGET MODE
    nod   PATH MODE c|b MAJOR MINOR

All entries are owned by root, dated 0 (the archive is byte-for-byte
reproducible) and written in list order, which must put a directory before
what it holds. Needs no root rights: device nodes are only described.
"""
import stat
import sys


def header(ino, mode, size, nlink, rdevmajor, rdevminor, namesize):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevmajor, rdevminor, namesize, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return (4 - n % 4) % 4


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out = bytearray()
    ino = 1

    def entry(name, mode, data=b"", nlink=1, major=0, minor=0):
        nonlocal ino
        bname = name.encode() + b"\0"
        out.extend(header(ino, mode, len(data), nlink, major, minor, len(bname)))
        out.extend(bname)
        out.extend(b"\0" * pad4(110 + len(bname)))
        out.extend(data)
        out.extend(b"\0" * pad4(len(data)))
        ino += 1

    with open(sys.argv[1]) as f:
        for lineno, line in enumerate(f, 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            kind, path = words[0], words[1].lstrip("/")
            try:
                if kind == "dir":
                    entry(path, stat.S_IFDIR | int(words[2], 8), nlink=2)
                elif kind == "file":
                    with open(words[2], "rb") as src:
                        data = src.read()
                    entry(path, stat.S_IFREG | int(words[3], 8), data)
                elif kind == "slink":
                    entry(path, stat.S_IFLNK | int(words[3], 8), words[2].encode())
                elif kind == "nod":
                    kind_bit = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[words[3]]
                    entry(path, kind_bit | int(words[2], 8),
                          major=int(words[4]), minor=int(words[5]))
                else:
                    raise ValueError("unknown entry kind " + kind)
            except (IndexError, KeyError, ValueError) as e:
                sys.exit("%s:%d: %s: %s" % (sys.argv[1], lineno, line.strip(), e))
    entry("TRAILER!!!", 0, nlink=1)
    out.extend(b"\0" * pad4(len(out)))
    with open(sys.argv[2], "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
