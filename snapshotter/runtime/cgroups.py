"""One tracking cgroup per container in the cgroup v2 (unified) hierarchy.

It is how `kill --all` and `delete` find every process of a container (also without a pid
namespace). Nothing is limited through it: linux.resources (other than device rules) is refused.
If there is no writable unified hierarchy, containers simply run without one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PARENT = "pyunion"


def unified_root() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def create(cid: str, cgroups_path: str | None) -> Path | None:
    """Make the container's cgroup; None when cgroup v2 is unavailable here."""
    root = unified_root()
    if root is None:
        return None
    if cgroups_path and cgroups_path.startswith("/") and ":" not in cgroups_path:
        path = root / cgroups_path.lstrip("/")
    else:
        path = root / PARENT / cid
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if procs(path):
            return None  # someone else's, in use: do not adopt it
    except OSError:
        return None
    return path


def add(path: Path, pid: int) -> None:
    (path / "cgroup.procs").write_text(f"{pid}\n")


def procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def kill_all(path: Path, sig: int) -> None:
    for pid in procs(path):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def remove(path: Path, timeout: float = 5.0) -> None:
    """rmdir the cgroup once its processes are gone (they may take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    if path.parent.name == PARENT:
        try:
            path.parent.rmdir()
        except OSError:
            pass
