"""Issue 14: `pyunion umount` never hangs on a stopped daemon (the mount is never stat()ed; a
connection nobody can serve is aborted through /sys/fs/fuse/connections/N/abort, and it says so),
and says at once when the mount is still used in another mount namespace.

The daemon is found by its command line (tests/unionfs/oracle_support.daemon_pids), and the test
stops and continues only that process, which it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.badinput import one_line
from tests.mounting import force_unmount, pyunion
from tests.unionfs.oracle_support import daemon_pids, is_mounted
from tests.unionfs.test_lifecycle import wait_gone


@pytest.fixture
def mnt(oracle_base: Path) -> Iterator[tuple[Path, int]]:
    s = oracle_base
    for d in ("u", "l", "m"):
        (s / d).mkdir()
    (s / "l" / "f").write_text("x\n")
    pyunion("mount", f"{s / 'u'}:{s / 'l'}", str(s / "m"), timeout=60)
    (pid,) = daemon_pids(s / "m")
    try:
        yield s / "m", pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        if is_mounted(s / "m"):
            pyunion("umount", "-l", str(s / "m"), check=False, timeout=60)
        force_unmount(s / "m")
        assert wait_gone([pid]) == []


def test_umount_of_a_stopped_daemon_returns_and_says_so(mnt) -> None:
    target, pid = mnt
    os.kill(pid, signal.SIGSTOP)
    r = pyunion("umount", str(target), check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "stopped" in one_line(r) and str(pid) in r.stderr
    assert not is_mounted(target)
    os.kill(pid, signal.SIGCONT)
    assert wait_gone([pid]) == []   # the connection is gone: the daemon ends when continued


def test_lazy_umount_with_a_request_stuck_on_a_stopped_daemon_aborts_it(mnt) -> None:
    """A process waits in the kernel for the stopped daemon; `umount` is refused as busy,
    `umount -l` detaches, aborts the connection (the waiting process gets ENOTCONN) and says
    so, without waiting for the daemon."""
    target, pid = mnt
    os.kill(pid, signal.SIGSTOP)
    stuck = subprocess.Popen([sys.executable, "-c",
                              (f"import os\ntry:\n os.stat({str(target / 'f')!r})\n"
                              "except OSError as e:\n print(e.errno)")],
                             stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "wait_answer" not in _wchan(stuck.pid):
            time.sleep(0.05)
        assert "wait_answer" in _wchan(stuck.pid)     # waiting for the daemon's reply
        r = pyunion("umount", str(target), check=False, timeout=60)
        assert r.returncode == 1 and "busy" in one_line(r) and "stopped" in r.stderr
        assert is_mounted(target)
        r = pyunion("umount", "-l", str(target), check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "aborted FUSE connection" in one_line(r)
        assert not is_mounted(target)
        out, _ = stuck.communicate(timeout=30)
        assert out.strip() in ("103", "107")   # ECONNABORTED (aborted) or ENOTCONN
    finally:
        stuck.kill()
        stuck.wait()


def _wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except OSError:
        return ""


def test_umount_with_the_mount_in_another_namespace_says_so_at_once(mnt) -> None:
    target, pid = mnt
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                               "sh", "-c", "echo ready; exec sleep 600"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        r = pyunion("umount", str(target), check=False, timeout=20)  # it used to wait 30 s
        line = one_line(r)
        assert r.returncode == 1 and "another mount namespace" in line, line
        assert str(holder.pid) in line
        assert not is_mounted(target)
        assert daemon_pids(target) == [pid]       # still serving the other namespace
    finally:
        holder.kill()
        holder.wait()
    assert wait_gone([pid]) == []   # the last mount went with the namespace: the daemon ends


def test_lazy_umount_of_a_mount_in_use_detaches_and_leaves_the_daemon_serving(mnt) -> None:
    """`-l` with a file open: detached at once, the file still reads (nothing aborted), and the
    daemon exits once the file is closed."""
    target, pid = mnt
    f = open(target / "f")  # noqa: SIM115 - held open across the unmount
    try:
        r = pyunion("umount", "-l", str(target), check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "detached" in one_line(r)
        assert not is_mounted(target)
        assert f.read() == "x\n"
        assert daemon_pids(target) == [pid]
    finally:
        f.close()
    assert wait_gone([pid]) == []


def test_stopped_daemon_umount_never_aborts_a_mount_that_reused_the_connection_number(
        mnt, oracle_base: Path) -> None:
    """A FUSE connection's number (/sys/fs/fuse/connections/N) is its superblock's device number,
    which the kernel hands to the next mount as soon as the superblock dies. `pyunion umount` of
    a stopped daemon waits GRACE_S before aborting that daemon's connection: a mount made in
    between that got the same number must not be the one aborted (a CI run lost a snapshot
    mount of test_containerd_suite this way, ECONNABORTED, while another suite's umount ran)."""
    target, pid = mnt
    dev = os.stat(target).st_dev
    os.kill(pid, signal.SIGSTOP)
    umount = subprocess.Popen([sys.executable, "-m", "unionfs", "umount", str(target)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = oracle_base / "other"
    for d in ("u", "l", "m"):
        (other / d).mkdir(parents=True)
    (other / "l" / "g").write_text("other\n")
    try:
        deadline = time.monotonic() + 20
        while is_mounted(target) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not is_mounted(target)
        pyunion("mount", f"{other / 'u'}:{other / 'l'}", str(other / "m"), timeout=60)
        if os.stat(other / "m").st_dev != dev:
            pytest.skip("the kernel gave the new mount another connection number this time")
        _, err = umount.communicate(timeout=60)
        assert umount.returncode == 0, err
        assert (other / "m" / "g").read_text() == "other\n"    # still served, not aborted
        (other / "m" / "new").write_text("y")
    finally:
        if umount.poll() is None:
            umount.kill()
            umount.wait()
        if is_mounted(other / "m"):
            pyunion("umount", str(other / "m"), check=False, timeout=60)
        force_unmount(other / "m")
