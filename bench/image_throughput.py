"""Measure `image import` and `image commit` throughput on a sizeable generated image.

Builds an OCI layout with LAYERS layers totalling about SIZE_MB of uncompressed data (half random,
half compressible text; files of 4 KiB to 4 MiB, with whiteouts in later layers), imports it into a
fresh store, writes COMMIT_MB of changes into an active snapshot and commits it, then exports the
result. Nothing is downloaded.

    .venv/bin/python bench/image_throughput.py [--size-mb 300] [--layers 4] [--commit-mb 100]
        [--compression gzip|none|zstd] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapshotter.images import IMAGE_LABEL, ImageStore

MiB = 1 << 20
LAYER_TYPES = {"none": "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
WORDS = [b"layer", b"union", b"snapshot", b"image", b"overlay", b"whiteout", b"opaque",
         b"digest", b"manifest", b"config", b"\n"]
TEXT = b" ".join(random.Random(1).choices(WORDS, k=1_400_000))   # ~10 MiB of words


def payload(rng: random.Random, size: int, text: bool) -> bytes:
    if not text:
        return rng.randbytes(size)
    start = rng.randrange(len(TEXT) - size) if size < len(TEXT) else 0
    return (TEXT * (size // len(TEXT) + 1))[start:start + size]


def file_sizes(rng: random.Random, total: int) -> list[int]:
    sizes = []
    while total > 0:
        s = min(total, rng.choice([4096, 16384, 65536, 262144, MiB, 4 * MiB]))
        sizes.append(s)
        total -= s
    return sizes


def write_layer(path: Path, index: int, size: int, rng: random.Random, prev: list[str]
                ) -> tuple[list[str], int]:
    names = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo(f"data{index}")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        tf.addfile(d)
        for i, s in enumerate(file_sizes(rng, size)):
            ti = tarfile.TarInfo(f"data{index}/f{i:05d}")
            ti.size, ti.mode, ti.mtime = s, 0o644, 1_700_000_000
            tf.addfile(ti, _Bytes(payload(rng, s, text=i % 2 == 0)))
            names.append(ti.name)
        for old in prev[::10]:          # whiteouts for every tenth file of the layer below
            parent, base = old.rsplit("/", 1)
            ti = tarfile.TarInfo(f"{parent}/.wh.{base}")
            ti.mode, ti.mtime = 0, 0
            tf.addfile(ti)
    return names, path.stat().st_size


class _Bytes:
    def __init__(self, b: bytes):
        self.b, self.pos = b, 0

    def read(self, n: int = -1) -> bytes:
        out = self.b[self.pos:] if n < 0 else self.b[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def compress(src: Path, comp: str) -> Path:
    if comp == "none":
        return src
    dst = src.with_suffix(".tar." + comp)
    if comp == "gzip":
        with open(src, "rb") as f, open(dst, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                              compresslevel=6) as gz:
            shutil.copyfileobj(f, gz, MiB)
    else:
        subprocess.run(["zstd", "-q", "-f", "-3", str(src), "-o", str(dst)], check=True,
                       timeout=3600)
    return dst


def build(layout: Path, work: Path, size_mb: int, layers: int, comp: str) -> tuple[int, int]:
    rng = random.Random(42)
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    descs, diff_ids, prev, raw_total = [], [], [], 0
    for i in range(layers):
        tar_path = work / f"layer{i}.tar"
        prev, _ = write_layer(tar_path, i, size_mb * MiB // layers, rng, prev)
        raw_total += tar_path.stat().st_size
        diff_ids.append(sha256_file(tar_path))
        blob = compress(tar_path, comp)
        digest = sha256_file(blob)
        descs.append({"mediaType": LAYER_TYPES[comp], "digest": digest,
                      "size": blob.stat().st_size})
        shutil.move(blob, blobs / digest[7:])
        tar_path.unlink(missing_ok=True)

    def put(obj: dict) -> dict:
        raw = json.dumps(obj).encode()
        d = "sha256:" + hashlib.sha256(raw).hexdigest()
        (blobs / d[7:]).write_bytes(raw)
        return {"digest": d, "size": len(raw)}

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    cfg = put({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
               "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    man = put({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
               "layers": descs})
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
        "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
    return raw_total, sum(d["size"] for d in descs)


def fill_upper(upper: Path, mb: int) -> int:
    rng = random.Random(7)
    total = 0
    for i, s in enumerate(file_sizes(rng, mb * MiB)):
        d = upper / f"new/d{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(payload(rng, s, text=i % 2 == 0))
        total += s
    (upper / "data0").mkdir(exist_ok=True)
    (upper / "data0/.wh.f00000").write_bytes(b"")
    return total


def rate(nbytes: int, secs: float, cpu: float) -> str:
    return (f"{nbytes / MiB:.1f} MiB in {secs:.2f} s wall = {nbytes / MiB / secs:.1f} MiB/s "
            f"(CPU {cpu:.2f} s = {nbytes / MiB / max(cpu, 1e-9):.1f} MiB/s per CPU-second)")


class Timer:
    """Wall and CPU time (this process plus waited-for children such as zstd)."""

    def __enter__(self) -> Self:
        self.t, self.c = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t, _cpu() - self.c


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--commit-mb", type=int, default=100)
    ap.add_argument("--compression", choices=tuple(LAYER_TYPES), default="gzip")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pyunion-bench-", dir=a.workdir))
    try:
        t = time.perf_counter()
        raw, comp = build(work / "image", work, a.size_mb, a.layers, a.compression)
        print(f"built {a.layers} layers: {raw / MiB:.1f} MiB uncompressed, "
              f"{comp / MiB:.1f} MiB {a.compression} ({time.perf_counter() - t:.1f} s)")
        with ImageStore(work / "root") as st:
            with Timer() as t:
                rec = st.import_path(work / "image", name="bench:1")
            print(f"import:  {rate(raw, t.wall, t.cpu)} uncompressed; "
                  f"{comp / MiB / t.wall:.1f} MiB/s of {a.compression} blobs")
            st.snapshots.prepare("ctr", rec.top, labels={IMAGE_LABEL: rec.name})
            written = fill_upper(st.snapshots.upper_path("ctr"), a.commit_mb)
            with Timer() as t:
                new = st.commit("ctr", "bench:2")
            print(f"commit:  {rate(written, t.wall, t.cpu)} of changes -> gzip layer of "
                  f"{new.layers[-1]['size'] / MiB:.1f} MiB (tar+gzip, then unpack into the store)")
            with Timer() as t:
                st.export("bench:2", work / "export.tar")
            size = (work / "export.tar").stat().st_size
            print(f"export:  {rate(size, t.wall, t.cpu)} (OCI tar)")
        return 0
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
