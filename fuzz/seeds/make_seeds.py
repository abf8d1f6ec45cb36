#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (run from fuzz/: python3 seeds/make_seeds.py).

Small valid inputs of each form a target accepts, so mutation starts from structure rather
than from random bytes: a pprof profile hand-encoded (plain and gzipped), support archives as
`pprofd collect` writes them (GNU tar, gzipped), a plain ustar tar, a PAX archive with a long
member name, and query strings with every parameter the routes read. Deterministic: gzip
mtime 0, tar mtime 0.
"""
import gzip
import io
import json
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, payload):
    """A length-delimited field: a message, a string or packed numbers."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def vfield(num, v):
    return varint(num << 3) + varint(v)


def packed(num, vals):
    return field(num, b"".join(varint(v) for v in vals))


def profile():
    """A CPU profile: two sample types, one sample through two locations with a label."""
    strings = ["", "samples", "count", "cpu", "nanoseconds", "main", "main.rs", "work"]
    p = field(1, vfield(1, 1) + vfield(2, 2))
    p += field(1, vfield(1, 3) + vfield(2, 4))
    p += field(2, packed(1, [1, 2]) + packed(2, [3, 30000000]) + field(3, vfield(1, 7) + vfield(3, 64)))
    p += field(3, vfield(1, 1) + vfield(2, 0x1000) + vfield(3, 0x9000) + vfield(5, 6))
    p += field(4, vfield(1, 1) + vfield(2, 1) + vfield(3, 0x1234) + field(4, vfield(1, 1) + vfield(2, 12)))
    p += field(4, vfield(1, 2) + vfield(3, 0x2345) + field(4, vfield(1, 2) + vfield(2, 3)))
    p += field(5, vfield(1, 1) + vfield(2, 5) + vfield(4, 6))
    p += field(5, vfield(1, 2) + vfield(2, 7) + vfield(4, 6))
    for s in strings:
        p += field(6, s.encode())
    p += field(11, vfield(1, 3) + vfield(2, 4)) + vfield(12, 10000000) + packed(13, [7]) + vfield(14, 3)
    return p


def archive(fmt, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            t.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    # Python pads to 10 KiB records; two zero blocks end an archive, the rest is only length.
    end = len(data.rstrip(b"\0"))
    end = (end + 511) // 512 * 512 + 1024
    return data[:end]


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def main():
    plain = profile()
    gz = gzip.compress(plain, mtime=0)
    write("read_input", "profile.pb", plain)
    write("read_input", "profile.pb.gz", gz)
    manifest = json.dumps({"target": "http://127.0.0.1:6060", "files": [{"file": "cpu.pb.gz"}]}).encode()
    members = [("pprof-x/cpu.pb.gz", gz), ("pprof-x/heap.pb.gz", gz), ("pprof-x/manifest.json", manifest)]
    write("read_input", "support.tar.gz", gzip.compress(archive(tarfile.GNU_FORMAT, members), mtime=0))
    write("read_input", "ustar.tar", archive(tarfile.USTAR_FORMAT, members[:1]))
    long_name = [("pprof-" + "x" * 120 + "/heap.pb.gz", gz)]
    write("read_input", "pax-long-name.tar.gz", gzip.compress(archive(tarfile.PAX_FORMAT, long_name), mtime=0))
    queries = [
        "seconds=30&hz=100",
        "debug=2",
        "seconds=5&debug=1&idle=1",
        "gc=1&debug=0",
        "seconds=%31%30&x=%zz+y;debug=",
        "0x4005d0+0x4006a0",
        "seconds=99999999999999999999&hz=-1",
    ]
    for i, q in enumerate(queries):
        write("parse_query", f"q{i}", q.encode())


if __name__ == "__main__":
    main()
