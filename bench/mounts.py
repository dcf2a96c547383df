"""Mount bookkeeping shared by every implementation: is it mounted, and make sure it is not.

Every mount the harness makes is registered here before the mount command runs, so that a
failure anywhere (a workload error, Ctrl-C, a timeout) still ends with `release_all()` lazily
unmounting it. Nothing here kills a process: a hung FUSE daemon is cut off by aborting its
connection in fusectl, after which it exits on its own.
"""

from __future__ import annotations

import os
import subprocess

_ACTIVE: dict[str, list[str]] = {}  # target -> preferred unmount argv


def _mountinfo() -> list[list[str]]:
    # mount points are bytes: someone else's non-UTF-8 mount point must not end the run
    with open("/proc/self/mountinfo", errors="surrogateescape") as f:
        return [line.split() for line in f]


def mount_entry(target: str) -> list[str] | None:
    target = os.path.realpath(target)
    for fields in _mountinfo():
        if fields[4] == target:
            return fields
    return None


def is_mounted(target: str) -> bool:
    return mount_entry(target) is not None


def fs_type(target: str) -> str | None:
    fields = mount_entry(target)
    if fields is None:
        return None
    return fields[fields.index("-") + 1]


def describe(target: str, short: dict[str, str]) -> str:
    """`fstype mount-options super-options` of TARGET from mountinfo, long paths shortened."""
    fields = mount_entry(target)
    if fields is None:
        return ""
    sep = fields.index("-")
    text = f"{fields[sep + 1]} {fields[5]} {fields[sep + 3]}"
    for long, name in sorted(short.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(long, name)
    return text


def abort_fuse(target: str) -> None:
    """Abort a FUSE connection so that a hung daemon cannot hang the unmount."""
    fields = mount_entry(target)
    if fields is None or not (fs_type(target) or "").startswith("fuse"):
        return
    minor = fields[2].split(":")[1]
    path = f"/sys/fs/fuse/connections/{minor}/abort"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError:
        pass


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
