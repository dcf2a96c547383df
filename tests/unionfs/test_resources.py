"""A long run must not grow the daemon: open files, directory streams, mkdir/rmdir and
lookup/forget cycles leave its descriptor count flat (issue 5)."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.mounting import mounted
from unionfs.mount_cli import pid_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for FUSE")


def daemon_pid(target) -> int:
    return json.loads(pid_file(str(target)).read_text())["pid"]


def fd_count(pid: int) -> int:
    """Descriptors once the kernel's asynchronous releases have arrived (a bound, not timing)."""
    last, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline:
        n = len(os.listdir(f"/proc/{pid}/fd"))
        if n == last:
            return n
        last = n
        time.sleep(0.2)
    return last


def drop_kernel_caches() -> None:
    """Make the kernel forget our inodes, so the daemon sees the forgets."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def test_descriptors_stay_flat(tmp_path):
    low, up, work, mnt = (tmp_path / n for n in ("low", "up", "work", "mnt"))
    for d in (low, up, work, mnt):
        d.mkdir()
    for i in range(200):
        (low / f"f{i}").write_text(str(i))
    with mounted(up, [low], mnt, options=[f"workdir={work}"]):
        pid = daemon_pid(mnt)
        (mnt / "warm").write_text("x")
        before = fd_count(pid)
        for i in range(2000):
            with open(mnt / f"f{i % 200}") as f:
                f.read()
        for i in range(200):
            with open(mnt / f"f{i}", "a") as f:  # copy-up, then write handles
                f.write("+")
        for i in range(1000):
            os.mkdir(mnt / "d")
            (mnt / "d" / "x").write_text("x")
            os.listdir(mnt / "d")
            os.unlink(mnt / "d" / "x")
            os.rmdir(mnt / "d")
        for _ in range(50):
            os.listdir(mnt)
        drop_kernel_caches()
        assert fd_count(pid) == before
