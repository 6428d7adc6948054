#!/usr/bin/env python3
"""Cut the class-balanced Fashion-MNIST subset shipped in data/fashion-mnist-mini.

Source: Debian's dataset-fashion-mnist package, /usr/share/datasets/fashion-mnist
(or the directory given as the first argument).  Keeps, in file order, the first
1,000 training images of each class (10,000 in all) and the first 200 test images
of each class (2,000 in all), and writes them as gzip-compressed IDX files with the
standard four file names into this script's directory (or the second argument).

Standard library only; the output is byte-for-byte reproducible (gzip mtime = 0,
no file name in the gzip header, compression level 9).
"""
import gzip
import os
import struct
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
DST = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
PER_CLASS = {"train": 1000, "t10k": 200}
N_CLASSES = 10


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def write_gz(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(payload)


def cut(split):
    images = read(os.path.join(SRC, f"{split}-images-idx3-ubyte.gz"))
    labels = read(os.path.join(SRC, f"{split}-labels-idx1-ubyte.gz"))
    magic, n, rows, cols = struct.unpack(">IIII", images[:16])
    assert magic == 0x803, hex(magic)
    lmagic, ln = struct.unpack(">II", labels[:8])
    assert lmagic == 0x801 and ln == n
    assert len(images) == 16 + n * rows * cols and len(labels) == 8 + n
    size = rows * cols
    want = PER_CLASS[split]
    counts = [0] * N_CLASSES
    keep = []
    for i in range(n):
        c = labels[8 + i]
        if counts[c] < want:
            counts[c] += 1
            keep.append(i)
    assert counts == [want] * N_CLASSES, counts
    out_img = bytearray(struct.pack(">IIII", 0x803, len(keep), rows, cols))
    out_lab = bytearray(struct.pack(">II", 0x801, len(keep)))
    for i in keep:
        out_img += images[16 + i * size: 16 + (i + 1) * size]
        out_lab.append(labels[8 + i])
    write_gz(os.path.join(DST, f"{split}-images-idx3-ubyte.gz"), bytes(out_img))
    write_gz(os.path.join(DST, f"{split}-labels-idx1-ubyte.gz"), bytes(out_lab))
    print(f"{split}: kept {len(keep)} of {n} (last index kept: {keep[-1]})")


if __name__ == "__main__":
    cut("train")
    cut("t10k")
