"""containerd with its overlayfs snapshotter vs pyunion's proxy snapshotter, side by side.

One run, same machine, same image, private containerds (tests/containerd_env.py):

  overlayfs      containerd's built-in snapshotter (kernel overlayfs)
  pyunion        `pyunion snapshotter serve`, layers unpacked by containerd into it
  pyunion-zero   the same, with the image already in pyunion's store (`pyunion image import`):
                 containerd's unpacker finds every layer there and fetches/unpacks none

Measured, REPS times each, medians reported:
  import   `ctr images import --snapshotter S IMAGE.tar` (containerd 1.6's ctr unpacks the
           classic way, so it cannot take the zero-unpack path: no row for pyunion-zero)
  pull     a CRI PullImage (what the kubelet sends) from a loopback registry, with S as the CRI
           snapshotter; between repetitions the image is removed and garbage-collected
  run      `ctr run --rm --snapshotter S IMAGE id true`

The image is tests/imagebuild.py's busybox plus one layer of FILES small files and one MB-MiB
file (gzip). Ratios are against overlayfs.

    .venv/bin/python bench/containerd.py [--reps 5] [--files 2000] [--mb 64] [--json OUT] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapshotter.images import ImageStore
from tests.containerd_env import Containerd, have_containerd
from tests.cri import pull_image
from tests.imagebuild import build_busybox_image
from tests.oci_registry import serving_registry

NAME = "bench/containerd:1"


def big_layer(files: int, mb: int) -> dict[str, object]:
    layer: dict[str, object] = {f"data/d{i // 100}/f{i}": f"file {i}\n" * 8 for i in range(files)}
    layer["data/big"] = os.urandom(mb << 20)
    return layer


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def measure(label: str, snapshotter: str, base: Path, tar: Path, layout: Path, reps: int,
            zero: bool) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {"import": [], "pull": [], "run": []}
    store = base / "pyunion-store"
    if zero:
        with ImageStore(store) as st:
            st.import_path(layout, NAME)
    with serving_registry(layout) as reg:
        c = Containerd(base / "c", store, cri_registry=reg.address)
        c.cri_snapshotter = snapshotter
        c.start()
        try:
            sn = ("--snapshotter", snapshotter)
            ref = f"{reg.address}/{NAME}"
            for i in range(reps):
                if not zero:
                    res["import"].append(timed(lambda: c.ctr("images", "import", *sn,
                                                             str(tar))))
                    c.ctr("images", "rm", "--sync", NAME)
                res["pull"].append(timed(lambda: pull_image(c.sock, ref)))
                cid = f"b{i}"
                res["run"].append(timed(lambda cid=cid: c.ctr(
                    "run", "--rm", *sn, ref, cid, "true", namespace="k8s.io")))
                # CRI records the image under its tag, digest and ID: remove them all, so the
                # next pull starts from nothing (the GC drops containerd's snapshots and blobs)
                names = c.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
                c.ctr("images", "rm", "--sync", *names, namespace="k8s.io")
                print(f"  {label} rep {i + 1}/{reps}: " + ", ".join(
                    f"{k} {v[-1]:.2f}s" for k, v in res.items() if v), flush=True)
        finally:
            c.stop()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--mb", type=int, default=64)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="write the raw times here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    why = have_containerd()
    if why:
        print(f"bench/containerd.py: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyunion-bench-ctrd-", dir=args.workdir))
    layer = big_layer(args.files, args.mb)
    tar = build_busybox_image(work / "image.tar", "oci-tar", extra_layers=[layer], name=NAME)
    layout = build_busybox_image(work / "layout", "oci", extra_layers=[layer], name=NAME)
    print(f"image: busybox + {args.files} files + {args.mb} MiB; {args.reps} reps; in {work}")
    results = {}
    for label, snapshotter, zero in (("overlayfs", "overlayfs", False),
                                     ("pyunion", "pyunion", False),
                                     ("pyunion-zero", "pyunion", True)):
        results[label] = measure(label, snapshotter, work / label, tar, layout, args.reps,
                                 zero)
    base = {k: median(v) for k, v in results["overlayfs"].items()}
    print(f"\n{'median seconds':<16}" + "".join(f"{k:>22}" for k in ("import", "pull", "run")))
    for label, res in results.items():
        cells = []
        for k in ("import", "pull", "run"):
            m = median(res[k])
            cells.append("—" if not res[k] else f"{m:.3f} ({m / base[k]:.2f}x)")
        print(f"{label:<16}" + "".join(f"{c:>22}" for c in cells))
    print("(ratio: median / overlayfs median; lower is faster)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "times": results}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
