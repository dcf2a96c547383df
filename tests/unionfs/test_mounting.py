"""The mount library (unionfs/mounting.py) called in-process: typed errors, a daemon that is a
fresh interpreter (never a fork of the caller, so a threaded caller such as the gRPC server is
safe), and a failed start that leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.mounting import is_mounted
from tests.processes import children as child_pids
from tests.unionfs.oracle_support import daemon_pids
from unionfs import mounting, procs
from unionfs.options import MountConfig
from unionfs.registry import pid_file


@pytest.fixture
def layers(oracle_base: Path) -> Path:
    for d in ("u", "l", "mnt"):
        (oracle_base / d).mkdir()
    (oracle_base / "l" / "f").write_text("lower\n")
    return oracle_base


def _cfg(s: Path, **kw: object) -> MountConfig:
    return MountConfig(upper=str(s / "u"), lowers=[str(s / "l")], target=str(s / "mnt"), **kw)


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]



def _ppid_and_session(pid: int) -> tuple[int, int]:
    fields = procs.stat_fields(pid)
    assert fields is not None
    return int(fields[1]), int(fields[3])


def test_errors_are_typed_one_line_and_change_nothing(layers: Path) -> None:
    s = layers
    before = sorted(os.listdir(s))
    with pytest.raises(mounting.BadMountConfig, match=r"lower directory .*/nope does not exist"):
        mounting.mount(MountConfig(upper=str(s / "u"), lowers=[str(s / "nope")],
                                   target=str(s / "mnt")))
    with pytest.raises(mounting.BadMountConfig, match="overlaps layer directory"):
        mounting.mount(MountConfig(upper=str(s / "u"), lowers=[str(s / "l")],
                                   target=str(s / "l")))
    with pytest.raises(mounting.UnmountError, match="is not a pyunion mount"):
        mounting.unmount(str(s / "mnt"))
    assert sorted(os.listdir(s)) == before          # no work directory was made
    assert issubclass(mounting.BadMountConfig, mounting.MountError)
    assert issubclass(mounting.DaemonStartError, mounting.MountError)
    assert issubclass(mounting.UnmountError, mounting.MountError)


def test_mount_from_a_thread_of_a_threaded_process(layers: Path) -> None:
    """The gRPC server's situation: other threads run (one holds a lock the whole time) while a
    worker thread mounts. The daemon is a new interpreter running unionfs.daemon in a session of
    its own, not a fork of this process, and not its child (no zombie is left to reap)."""
    s = layers
    stop = threading.Event()
    held = threading.Lock()

    def busy() -> None:
        with held:
            while not stop.is_set():
                sum(range(1000))

    others = [threading.Thread(target=busy, daemon=True) for _ in range(3)]
    for t in others:
        t.start()
    got: list[object] = []
    children = child_pids()
    # fork=True (what the single-threaded `pyunion mount` command asks for) is refused here:
    # this process has other threads, so the daemon is spawned all the same.
    worker = threading.Thread(target=lambda: got.append(mounting.mount(_cfg(s), fork=True)))
    try:
        worker.start()
        worker.join(60)
        assert not worker.is_alive()
        (m,) = got
        assert isinstance(m, mounting.MountedUnion)
        assert (s / "mnt" / "f").read_text() == "lower\n"
        argv = _cmdline(m.pid)
        assert argv[argv.index("-m") + 1] == "unionfs.daemon", argv
        ppid, session = _ppid_and_session(m.pid)
        assert ppid != os.getpid()
        assert session != os.getsid(0)
        assert daemon_pids(s / "mnt") == [m.pid]
        assert m.unmount() == []
        assert not is_mounted(s / "mnt")
        assert not procs.alive(m.pid, m.start)
        assert not os.path.exists(pid_file(m.target))
    finally:
        stop.set()
        for t in others:
            t.join(10)
    assert child_pids() == children      # nothing of ours is left to reap


def test_mounts_from_many_threads_at_once(oracle_base: Path) -> None:
    """Concurrent mounts (containerd prepares several snapshots at once) each get their own
    daemon and readiness line."""
    s = oracle_base
    (s / "l").mkdir()
    (s / "l" / "f").write_text("x")
    cfgs = []
    for i in range(4):
        (s / f"u{i}").mkdir()
        (s / f"m{i}").mkdir()
        cfgs.append(MountConfig(upper=str(s / f"u{i}"), lowers=[str(s / "l")],
                                target=str(s / f"m{i}")))
    done: list[mounting.MountedUnion] = []
    threads = [threading.Thread(target=lambda c=c: done.append(mounting.mount(c)))
               for c in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert len(done) == 4
        assert len({m.pid for m in done}) == 4
        for i in range(4):
            assert (s / f"m{i}" / "f").read_text() == "x"
    finally:
        for m in done:
            m.unmount()


def test_failed_start_leaves_nothing(layers: Path) -> None:
    """Checks pass, the kernel refuses the mount (a max_read that is not a number, which the
    command line would have refused): the reason comes back typed, and no mount, daemon, pid
    record or work directory is left."""
    s = layers
    before = sorted(os.listdir(s))
    children = child_pids()
    cfg = _cfg(s, fuse_options={"max_read=lots"})
    with pytest.raises(mounting.DaemonStartError, match=f"cannot mount {s / 'mnt'}"):
        mounting.mount(cfg)
    assert not is_mounted(s / "mnt")
    assert daemon_pids(s / "mnt") == []
    assert not os.path.exists(pid_file(str(s / "mnt")))
    assert sorted(os.listdir(s)) == before
    assert child_pids() == children


def test_log_file_gets_the_daemons_output(layers: Path) -> None:
    """The daemon's stdout/stderr go to -o log= (opened by the caller), never to the caller's."""
    s = layers
    log = s / "d.log"
    cfg = _cfg(s, fuse_options={"max_read=lots"}, log=str(log))
    with pytest.raises(mounting.DaemonStartError):
        mounting.mount(cfg)
    assert "cannot mount" in log.read_text()


SUBREAPER_SCRIPT = """
import ctypes, os, sys
from unionfs import mounting
from unionfs.options import MountConfig
from tests.processes import children as child_pids
libc = ctypes.CDLL("libc.so.6", use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0          # PR_SET_CHILD_SUBREAPER
u, l, t = sys.argv[1:4]
m = mounting.mount(MountConfig(upper=u, lowers=[l], target=t))
kids = open(f"/proc/self/task/{os.getpid()}/children").read().split()
assert kids == [str(m.pid)], kids               # the daemon was re-parented to us
assert m.unmount() == []
kids = open(f"/proc/self/task/{os.getpid()}/children").read().split()
assert kids == [], kids                         # and its exit was collected: no zombie
print("ok")
"""


def test_a_subreaper_caller_is_left_no_zombie(layers: Path) -> None:
    """`pyunion run` is a child subreaper once its container runs: a daemon re-parented to such
    a caller is reaped by unmount, not left a zombie of it."""
    s = layers
    r = subprocess.run([sys.executable, "-c", SUBREAPER_SCRIPT, str(s / "u"), str(s / "l"),
                        str(s / "mnt")], capture_output=True, text=True, timeout=120, check=False)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
