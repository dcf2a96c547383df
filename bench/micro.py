"""Per-request micro-measures of the metadata path, A/B interleaved between implementations.

Each measure runs on a fresh mount of the same two-layer tree (so "cold" means nothing is in
the kernel's caches for the mount) and reports µs per call; implementations take turns within
each round, and the medians with ranges over the rounds are printed, with the daemon's own CPU time per call (all its threads,
/proc/PID/task/*/schedstat), which other jobs on a shared, noisy machine barely move.

    python -m bench.micro [--impl pyunion-kernel,fuse-overlayfs] [--rounds 5] [--files 2000]
    PYUNION_PROFILE=/tmp/p.pstats python -m bench.micro --impl pyunion-kernel --only create
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.impls import ALL, Layout

MEASURES = ("open-close", "stat-cold", "create", "unlink", "readdir-cold", "readdir-warm",
            "tar", "find-grep")


def build(base: str, files: int, big: int) -> None:
    """lower BASE: d/ with `files` small files, big/ with `big` names; TOP: half of big/ and a
    few of d/ again (so both directories are merged)."""
    for layer in ("base", "top"):
        os.makedirs(f"{base}/{layer}/d")
        os.makedirs(f"{base}/{layer}/big")
    for i in range(files):
        with open(f"{base}/base/d/f{i:06d}", "wb") as f:
            f.write(b"hello %d\n" % i)
    for i in range(0, files, 10):
        with open(f"{base}/top/d/f{i:06d}", "wb") as f:
            f.write(b"top %d\n" % i)
    for i in range(big):
        layer = "top" if i % 2 else "base"
        with open(f"{base}/{layer}/big/n{i:06d}", "wb") as f:
            f.write(b"x")


def _mounted(impl, base: str, run: int) -> Layout:
    up = f"{base}/run{run}"
    os.makedirs(f"{up}/upper")
    os.makedirs(f"{up}/work")
    os.makedirs(f"{up}/mnt")
    lay = Layout(lowers=(f"{base}/top", f"{base}/base"), upper=f"{up}/upper",
                 work=f"{up}/work", target=f"{up}/mnt")
    impl.mount(lay)
    return lay


def daemon_pids(target: str) -> list[int]:
    """Processes (other than us) whose command line names the mount point: the daemon."""
    me, out = os.getpid(), []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if os.fsencode(target) in f.read().split(b"\0"):
                    out.append(int(d))
        except OSError:
            pass
    return out


def cpu_ns(pids: list[int]) -> int:
    """On-CPU time of every thread of `pids` (/proc/PID/task/TID/schedstat, ns): what the
    daemon spent, whatever else the shared machine was doing."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def measure(name: str, root: str, files: int, big: int, pids: list[int]) -> tuple[float, float]:
    """(wall µs, daemon CPU µs) per call (per name for the listings, per file for tar and
    grep)."""
    t0 = c0 = 0.0

    def start() -> None:
        nonlocal t0, c0
        c0 = cpu_ns(pids)
        t0 = time.perf_counter()

    def done(n: int) -> tuple[float, float]:
        wall = (time.perf_counter() - t0) / n * 1e6
        return wall, (cpu_ns(pids) - c0) / n / 1000
    d = f"{root}/d"
    names = [f"f{i:06d}" for i in range(files)]
    if name == "open-close":
        for n in names:               # lookups first: the measure is the OPEN/RELEASE pair
            os.lstat(f"{d}/{n}")
        start()
        for n in names:
            os.close(os.open(f"{d}/{n}", os.O_RDONLY))
        return done(files)
    if name == "stat-cold":
        start()
        for n in names:
            os.lstat(f"{d}/{n}")
        return done(files)
    if name == "create":
        os.mkdir(f"{root}/new")
        data = b"x" * 4096
        start()
        for i in range(files):
            fd = os.open(f"{root}/new/c{i:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.write(fd, data)
            os.close(fd)
        return done(files)
    if name == "unlink":
        paths = [f"{d}/{n}" for n in names]
        start()
        for p in paths:
            os.unlink(p)
        return done(files)
    if name in ("readdir-cold", "readdir-warm"):
        def listing() -> tuple[float, float]:
            start()
            got = os.listdir(f"{root}/big")
            for n in got:
                os.lstat(f"{root}/big/{n}")
            assert len(got) == big, len(got)
            return done(big)
        cold = listing()
        return cold if name == "readdir-cold" else min(listing() for _ in range(3))
    if name == "tar":
        start()
        subprocess.run(["tar", "-cf", "/dev/null", "-C", root, "d", "big"], check=True)
        return done(files + big)
    if name == "find-grep":
        start()
        subprocess.run(f"find {root}/d {root}/big -type f -print0 | xargs -0 grep -l zzz",
                       shell=True, check=False, stdout=subprocess.DEVNULL)
        return done(files + big)
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n")[0])
    ap.add_argument("--impl", default="pyunion-kernel,fuse-overlayfs")
    ap.add_argument("--only", default=",".join(MEASURES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--big", type=int, default=10000, help="names in the merged big/ directory")
    ap.add_argument("--data-dir", default="/var/tmp")
    a = ap.parse_args(argv)
    impls = {i.name: i for i in ALL}
    chosen = [impls[n] for n in a.impl.split(",")]
    only = a.only.split(",")
    base = tempfile.mkdtemp(prefix="pyunion-micro-", dir=a.data_dir)
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}     # daemon µs on CPU per call
    run = 0
    try:
        build(base, a.files, a.big)
        for _ in range(a.rounds):
            for m in only:
                for impl in chosen:
                    run += 1
                    lay = _mounted(impl, base, run)
                    try:
                        wall, used = measure(m, lay.target, a.files, a.big,
                                             daemon_pids(lay.target))
                        results.setdefault((m, impl.name), []).append(wall)
                        cpu.setdefault((m, impl.name), []).append(used)
                    finally:
                        impl.unmount(lay.target)
                        shutil.rmtree(f"{base}/run{run}", ignore_errors=True)
        width = max(len(i.name) for i in chosen)
        for m in only:
            for impl in chosen:
                v, c = results[(m, impl.name)], cpu[(m, impl.name)]
                print(f"{m:13} {impl.name:{width}} wall {statistics.median(v):7.1f} µs "
                      f"[{min(v):.1f} .. {max(v):.1f}]  daemon cpu {statistics.median(c):6.1f} µs "
                      f"[{min(c):.1f} .. {max(c):.1f}] n={len(v)}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
