"""Issue 14: what a killed `pyunion run` leaves is found and removed with `pyunion rm NAME`
(a re-run with the same --name says so), and removing an image while its container runs leaves
no layer behind once the container is gone (`pyunion snapshot cleanup`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from snapshotter import images
from tests import imagebuild
from tests.badinput import refused
from tests.runtime import test_run
from tests.runtime.conftest import needs_busybox, needs_root
from tests.runtime.test_run import assert_clean, prun, snapshots
from unionfs import mountinfo, registry

pytestmark = [needs_root, needs_busybox]
store = test_run.store     # the module-scoped store holding bb:1


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(cond, timeout: float = 30) -> bool:
    """Poll COND (a bound for a clean-up that happens in the background, not a timing test)."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def start_run(root: Path, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "unionfs", "run", "--root", str(root), *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n", p.stderr.read() if p.poll() is not None else ""
    return p


def container_pid(root: Path, cid: str) -> int:
    return json.loads((root / "runtime" / "state" / cid / "state.json").read_text())["pid"]


def mounts_under(root: Path) -> list[str]:
    return [m.mountpoint for m in mountinfo.mounts() if str(root) in m.mountpoint]


def test_killed_run_is_cleaned_by_pyunion_rm(store):
    root, _ = store
    run = start_run(root, "--name", "k", "bb:1", "sh", "-c", "echo ready; exec sleep 600")
    ctr = container_pid(root, "k")
    run.kill()                      # SIGKILL: no clean-up of its own
    run.wait()
    try:
        assert alive(ctr) and mounts_under(root)
        line = refused(["run", "--root", str(root), "--name", "k", "bb:1", "true"], 125)
        assert "pyunion rm k" in line, line
        r = subprocess.run([sys.executable, "-m", "unionfs", "rm", "--root", str(root), "k"],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0 and r.stdout == "k\n", r.stderr
        assert wait_until(lambda: not alive(ctr))
        assert mounts_under(root) == []
        assert_clean(root)
        refused(["rm", "--root", str(root), "k"], 1, contains="no container k")
        res = prun(root, "--rm", "--name", "k", "bb:1", "true")
        assert res.returncode == 0, res.stderr
    finally:
        subprocess.run([sys.executable, "-m", "unionfs", "rm", "-f", "--root", str(root), "k"],
                       capture_output=True, timeout=120, check=False)
    assert_clean(root)


def test_rm_of_a_running_container_needs_force(store):
    root, _ = store
    run = start_run(root, "--name", "live", "bb:1", "sh", "-c", "echo ready; exec sleep 600")
    try:
        line = refused(["rm", "--root", str(root), "live"], 1, contains="is running")
        assert str(run.pid) in line
        r = subprocess.run([sys.executable, "-m", "unionfs", "rm", "-f", "--root", str(root),
                            "live"], capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        assert run.wait(timeout=60) == 137      # the container was killed; run cleaned up
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert mounts_under(root) == []
    assert_clean(root)


def test_image_removed_while_its_container_runs_leaves_no_layer(tmp_path):
    root = tmp_path / "store"
    src = imagebuild.build_busybox_image(tmp_path / "img")
    with images.ImageStore(root) as s:
        chains = s.import_path(src, name="gone:1").chain_ids
    run = start_run(root, "--rm", "--name", "c", "gone:1", "sh", "-c",
                    "trap 'exit 3' TERM; echo ready; while true; do sleep 0.05; done")
    try:
        r = subprocess.run([sys.executable, "-m", "unionfs", "image", "rm", "--root", str(root),
                            "gone:1"], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 3
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    left = [n for n, _ in snapshots(root)]
    if left:      # the run's own clean-up may not reclaim them: cleanup must
        r = subprocess.run([sys.executable, "-m", "unionfs", "snapshot", "cleanup", "--root",
                            str(root)], capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
    assert snapshots(root) == []
    assert sorted(os.listdir(root / "snapshots")) == []
    assert not set(chains) & {n for n, _ in snapshots(root)}


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for tid in os.listdir(f"/proc/{p}/task"):
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = {int(x) for x in f.read().split()}
            except OSError:
                continue
            todo += list(kids - out)
            out |= kids
    return out


def test_run_mounts_in_process(store):
    """`pyunion run` mounts its rootfs through the mount library in its own process: the
    union's daemon is the run itself forked (it has one thread then), not a `python -m unionfs
    mount` command, and it is no descendant of the run (re-parented at once, so no zombie waits
    for the run)."""
    root, _ = store
    run = start_run(root, "--rm", "--name", "inproc", "bb:1", "sh", "-c",
                    "echo ready; exec sleep 600")
    try:
        rootfs = str(root / "runtime" / "bundles" / "inproc" / "rootfs")
        rec = registry.daemon_record(rootfs)
        assert rec is not None
        argv = _cmdline(int(rec["pid"]))
        assert argv == _cmdline(run.pid), argv
        assert "mount" not in argv[:4]
        assert int(rec["pid"]) not in _descendants(run.pid)
        for pid in _descendants(run.pid):
            assert "unionfs" not in _cmdline(pid)[1:4], _cmdline(pid)
    finally:
        os.kill(container_pid(root, "inproc"), signal.SIGKILL)
        run.wait(60)
    assert run.returncode != 0
    assert mounts_under(root) == []
    assert_clean(root)
