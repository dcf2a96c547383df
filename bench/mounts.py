"""Mount bookkeeping shared by every implementation: is it mounted, and make sure it is not.

Every mount the harness makes is registered here before the mount command runs, so that a
failure anywhere (a workload error, Ctrl-C, a timeout) still ends with `release_all()` lazily
unmounting it. Nothing here kills a process: a hung FUSE daemon is cut off by aborting its
connection in fusectl, after which it exits on its own.
"""

from __future__ import annotations

import os
import subprocess

from unionfs import mountinfo
from unionfs.mounting import abort_connection

_ACTIVE: dict[str, list[str]] = {}  # target -> preferred unmount argv


def mount_entry(target: str) -> mountinfo.MountEntry | None:
    """The topmost mount on TARGET (resolved), from the mount table (unionfs/mountinfo.py)."""
    return mountinfo.top_mount(os.path.realpath(target))


def is_mounted(target: str) -> bool:
    return mount_entry(target) is not None


def fs_type(target: str) -> str | None:
    entry = mount_entry(target)
    return None if entry is None else entry.fstype


def describe(target: str, short: dict[str, str]) -> str:
    """`fstype mount-options super-options` of TARGET from mountinfo, long paths shortened."""
    entry = mount_entry(target)
    if entry is None:
        return ""
    text = f"{entry.fstype} {entry.options} {entry.super_options}"
    for long, name in sorted(short.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(long, name)
    return text


def abort_fuse(target: str) -> None:
    """Abort a FUSE connection so that a hung daemon cannot hang the unmount (through
    unionfs.mounting, which also reaches fusectl when the host has not mounted it)."""
    entry = mount_entry(target)
    conn = None if entry is None else mountinfo.fuse_connection(entry)
    if conn is not None:
        abort_connection(conn)   # the mount is there now: the number is its own


def register(target: str, unmount_argv: list[str]) -> None:
    _ACTIVE[os.path.realpath(target)] = unmount_argv


def release(target: str, timeout: float = 60) -> str | None:
    """Unmount TARGET its own way first, then lazily. Returns a problem, or None."""
    target = os.path.realpath(target)
    argv = _ACTIVE.pop(target, None)
    problem = None
    if argv and is_mounted(target):
        try:
            r = subprocess.run(argv, timeout=timeout, check=False, capture_output=True, text=True)
            if r.returncode != 0:
                problem = f"{' '.join(argv[:3])}... exited {r.returncode}: {r.stderr.strip()[:200]}"
        except subprocess.TimeoutExpired:
            problem = f"unmount timed out after {timeout:.0f}s"
            abort_fuse(target)
    for _ in range(3):
        if not is_mounted(target):
            break
        problem = problem or "needed a lazy unmount"
        subprocess.run(["umount", "-l", target], timeout=30, check=False, capture_output=True)
    return problem


def release_all() -> None:
    for target in list(_ACTIVE):
        release(target, timeout=30)


def active() -> list[str]:
    return list(_ACTIVE)
