"""`pyunion run`: image -> snapshot -> union mount -> container -> commit, end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snapshotter import images
from tests import imagebuild
from tests.runtime.conftest import needs_busybox, needs_root
from unionfs import mountinfo

pytestmark = [needs_root, needs_busybox]


REINSTATED = "back in layer 3\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A store holding bb:1 = the busybox image + a layer that re-adds /etc/deleted-in-image.
    Shared by the module's tests (importing is the slow part); each leaves no active snapshot."""
    tmp_path = tmp_path_factory.mktemp("run")
    root = tmp_path / "store"
    src = imagebuild.build_busybox_image(
        tmp_path / "img", extra_layers=[{"etc/deleted-in-image": REINSTATED}])
    with images.ImageStore(root) as s:
        rec = s.import_path(src, name="bb:1")
        lowers = {c: imagebuild.tree_snapshot(s.snapshots.fs_path(c)) for c in rec.chain_ids}
    yield root, lowers
    leftover = [m.mountpoint for m in mountinfo.mounts()
                if str(root) in m.mountpoint or str(root) in m.source]
    for mp in leftover:  # never leave a mount behind, even when a test failed
        subprocess.run(["fusermount3", "-uz", mp], check=False, timeout=10)
    assert leftover == []


def prun(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unionfs", "run", "--root", str(root), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def snapshots(root: Path) -> list[tuple[str, str]]:
    with images.ImageStore(root) as s:
        return sorted((i.name, i.kind.value) for i in s.snapshots.walk())


def assert_clean(root: Path) -> None:
    for sub in ("bundles", "state"):
        d = root / "runtime" / sub
        assert not d.exists() or list(d.iterdir()) == []
    assert all(kind == "committed" for _, kind in snapshots(root))


def test_run_rm_commit_and_rerun(store):
    root, lowers = store
    change = "echo hi > /new; rm /etc/deleted-in-image"
    res = prun(root, "--rm", "bb:1", "sh", "-c", change)
    assert res.returncode == 0, res.stderr
    assert_clean(root)

    res = prun(root, "--rm", "--commit", "bb:2", "bb:1", "sh", "-c", change)
    assert res.returncode == 0, res.stderr
    assert "committed bb:2" in res.stderr
    assert_clean(root)
    res = prun(root, "--rm", "bb:2", "sh", "-c", "cat /new; test ! -e /etc/deleted-in-image")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr
    # bb:1 is unchanged by both runs (--rm alone discards, --commit makes a new image)
    res = prun(root, "--rm", "bb:1", "sh", "-c", "test ! -e /new && cat /etc/deleted-in-image")
    assert (res.returncode, res.stdout) == (0, REINSTATED)
    with images.ImageStore(root) as s:  # the lower layers were never written
        for chain, tree in lowers.items():
            assert imagebuild.tree_snapshot(s.snapshots.fs_path(chain)) == tree
        assert len(s.resolve("bb:2").chain_ids) == len(s.resolve("bb:1").chain_ids) + 1
    assert_clean(root)


def test_run_options_exit_status_and_kept_snapshot(store):
    """Without --rm the snapshot (with the container's changes) stays, like docker's container."""
    root, _ = store
    res = prun(root, "-u", "app", "-w", "/home/app", "-e", "FOO=bar baz",
               "--hostname", "hh", "--name", "keep", "bb:1",
               "sh", "-c", "id -u; id -G; pwd; echo $FOO; hostname; touch /home/app/f; exit 7")
    assert res.returncode == 7, res.stderr
    assert res.stdout.splitlines() == ["1000", "1000", "/home/app", "bar baz", "hh"]
    assert ("run-keep", "active") in snapshots(root)
    with images.ImageStore(root) as s:
        assert (s.snapshots.upper_path("run-keep") / "home/app/f").exists()
        s.snapshots.remove("run-keep")
    assert_clean(root)


@pytest.mark.parametrize("args, message", [
    (["nosuch:image"], "not found"),
    (["-u", "ghost", "bb:1", "true"], "unable to find user ghost"),
    (["bb:1", "nosuchprog"], "executable file not found"),
])
def test_run_errors_leave_nothing(store, args, message):
    root, _ = store
    res = prun(root, *args)
    assert res.returncode == 125
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert_clean(root)


def test_run_forwards_sigterm(store):
    root, _ = store
    proc = subprocess.Popen(
        [sys.executable, "-m", "unionfs", "run", "--root", str(root), "--rm", "bb:1", "sh", "-c",
         "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_clean(root)
