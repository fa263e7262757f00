#!/usr/bin/env python3
"""Seed corpora for the fuzz harnesses: small valid files of every format, generated rather
than kept in the repository. Usage: make_seeds.py OUT_DIR (writes OUT_DIR/<harness>/...)."""
import gzip
import json
import os
import struct
import sys
import zlib


def two_parts(a: bytes, b: bytes) -> bytes:
    """The harnesses' two-file input (tests/fuzz/fuzz_input.h: fuzz::split)."""
    assert len(a) < 65536
    return struct.pack("<H", len(a)) + a + b


def idx(magic: int, dims, payload: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def png(width: int, height: int, channels: int) -> bytes:
    colour = {1: 0, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + bytes((x * 37 + y * 11 + c) % 256 for x in range(width) for c in range(channels))
                    for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def bmp(width: int, height: int) -> bytes:
    row = (width * 3 + 3) // 4 * 4
    pixels = b"".join(bytes((x + y) % 256 for x in range(width) for _ in range(3)).ljust(row, b"\0")
                      for y in range(height))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def safetensors(tensors, metadata) -> bytes:
    header, blobs, offset = {}, b"", 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs += data
        offset += len(data)
    header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blobs


def main() -> None:
    out = sys.argv[1]
    seeds = {}
    images = bytes(range(256))[:4 * 8 * 8]
    labels = bytes([0, 1, 2, 3])
    seeds["idx"] = {
        "raw": two_parts(idx(0x803, [4, 8, 8], images), idx(0x801, [4], labels)),
        "gzip": two_parts(gzip.compress(idx(0x803, [4, 8, 8], images)), gzip.compress(idx(0x801, [4], labels))),
    }
    record10 = lambda label: bytes([label]) + bytes((i * 7) % 256 for i in range(3072))
    record100 = lambda label: bytes([label % 20, label]) + bytes((i * 5) % 256 for i in range(3072))
    names10 = "\n".join(f"class{i}" for i in range(10)).encode()
    seeds["cifar"] = {
        "cifar10": b"\x00" + two_parts(names10, b"".join(record10(i) for i in range(3))),
        "cifar100": b"\x01" + two_parts(b"", b"".join(record100(i) for i in range(3))),
    }
    stl_images = bytes((i * 3) % 256 for i in range(2 * 3 * 96 * 96))
    seeds["stl10"] = {"two": two_parts(stl_images[:65535], b"\x01\x02")}  # cut: the header's 16 bits
    seeds["folder"] = {"png_rgb": png(8, 6, 3), "png_grey": png(5, 5, 1), "png_rgba": png(4, 7, 4),
                       "bmp": bmp(6, 4)}
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
    seeds["safetensors"] = {
        "model": safetensors({"conv.weight": ("F32", [2, 2], f32), "bn.num_batches_tracked": ("I64", [], struct.pack("<q", 7))},
                             {"format": "pt", "run.step": "3"}),
        "empty": safetensors({}, {}),
    }
    seeds["config"] = {
        "basic": b"# a comment\nsteps = 20\nwidth = 8\nlr = 0.05\npreserve-prob = 0.5\nname = run one\n"
                 b"smoothing = se\nswitch = true\n",
        "blank": b"\n\n  steps=3  \n",
    }
    seeds["metrics"] = {
        "run": b"".join(json.dumps(e).encode() + b"\n" for e in [
            {"event": "start", "step": 0}, {"event": "train", "step": 1, "loss": 1.5},
            {"event": "train", "step": 2, "loss": 1.2}, {"event": "eval", "step": 2, "knn": 0.3},
            {"event": "final", "step": 2}]),
        "cut": b'{"event": "train", "step": 1}\n{"event": "tra',
    }
    for harness, files in seeds.items():
        os.makedirs(os.path.join(out, harness), exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(out, harness, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
