"""Concurrent stress against invariants: workers link/unlink/rename/mkdir/rmdir in one directory.

Interleavings are not reproducible, so instead of an expected errno per call the test checks
what must hold whatever the order:

* no call fails with an error a sequential run could not give (ESTALE, EIO, EINVAL, ...);
* the final tree is sound (no name listed twice, nothing found that is not listed, d_type
  agrees with lstat) and the same after a remount;
* the upper, read as an OCI changeset over the lowers, means that same tree;
* kernel overlayfs, mounted over the same lowers with pyunion's upper (converted to the kernel's
  whiteout form) as its top lower, shows that same tree, hard links and st_nlink included.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import subprocess
import threading
from pathlib import Path

from tests.mounting import mounted
from tests.unionfs.oracle_support import (
    WH_OPQ,
    WH_PREFIX,
    build_layer,
    changeset_problems,
    diff_trees,
    directory,
    fifo,
    file,
    hardlink,
    kernel_overlay_mount,
    resolve_links,
    scan_layer,
    snapshot,
    symlink,
    unmount_any,
    whiteout,
)

NAMES = [f"n{i}" for i in range(6)]
# What each call may answer in some sequential order of the same calls.
ALLOWED = {
    "link": {0, errno.ENOENT, errno.EEXIST, errno.EPERM},
    "unlink": {0, errno.ENOENT, errno.EISDIR},
    "rename": {0, errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY},
    "mkdir": {0, errno.EEXIST},
    "rmdir": {0, errno.ENOENT, errno.ENOTEMPTY, errno.ENOTDIR},
    "create": {0, errno.EEXIST, errno.EISDIR},
    "subfile": {0, errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.ELOOP},  # n2 -> n0 -> n0
    "mksub": {0, errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.ELOOP},
    "rmsub": {0, errno.ENOENT, errno.ENOTDIR, errno.ENOTEMPTY, errno.ELOOP},
    "unlinksub": {0, errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR},
    "own-tree": {0},      # a tree under a name only this worker uses: nothing may fail
}

# Half the calls churn directories (case 5 of issue 9), the rest fight over the shared names.
OPS = [*ALLOWED, *["own-tree"] * (len(ALLOWED) - 1)]

L1 = {"d": directory(), "d/n0": file(b"zero"), "d/n1": hardlink("d/n0"), "d/n2": symlink("n0"),
      "d/n5": whiteout()}
L2 = {"d": directory(), "d/n3": directory(), "d/n3/x": file(b"x"), "d/n4": fifo(),
      "d/n5": file(b"hidden")}


def _call(d: str, op: str, rng: random.Random, own: str) -> tuple[int, str]:
    """(errno or 0, what failed)."""
    a, b = (os.path.join(d, rng.choice(NAMES)) for _ in range(2))
    try:
        if op == "own-tree":
            # Made and removed again and again, the disk reuses the directories' inode numbers.
            os.makedirs(os.path.join(d, own, "sub", "deep"))
            with open(os.path.join(d, own, "sub", "deep", "f"), "wb") as f:
                f.write(b"x")
            shutil.rmtree(os.path.join(d, own))
            if own in os.listdir(d):
                return errno.ESTALE, "a listing shows what is gone"
        elif op == "link":
            os.link(a, b, follow_symlinks=False)
        elif op == "unlink":
            os.unlink(a)
        elif op == "rename":
            os.rename(a, b)
        elif op == "mkdir":
            os.mkdir(a)
        elif op == "rmdir":
            os.rmdir(a)
        elif op == "create":
            os.close(os.open(a, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        elif op == "mksub":
            os.mkdir(os.path.join(a, "s"))
        elif op == "rmsub":
            os.rmdir(os.path.join(a, "s"))
        elif op == "unlinksub":
            os.unlink(os.path.join(a, "f"))
        else:
            os.close(os.open(os.path.join(a, "f"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as e:
        return e.errno or -1, f"{e.strerror}: {e.filename}"
    return 0, ""


def _oci_to_kernel(src: Path, dst: Path) -> None:
    """A copy of an OCI-form layer in the kernel's form: `.wh.NAME` -> 0/0 char device,
    `.wh..wh..opq` -> trusted.overlay.opaque=y (hard links kept by cp -a), without pyunion's
    own bookkeeping xattrs."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=60)
    for top, dirs, files in os.walk(dst):
        for name in [*dirs, *files, ""]:
            path = os.path.join(top, name) if name else top
            for x in os.listxattr(path, follow_symlinks=False):
                if x.startswith(("trusted.pyunion.", "user.pyunion.")):
                    os.removexattr(path, x, follow_symlinks=False)
        for name in files:
            if name == WH_OPQ:
                os.unlink(os.path.join(top, name))
                os.setxattr(top, "trusted.overlay.opaque", b"y")
            elif name.startswith(WH_PREFIX):
                os.unlink(os.path.join(top, name))
                os.mknod(os.path.join(top, name[len(WH_PREFIX):]), stat.S_IFCHR | 0o600, 0)


def test_concurrent_names_in_one_directory(oracle_base: Path) -> None:
    base = oracle_base
    for d in ("up", "work", "mnt", "kmnt", "kup", "kwork"):
        (base / d).mkdir()
    for i, layer in enumerate((L1, L2)):
        build_layer(base / f"l{i}", layer, "oci")
        build_layer(base / f"k{i}", layer, "ovl")
    bad: list[str] = []
    with mounted(base / "up", [base / "l0", base / "l1"], base / "mnt",
                 options=[f"workdir={base / 'work'}"]) as m:
        d = os.fspath(m / "d")

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            for i in range(400):
                op = rng.choice(OPS)
                e, what = _call(d, op, rng, f"w{seed}_{i}")
                if e not in ALLOWED[op]:
                    bad.append(f"{op}: {errno.errorcode.get(e, e)} ({what})")

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = snapshot(m)
    assert bad == []
    assert final.problems == []
    with mounted(base / "up", [base / "l0", base / "l1"], base / "mnt",
                 options=[f"workdir={base / 'work'}"]) as m:
        again = snapshot(m)
    assert diff_trees(final.tree, again.tree) == []
    assert again.nlink == final.nlink

    models = [resolve_links(L1, "L0"), resolve_links(L2, "L1")]
    assert changeset_problems(scan_layer(base / "up", "oci"), models, final.tree) == []

    _oci_to_kernel(base / "up", base / "kup0")
    kernel_overlay_mount([base / "kup0", base / "k0", base / "k1"], base / "kup", base / "kwork",
                         base / "kmnt")
    try:
        kernel = snapshot(base / "kmnt")
    finally:
        unmount_any(base / "kmnt")
    assert kernel.problems == []
    assert diff_trees(kernel.tree, final.tree) == []
    assert kernel.nlink == final.nlink
    shutil.rmtree(base / "kup0")
