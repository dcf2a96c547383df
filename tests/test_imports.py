"""The import graph of the start paths (issue 10's start-time targets): what `pyunion mount`, its
daemon and `pyunion run` of a stored image load. Each import is CPU time on every start, so the
modules those paths never use (archive readers, compressors, the layer applier and writer, gRPC,
the pyfuse3 backend) stay out; a regression shows here as a name, not as a slower benchmark.

lzma and bz2 are not pinned: shutil imports them (Python 3.11), and shutil is used everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import imagebuild
from tests.runtime.conftest import needs_busybox, needs_root

REPO = Path(__file__).resolve().parents[1]

# What reading, unpacking or writing an image layer needs; a run of a stored image does none.
IMAGE_IO = {"tarfile", "gzip", "zipfile", "zstandard", "decimal", "concurrent.futures",
            "snapshotter.applier", "snapshotter.layer_writer", "snapshotter.image_cli"}
GRPC = {"grpc", "google.protobuf", "snapshotter.grpc_server", "snapshotter.grpc_client"}
PYFUSE3 = {"pyfuse3", "trio", "unionfs.operations"}


def loaded_by(*modules: str) -> set[str]:
    """sys.modules of a fresh interpreter (-S: no site, as the spawned daemon) that imported
    MODULES."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=60, check=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    return set(json.loads(r.stdout))


def imported(names: set[str], pinned: set[str]) -> set[str]:
    """The PINNED modules (or their submodules) among NAMES."""
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in pinned)}


def test_run_path_reads_no_archives():
    """`pyunion run`: the router, the run, the image and snapshot stores, the conversion to a
    runtime config and the runtime (images.py and image_readers.py import tarfile, gzip, the
    applier and the layer writer only where a layer is read or written)."""
    names = loaded_by("pyunion.cli", "snapshotter.run", "snapshotter.images",
                      "snapshotter.snapshots", "snapshotter.conversion",
                      "snapshotter.runtime.lifecycle")
    # platform compiles regexes at import; the runtime's syscall table needs only os.uname()
    assert imported(names, IMAGE_IO | GRPC | PYFUSE3 | {"platform"}) == set()


def test_mount_path_needs_no_snapshotter():
    """`pyunion mount` and its daemon on our own transport: no image code, no pyfuse3/trio, and
    no subprocess (the forked daemon mounts with mount(2); fusermount3 is imported when used)
    nor ctypes.util (find_library runs ldconfig)."""
    names = loaded_by("pyunion.cli", "unionfs.mount_cli", "unionfs.mounting", "unionfs.daemon",
                      "unionfs.transport")
    assert imported(names, {"snapshotter", "subprocess", "ctypes.util"} | IMAGE_IO
                    | PYFUSE3) == set()


def import_trace(stderr: str) -> set[str]:
    """Module names from `-X importtime` lines."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2} - {"package"}


@needs_root
@needs_busybox
def test_pyunion_run_of_a_stored_image_end_to_end(tmp_path):
    """The imports a real `pyunion run --rm IMAGE true` makes (the functions' lazy imports
    included), the mount's forked daemon among them."""
    root = tmp_path / "store"
    src = imagebuild.build_busybox_image(tmp_path / "img")
    subprocess.run([sys.executable, "-m", "pyunion", "image", "--root", str(root), "import",
                    "--name", "bb:1", str(src)], cwd=REPO, check=True, capture_output=True,
                   timeout=120)
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "pyunion", "run", "--rm",
                        "--root", str(root), "bb:1", "true"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    names = import_trace(r.stderr)
    assert "snapshotter.run" in names        # the trace is the run's
    assert imported(names, IMAGE_IO | GRPC | PYFUSE3) == set()


@needs_root
def test_pyunion_mount_end_to_end(tmp_path):
    """A real `pyunion mount`: the command's imports and, through -o log=, its forked daemon's
    imports until it serves."""
    upper, lower, target, log = (tmp_path / n for n in ("upper", "lower", "target", "log"))
    for d in (upper, lower, target):
        d.mkdir()
    (lower / "f").write_text("x")
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "pyunion", "mount",
                        "-o", f"log={log}", f"{upper}:{lower}", str(target)], cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    try:
        assert r.returncode == 0, r.stderr[-2000:]
        assert (target / "f").read_text() == "x"
    finally:
        subprocess.run([sys.executable, "-m", "pyunion", "umount", str(target)], cwd=REPO,
                       capture_output=True, timeout=60, check=False)
    names = import_trace(r.stderr) | import_trace(log.read_text())
    assert "unionfs.mounting" in names and "unionfs.transport.session" in names
    assert imported(names, {"snapshotter", "subprocess", "ctypes.util"} | IMAGE_IO
                    | PYFUSE3) == set()
