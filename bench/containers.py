"""The container workload: `pyunion run --rm IMAGE true` against runc on a kernel-overlay rootfs
of the same image.

The image is built offline with umoci from the host's static busybox. runc's side, timed as a
whole like `pyunion run --rm`: mount a kernel overlay (image rootfs as the lower, a fresh upper),
`runc run` the bundle (runc deletes the container when it exits), unmount.
Each side is skipped with a clear line if its tools are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from bench import mounts
from bench.impls import PYTHON, Pyunion
from bench.runner import interleaved

CONTAINER_WORKLOAD = "run"
TITLE = "start a container running `true` and remove it (kernel overlayfs column: vs runc)"
IMAGE = "pyunion-bench:latest"
PYUNION_RUN, RUNC = "pyunion-run", "runc+kernel-overlay"
TIMEOUT = 120


def _sh(argv: list[str], cwd: str | None = None, timeout: float = TIMEOUT) -> None:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        err = (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}").splitlines()[-1]
        raise RuntimeError(f"{' '.join(argv[:3])}: {err}")


def build_image(work: str) -> tuple[str, str]:
    """An OCI layout holding a busybox image whose command is `true`, and its unpacked bundle."""
    layout, bundle = os.path.join(work, "oci"), os.path.join(work, "bundle")
    tag = f"{layout}:bench"
    _sh(["umoci", "init", "--layout", layout])
    _sh(["umoci", "new", "--image", tag])
    _sh(["umoci", "config", "--image", tag, "--config.env", "PATH=/bin", "--config.cmd", "true"])
    _sh(["umoci", "unpack", "--image", tag, bundle])
    bindir = os.path.join(bundle, "rootfs", "bin")
    os.makedirs(bindir, exist_ok=True)
    shutil.copy2("/usr/bin/busybox", os.path.join(bindir, "busybox"))
    for applet in ("sh", "true"):
        os.symlink("busybox", os.path.join(bindir, applet))
    _sh(["umoci", "repack", "--image", tag, bundle])
    return layout, bundle


def pyunion_run_missing() -> str | None:
    r = subprocess.run(
        [PYTHON, "-c", "import snapshotter.run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if r.returncode != 0:
        return "`pyunion run` is not available yet (snapshotter.run does not import)"
    return None


def runc_missing() -> str | None:
    for tool in ("runc", "umoci"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not os.path.exists("/usr/bin/busybox"):
        return "/usr/bin/busybox is missing (Debian package busybox-static)"
    return None


def runc_once(bundle: str, scratch: str, n: int) -> float:
    """Kernel overlay over the image rootfs, `runc run` of `true`, unmount: the time of all."""
    run = os.path.join(scratch, f"runc-{n}")
    upper, workdir, rootfs = (os.path.join(run, d) for d in ("upper", "work", "rootfs"))
    for d in (upper, workdir, rootfs):
        os.makedirs(d)
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    cfg["root"] = {"path": rootfs, "readonly": False}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(cfg, f)
    lower = os.path.join(bundle, "rootfs")
    mounts.register(rootfs, ["umount", rootfs])
    try:
        t0 = time.perf_counter()
        _sh(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={workdir}",
                rootfs,
            ]
        )
        _sh(
            [
                "runc",
                "--root",
                os.path.join(scratch, "runc-state"),
                "run",
                "--bundle",
                run,
                f"pyunion-bench-{os.getpid()}-{n}",
            ]
        )
        problem = mounts.release(rootfs)
        elapsed = time.perf_counter() - t0
        if problem:
            raise RuntimeError(f"unmount: {problem}")
        return elapsed
    finally:
        mounts.release(rootfs)
        shutil.rmtree(run, ignore_errors=True)


def pyunion_once(root: str) -> float:
    t0 = time.perf_counter()
    _sh([PYTHON, "-m", "unionfs", "run", "--root", root, "--rm", IMAGE, "true"])
    return time.perf_counter() - t0


def _cell(skipped: str = "") -> dict:
    return {"times": [], "errors": [], "notes": [], "skipped": skipped}


def run_containers(work: str, reps: int, log=print) -> tuple[dict, dict, dict]:
    """Returns (workload doc, raw cells by implementation, implementation infos)."""
    doc = {
        "name": CONTAINER_WORKLOAD,
        "title": TITLE,
        "state": "fresh",
        "unit": "runs/s",
        "amount": 1,
        "refs": {"kernel-overlay": RUNC},
    }
    infos = {
        RUNC: {
            "label": "runc",
            "dialect": "rootfs unpacked by umoci",
            "version": _runc_version(),
            "options": "overlay lowerdir=ROOTFS,upperdir=U,workdir=W; runc run",
            "status": "ok",
            "reason": "",
        },
        PYUNION_RUN: {
            "label": "pyunion run",
            "dialect": "oci",
            "version": Pyunion().version(),
            "options": "pyunion run --root R --rm IMAGE true",
            "status": "ok",
            "reason": "",
        },
    }
    cells = {RUNC: _cell(), PYUNION_RUN: _cell()}
    reasons = {RUNC: runc_missing(), PYUNION_RUN: pyunion_run_missing() or runc_missing()}
    scratch = os.path.join(work, "containers")
    os.makedirs(scratch, exist_ok=True)
    layout = bundle = None
    if not all(reasons.values()):
        try:
            layout, bundle = build_image(scratch)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            reasons = {k: v or f"building the image failed: {e}" for k, v in reasons.items()}
    store = os.path.join(scratch, "store")
    if not reasons[PYUNION_RUN]:
        try:
            _sh(
                [
                    PYTHON,
                    "-m",
                    "unionfs",
                    "image",
                    "--root",
                    store,
                    "import",
                    layout,
                    "--name",
                    IMAGE,
                ]
            )
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            reasons[PYUNION_RUN] = f"pyunion image import failed: {e}"
    for name, reason in reasons.items():
        if reason:
            log(f"skip {CONTAINER_WORKLOAD} on {name}: {reason}")
            cells[name]["skipped"] = reason
            infos[name].update(status="skipped", reason=reason)
    active = [n for n in (RUNC, PYUNION_RUN) if not reasons[n]]
    for rep, name in interleaved(active, reps):
        cell = cells[name]
        if None in cell["times"]:
            cell["times"].append(None)
            continue
        try:
            t = runc_once(bundle, scratch, rep) if name == RUNC else pyunion_once(store)
            cell["times"].append(t)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            cell["times"].append(None)
            cell["errors"].append(f"rep {rep + 1}: {e}")
            log(f"  {CONTAINER_WORKLOAD}: {name}: {e}")
    if active:
        log(
            f"{CONTAINER_WORKLOAD:14s} "
            + "  ".join(
                f"{n}={min((t for t in cells[n]['times'] if t), default=0):.3f}s(min)"
                for n in active
            )
        )
    return doc, cells, infos


def _runc_version() -> str:
    try:
        r = subprocess.run(
            ["runc", "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return r.stdout.splitlines()[0] if r.stdout else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
