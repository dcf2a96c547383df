"""Lifecycle of `pyunion mount`: repeated mounts leak nothing, bad input fails in one line,
the fuse-overlayfs / mount.fuse3 command lines work, the daemon lets go of the caller's stdio,
and SIGTERM to the daemon unmounts cleanly.

The daemon is found by its command line (a process whose argv names the mount target and
`unionfs`), not by pyunion's pid file, so the test does not trust the code under test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import PYUNION, force_unmount, pyunion
from tests.unionfs.oracle_support import (
    daemon_pids,
    diff_trees,
    directory,
    file,
    is_mounted,
    merge,
    open_fds,
    resolve_links,
    snapshot,
    whiteout,
)

CYCLES = int(os.environ.get("PYUNION_LIFECYCLE_CYCLES", "100"))

LOWER1 = {"common": file(b"from l1"), "d": directory(), "d/one": file(b"1"),
          "gone": whiteout()}
LOWER2 = {"common": file(b"from l2"), "gone": file(b"hidden"), "d": directory(),
          "d/two": file(b"2", 0o600), "only2": file(b"bottom")}


@pytest.fixture
def stack(oracle_base: Path) -> Path:
    """upper/, work/, l1/ (OCI whiteouts), l2/ and an empty mnt/ under one directory."""
    from tests.unionfs.oracle_support import build_layer
    for d in ("upper", "work", "mnt"):
        (oracle_base / d).mkdir()
    build_layer(oracle_base / "l1", LOWER1, "oci")
    build_layer(oracle_base / "l2", LOWER2, "oci")
    return oracle_base


def expected_view() -> dict:
    return merge([resolve_links(LOWER1, "L1"), resolve_links(LOWER2, "L2")])


def assert_view(mnt: Path, extra: dict | None = None) -> None:
    snap = snapshot(mnt)
    assert not snap.problems
    assert diff_trees(expected_view() | (extra or {}), snap.tree, peers=False) == []


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    """Poll until none of `pids` is alive (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)]
    return alive


def child_pids() -> set[int]:
    """Children of this process, zombies included."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
            out.update(int(p) for p in f.read().split())
    return out


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@contextlib.contextmanager
def cleanup(target: Path) -> Iterator[None]:
    """Whatever happens, nothing stays mounted on `target` and no daemon of it stays alive."""
    try:
        yield
    finally:
        if is_mounted(target):
            pyunion("umount", str(target), check=False, timeout=60)
        force_unmount(target)
        for pid in daemon_pids(target):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, f"expected failure, got success: {r.stdout!r}"
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {r.stderr!r}"
    assert "Traceback" not in r.stderr
    return lines[0]


def layer_state(root: Path) -> dict:
    """Everything under root (not following mounts): a failed mount must change none of it."""
    return {p: n.public() for p, n in snapshot(root, probes=()).tree.items()}


# ---------------------------------------------------------------------------------------------


def test_repeated_mount_umount_leaves_nothing(stack: Path) -> None:
    mnt = stack / "mnt"
    fds_before = open_fds()
    children_before = child_pids()
    spec = f"{stack / 'upper'}:{stack / 'l1'}:{stack / 'l2'}"
    written: dict = {}
    with cleanup(mnt):
        for i in range(CYCLES):
            r = pyunion("mount", "-o", f"workdir={stack / 'work'}", spec, str(mnt),
                        check=False, timeout=60)
            assert r.returncode == 0, f"cycle {i}: {r.stderr}"
            assert is_mounted(mnt)
            assert len(daemon_pids(mnt)) == 1, f"cycle {i}: daemons {daemon_pids(mnt)}"
            if i % 10 == 0:
                assert_view(mnt, written)
                (mnt / f"new{i}").write_bytes(b"x")
                written[f"new{i}"] = file(b"x")
            r = pyunion("umount", str(mnt), check=False, timeout=60)
            assert r.returncode == 0, f"cycle {i}: {r.stderr}"
            assert not is_mounted(mnt), f"cycle {i}: still mounted after umount returned"
            assert daemon_pids(mnt) == [], f"cycle {i}: daemon alive after umount returned"
    assert open_fds() == fds_before
    assert child_pids() <= children_before  # no child left, not even a zombie
    # Every write made it to the upper across the cycles.
    assert sorted(p.name for p in (stack / "upper").iterdir()) == \
        sorted(f"new{i}" for i in range(0, CYCLES, 10))


def _bad_cases(s: Path) -> dict[str, list[str]]:
    up, l1, l2, mnt, work = (str(s / n) for n in ("upper", "l1", "l2", "mnt", "work"))
    spec = f"{up}:{l1}:{l2}"
    return {
        "no arguments to mount": ["mount"],
        "only a target": ["mount", mnt],
        "spec without lowers": ["mount", up, mnt],
        "empty lower in spec": ["mount", f"{up}::{l2}", mnt],
        "missing lower": ["mount", f"{up}:{s / 'nope'}", mnt],
        "missing upper": ["mount", f"{s / 'nope'}:{l1}", mnt],
        "missing target": ["mount", spec, str(s / "nope")],
        "target is a file": ["mount", spec, str(s / "l2" / "only2")],
        "upper inside a lower": ["mount", f"{l1}/d:{l1}:{l2}", mnt],
        "lower inside the upper": ["mount", f"{s}:{l1}", mnt],
        "unknown option": ["mount", "-o", f"workdir={work},nosuchoption", spec, mnt],
        "unknown flag": ["mount", "--bogus", spec, mnt],
        "dangling -o": ["mount", spec, mnt, "-o"],
        "compat form without lowerdir": ["-o", f"upperdir={up},workdir={work}", mnt],
        "compat form with unknown option": ["-o", f"lowerdir={l1},frobnicate=1", mnt],
        "umount of a plain directory": ["umount", mnt],
        "umount without target": ["umount"],
    }


BAD_CASE_NAMES = list(_bad_cases(Path("/x")))


@pytest.mark.parametrize("case", BAD_CASE_NAMES)
def test_bad_command_line_fails_in_one_line(stack: Path, case: str) -> None:
    mnt = stack / "mnt"
    before = {d: layer_state(stack / d) for d in ("upper", "l1", "l2")}
    with cleanup(mnt):
        r = pyunion(*_bad_cases(stack)[case], check=False, timeout=60)
        line = one_line_error(r)
        assert line.startswith("pyunion:"), line
        assert not is_mounted(mnt)
        assert not is_mounted(stack / "l1" / "d")
    assert {d: layer_state(stack / d) for d in ("upper", "l1", "l2")} == before


def test_target_busy(stack: Path) -> None:
    mnt = stack / "mnt"
    spec = f"{stack / 'upper'}:{stack / 'l1'}:{stack / 'l2'}"
    with cleanup(mnt):
        pyunion("mount", "-o", f"workdir={stack / 'work'}", spec, str(mnt), timeout=60)
        r = pyunion("mount", "-o", f"workdir={stack / 'work'}", spec, str(mnt), check=False,
                    timeout=60)
        assert "busy" in one_line_error(r) or "mounted" in r.stderr
        assert len(daemon_pids(mnt)) == 1
        assert_view(mnt)  # the first mount still works


def test_workdir_on_another_filesystem(stack: Path) -> None:
    other = stack / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(other)], check=True,
                   timeout=30)
    try:
        with cleanup(stack / "mnt"):
            r = pyunion("mount", "-o", f"workdir={other / 'work'}",
                        f"{stack / 'upper'}:{stack / 'l1'}", str(stack / "mnt"), check=False,
                        timeout=60)
            line = one_line_error(r)
            assert "filesystem" in line or "device" in line, line
            assert not is_mounted(stack / "mnt")
    finally:
        subprocess.run(["umount", "-l", str(other)], check=False, timeout=30)


def test_umount_of_busy_mount_fails_and_keeps_it(stack: Path) -> None:
    mnt = stack / "mnt"
    with cleanup(mnt):
        pyunion("mount", "-o", f"workdir={stack / 'work'}",
                f"{stack / 'upper'}:{stack / 'l1'}:{stack / 'l2'}", str(mnt), timeout=60)
        with open(mnt / "common", "rb") as f:
            r = pyunion("umount", str(mnt), check=False, timeout=60)
            one_line_error(r)
            assert is_mounted(mnt)
            assert f.read() == b"from l1"
        pyunion("umount", str(mnt), timeout=60)
        assert not is_mounted(mnt)


# --------------------------------------------------------------------------------------------
# Other command-line forms


def _compat_forms(s: Path) -> dict[str, tuple[list[str], bool]]:
    up, l1, l2, mnt, work = (str(s / n) for n in ("upper", "l1", "l2", "mnt", "work"))
    return {
        "podman": (["-o", f"lowerdir={l1}:{l2},upperdir={up},workdir={work}", mnt], True),
        "podman empty items": (
            ["-o", f"lowerdir={l1}:{l2},upperdir={up},workdir={work},", mnt], True),
        "podman double comma volatile": (
            ["-o", f"lowerdir={l1}:{l2},upperdir={up},workdir={work},,volatile", mnt], True),
        "podman read-only": (["-o", f"lowerdir={l1}:{l2}", mnt], False),
        "mount.fuse3": (["pyunion", mnt, "-o",
                         f"rw,lowerdir={l1}:{l2},upperdir={up},workdir={work},dev,suid"], True),
        "mount.fuse3 read-only": (["pyunion", mnt, "-o", f"lowerdir={l1}:{l2}"], False),
        "mount with generic fuse options": (
            ["mount", "-o", f"workdir={work},allow_other,default_permissions,noatime",
             f"{up}:{l1}:{l2}", mnt], True),
        "mount read-only (empty upper)": (["mount", f":{l1}:{l2}", mnt], False),
    }


@pytest.mark.parametrize("form", list(_compat_forms(Path("/x"))))
def test_command_line_forms_mount_the_same_union(stack: Path, form: str) -> None:
    args, writable = _compat_forms(stack)[form]
    mnt = stack / "mnt"
    with cleanup(mnt):
        r = pyunion(*args, check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
        assert_view(mnt)
        if writable:
            (mnt / "d" / "new").write_bytes(b"n")
            (mnt / "common").unlink()
            assert (stack / "upper" / "d" / "new").read_bytes() == b"n"
            assert (stack / "upper" / ".wh.common").exists()
        else:
            with pytest.raises(OSError) as e:
                (mnt / "new").write_bytes(b"n")
            assert e.value.errno == errno.EROFS
            with pytest.raises(OSError) as e:
                (mnt / "common").unlink()
            assert e.value.errno == errno.EROFS
        r = pyunion("umount", str(mnt), check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
        assert wait_gone(daemon_pids(mnt)) == []


def test_version() -> None:
    for args in (["--version"], ["-o", "lowerdir=/x", "/y", "--version"]):
        r = pyunion(*args, check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        out = r.stdout.strip()
        assert out.startswith("pyunion "), out
        assert any(c.isdigit() for c in out)


@pytest.mark.parametrize("form", ["mount", "podman"])
def test_daemon_lets_go_of_callers_stdio(stack: Path, form: str) -> None:
    """podman reads the mount program's stderr until EOF: the daemon must not keep it open."""
    mnt = stack / "mnt"
    up, l1, l2, work = (str(stack / n) for n in ("upper", "l1", "l2", "work"))
    args = (["mount", "-o", f"workdir={work}", f"{up}:{l1}:{l2}", str(mnt)] if form == "mount"
            else ["-o", f"lowerdir={l1}:{l2},upperdir={up},workdir={work},", str(mnt)])
    with cleanup(mnt):
        proc = subprocess.Popen([*PYUNION, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            # communicate() returns only at EOF on both pipes: a daemon holding them hangs here.
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("stdout/stderr of the mount command still open after it returned")
        assert proc.returncode == 0
        assert is_mounted(mnt)
        assert len(daemon_pids(mnt)) == 1
        assert_view(mnt)


@pytest.mark.parametrize("wait", ["poll", "trio"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_to_daemon_unmounts_cleanly(stack: Path, sig: int, busy: bool, wait: str) -> None:
    """Idle, the daemon waits in poll(); busy, a request is always queued: both stop. `trio` is
    pyfuse3's own wait, the fallback when the FUSE descriptor cannot be found."""
    mnt = stack / "mnt"
    env = dict(os.environ, PYUNION_WAIT=wait)
    with cleanup(mnt):
        pyunion("mount", "-o", f"workdir={stack / 'work'}",
                f"{stack / 'upper'}:{stack / 'l1'}:{stack / 'l2'}", str(mnt), timeout=60, env=env)
        daemons = daemon_pids(mnt)
        assert len(daemons) == 1
        with open(mnt / "written", "wb") as f:
            f.write(b"kept")
        load = None
        if busy:   # a shell stat-ing through the mount without pause: requests keep coming
            load = subprocess.Popen(["sh", "-c", f"while :; do ls -l {mnt} >/dev/null 2>&1; done"])
            time.sleep(0.3)
        try:
            os.kill(daemons[0], sig)
            assert wait_gone(daemons) == [], "daemon still alive 30 s after the signal"
        finally:
            if load is not None:
                load.kill()
                load.wait(timeout=30)
        assert not is_mounted(mnt), "the signal left the mount behind"
        assert (stack / "upper" / "written").read_bytes() == b"kept"
        # And it mounts again over the same directories.
        pyunion("mount", "-o", f"workdir={stack / 'work'}",
                f"{stack / 'upper'}:{stack / 'l1'}:{stack / 'l2'}", str(mnt), timeout=60)
        assert (mnt / "written").read_bytes() == b"kept"


def test_umount_knows_when_the_recorded_daemon_is_gone() -> None:
    """`pyunion umount` waits on the pid in the daemon's record: a live process with that pid
    and start time. A reused pid (other start time) or a zombie counts as gone."""
    from unionfs.mount_cli import _pid_alive, _start_time

    p = subprocess.Popen(["sleep", "30"])
    try:
        start = _start_time(p.pid)
        assert start is not None
        assert _pid_alive(p.pid, start)
        assert not _pid_alive(p.pid, start + 1)
        p.kill()
        deadline = time.monotonic() + 10
        while _pid_alive(p.pid, start) and time.monotonic() < deadline:  # exits, not reaped
            time.sleep(0.01)
        assert not _pid_alive(p.pid, start)
    finally:
        p.kill()
        p.wait(timeout=10)
    assert not _pid_alive(p.pid, start)
