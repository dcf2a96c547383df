"""Shared test helpers: mount pyunion through its real CLI and always clean up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from unionfs import mountinfo

PYUNION = [sys.executable, "-m", "unionfs"]


def is_mounted(target: str | os.PathLike) -> bool:
    target = os.path.realpath(target)
    return any(m.mountpoint == target for m in mountinfo.mounts())


def force_unmount(target: str | os.PathLike) -> None:
    """Last resort for a fixture: lazy unmount so a hung daemon cannot hang CI."""
    if is_mounted(target):
        subprocess.run(["fusermount3", "-uz", str(target)], timeout=30, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pyunion(*args: str, timeout: float = 120, check: bool = True,
            **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*PYUNION, *args], timeout=timeout, check=check,
                          capture_output=True, text=True, **kw)


@contextlib.contextmanager
def mounted(upper: str | os.PathLike | None, lowers: Sequence[str | os.PathLike],
            target: str | os.PathLike, options: Sequence[str] = ()) -> Iterator[Path]:
    """Mount UPPER:LOWERS on TARGET with `pyunion mount`; unmount on exit, whatever happens."""
    spec = ":".join([str(upper or "")] + [str(x) for x in lowers])
    args = ["mount"]
    for o in options:
        args += ["-o", o]
    r = pyunion(*args, spec, str(target), check=False)
    if r.returncode != 0:
        force_unmount(target)
        raise RuntimeError(f"pyunion mount failed ({r.returncode}): {r.stderr.strip()}")
    try:
        yield Path(target)
    finally:
        try:
            pyunion("umount", str(target), timeout=60, check=False)
        except subprocess.TimeoutExpired:
            pass
        force_unmount(target)
