#!/usr/bin/env python3
"""Writes the seed corpora in Fuzz/corpus/ (run once; the files are kept in the repository).

Each seed is a well-formed input for its harness (see the layout each harness reads), so the
fuzzer starts from inputs that reach deep into the code instead of being refused at once.

corpus/snapshot-state/ is not written here: its seeds are real state files (a firmware guest's and
a Linux-loader guest's, with irqchip, LAPIC, devices and a virtio disk) that `swiftkvm snapshot`
wrote, prefixed by the harness's mode byte (0 the file, 1 its payload), and device exports."""
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))


def seed(harness, name, data):
    folder = os.path.join(here, "corpus", harness)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# bzimage: a minimal image with a setup header (boot protocol 2.15, Documentation/arch/x86/boot.rst).
def bzimage(version=0x020F, setup_sects=1, payload=4096, loadflags=0x01, xloadflags=0x03):
    image = bytearray(512 * (setup_sects + 1) + payload)
    image[0x1F1] = setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    image[0x211] = loadflags
    struct.pack_into("<I", image, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", image, 0x230, 0x200000)  # kernel_alignment
    image[0x234] = 1  # relocatable_kernel
    struct.pack_into("<H", image, 0x236, xloadflags)
    struct.pack_into("<I", image, 0x238, 2048)  # cmdline_size
    struct.pack_into("<I", image, 0x260, 0x400000)  # init_size
    return bytes(image)


seed("bzimage", "protocol-2.15", bzimage())
seed("bzimage", "protocol-2.06-not-relocatable", bzimage(version=0x0206, setup_sects=4, xloadflags=0))
seed("bzimage", "zero-setup-sects", bzimage(setup_sects=0))


# virtio-blk: read-only flag, 16 descriptors (addr, len, flags, next), available idx, 16 ring
# slots, reset flag, then the bytes placed at guest 0x4000.
def chain_seed(descriptors, heads, payload, read_only=0, reset=0):
    data = bytearray([read_only])
    for index in range(16):
        address, length, flags, next_ = descriptors[index] if index < len(descriptors) else (0, 0, 0, 0)
        data += struct.pack("<QIHH", address, length, flags, next_)
    data.append(len(heads))
    data += bytes(heads + [0] * (16 - len(heads)))
    data.append(reset)
    return bytes(data + payload)


def header(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


read = [(0x4000, 16, 1, 1), (0x5000, 512, 3, 2), (0x6000, 1, 2, 0)]
seed("virtio-blk", "read", chain_seed(read, [0], header(0, 0)))
write = [(0x4000, 16, 1, 1), (0x4010, 1024, 1, 2), (0x6000, 1, 2, 0)]
seed("virtio-blk", "write", chain_seed(write, [0], header(1, 2) + b"\x11" * 1024))
seed("virtio-blk", "write-read-only", chain_seed(write, [0], header(1, 2) + b"\x11" * 1024, read_only=1))
get_id = [(0x4000, 16, 1, 1), (0x5000, 20, 3, 2), (0x6000, 1, 2, 0), (0x4000, 16, 1, 4), (0x6001, 1, 2, 0)]
seed("virtio-blk", "get-id-and-flush", chain_seed(get_id, [0, 3], header(8, 0)))
seed("virtio-blk", "read-then-reset", chain_seed(read, [0, 0], header(0, 63), reset=1))


# virtio-mmio: image length and bytes, then operations (kind, offset u16, 4 value bytes for a
# 4-byte write: kind 0x40 writes 4 bytes, 0x41 reads 4; kind & 0x1E == 0x1E also serves a queue).
def mmio_ops(ops):
    data = struct.pack("<H", 0)
    for kind, offset, value in ops:
        data += bytes([kind]) + struct.pack("<H", offset)
        if kind & 1 == 0:
            data += struct.pack("<I", value)
    return data


init = [(0x40, 0x70, 1), (0x40, 0x70, 3), (0x40, 0x24, 1), (0x40, 0x20, 1), (0x40, 0x70, 11), (0x40, 0x30, 0),
        (0x40, 0x38, 16), (0x40, 0x80, 0x1000), (0x40, 0x90, 0x2000), (0x40, 0xA0, 0x3000), (0x40, 0x44, 1),
        (0x40, 0x70, 15), (0x41, 0x70, 0), (0x5E, 0x50, 0), (0x41, 0x60, 0), (0x40, 0x64, 1), (0x40, 0x70, 0)]
seed("virtio-mmio", "initialize-notify-reset", mmio_ops(init))
seed("virtio-mmio", "identity-reads", mmio_ops([(0x41, o, 0) for o in (0, 4, 8, 0xC, 0x10, 0x34, 0xFC, 0x100, 0x10C)]))
seed("virtio-mmio", "bad-queue", mmio_ops(init[:6] + [(0x40, 0x38, 3), (0x40, 0x44, 1), (0x41, 0x70, 0)]))

# serial16550: kind (bits 4-6 register, bit 7 two bytes, low 2 bits write/read/input/flood).
seed("serial16550", "divisor-and-transmit", bytes([0x30, 0x80, 0x00, 0x01, 0x10, 0x00, 0x30, 0x03, 0x00, 0x41, 0x51, 0x10, 0x0F, 0x02, 0x05]) + b"hello" + bytes([0x01, 0x01, 0x51]))
seed("serial16550", "fifo-and-flood", bytes([0x20, 0xC7, 0x10, 0x01, 0x03, 0xFF, 0x01, 0x01, 0x61, 0x40, 0x10]))

# pit8254: kind (bits 4-6 port, low 3 bits: 0/1 write, 2/3 read, 4/5 speaker, 6 time, 7 deadline).
seed("pit8254", "mode2-periodic", bytes([0x30, 0x34, 0x00, 0x9C, 0x00, 0x2E, 0x06, 0x40, 0x42, 0x0F, 0x00, 0x07, 0x86, 0xFF, 0xFF, 0x00, 0x00]))
seed("pit8254", "latch-readback-speaker", bytes([0x30, 0xB6, 0x20, 0x00, 0x20, 0x10, 0x04, 0x03, 0x30, 0x00, 0x02, 0x82, 0x30, 0xE2, 0x02, 0x05]))

# i8042: kind (bit 0 port: 0 data, 1 command; bit 1 read; bits 6-7 read width).
seed("i8042", "self-test-and-command-byte", bytes([0x01, 0xAA, 0x02, 0x01, 0x20, 0x02, 0x01, 0x60, 0x00, 0x47, 0x03, 0x01, 0xFE]))
seed("i8042", "keyboard-commands", bytes([0x00, 0xFF, 0x02, 0x00, 0xF4, 0x00, 0xED, 0x00, 0x07, 0x02, 0x01, 0xD1, 0x00, 0x01]))

# cli-values: a 64-bit number, then the text.
for name, text in [("size", "256M"), ("hex", "0x7c00"), ("disk", "/tmp/disk.img,readonly"), ("features", "-xsave,-cx16"),
                   ("huge", "99999999999999999999T")]:
    seed("cli-values", name, struct.pack("<q", 0x7FFF_FFFF_FFFF_FC01) + text.encode())

# http-request: the split size, then the stream.
seed("http-request", "get-and-put", b"\x07" + b"GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n"
     b"PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n"
     b'{"vcpu_count":2,"mem_size_mib":64}'[:31])
seed("http-request", "patch-keep-alive", b"\x00" + b"PATCH /vm HTTP/1.1\r\nConnection: keep-alive\r\nContent-Length: 20\r\n\r\n"
     b'{"state":"Paused"}  ')
seed("http-request", "chunked", b"\x03" + b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

# vm-config: its seeds are `swiftkvm run … --print-config` outputs (paths replaced), kept as
# they are in corpus/vm-config/, and one with a field the strict decoder refuses.
