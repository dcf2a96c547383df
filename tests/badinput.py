"""The one check every refusal gets: run a command, expect one line on stderr, the right exit
status, no traceback, and nothing created, changed, mounted or left running under the watched
directories. Shared by the bad-input tests (tests/test_bad_input.py, tests/test_cli_sweep.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.unionfs.oracle_support import mountpoints_under, pids_with_arg

PYUNION = [sys.executable, "-m", "unionfs"]


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under ROOT (ROOT included, mounts not crossed) with type, mode, size, mtime
    and, for symlinks, the target. A missing ROOT is recorded as missing."""
    out: dict[str, tuple] = {}
    try:
        top = os.lstat(root)
    except FileNotFoundError:
        return {".": ("missing",)}
    dev = top.st_dev

    def rec(path: str, st: os.stat_result) -> None:
        rel = os.path.relpath(path, root)
        link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        is_dir = stat.S_ISDIR(st.st_mode)     # a directory's entries are recorded instead
        out[rel] = (st.st_mode, 0 if is_dir else st.st_size, 0 if is_dir else st.st_mtime_ns,
                    link)
        if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
            try:
                names = sorted(os.listdir(path))
            except OSError:
                return
            for n in names:
                p = os.path.join(path, n)
                try:
                    rec(p, os.lstat(p))
                except FileNotFoundError:
                    continue

    rec(str(root), top)
    return out


class Watch:
    """What must not change while a refused command runs: trees, mounts and processes."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        self.before = self._state()

    def _state(self) -> tuple:
        trees = {str(p): tree_state(p) for p in self.paths}
        mounts = {str(p): sorted(mountpoints_under(p)) for p in self.paths if p.exists()}
        procs = {str(p): sorted(pids_with_arg(str(p))) for p in self.paths}
        return trees, mounts, procs

    def assert_unchanged(self) -> None:
        trees, mounts, procs = self._state()
        for p in trees:
            b, a = self.before[0][p], trees[p]
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            assert not changed, f"refused command changed {p}: {changed}"
        assert mounts == self.before[1], f"refused command left mounts: {mounts}"
        new = {p: sorted(set(procs[p]) - set(self.before[2].get(p, []))) for p in procs}
        assert not any(new.values()), f"refused command left processes: {new}"


def one_line(r: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command (no traceback, nothing else)."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {r.stderr!r}"
    return lines[0]


def refused(args: Sequence[str], status: int, *, watch: Sequence[Path] = (),
            contains: str | None = None, cmd: Sequence[str] | None = None,
            timeout: float = 60, **kw) -> str:
    """Run `pyunion ARGS` (or CMD + ARGS); assert the refusal; return the stderr line."""
    w = Watch(watch)
    full = [*(PYUNION if cmd is None else cmd), *args]
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    line = one_line(r)
    assert r.returncode == status, f"{full}: exit {r.returncode}, want {status}: {line}"
    if contains is not None:
        assert contains in line, line
    w.assert_unchanged()
    return line
