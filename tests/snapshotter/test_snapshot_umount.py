"""Issue 14: `pyunion snapshot umount` touches only the store's own mounts, and says when there
is nothing to unmount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.badinput import refused
from tests.mounting import force_unmount, is_mounted, pyunion


@pytest.fixture
def base(tmp_path):
    (tmp_path / "mnt").mkdir()
    yield tmp_path
    for t in (tmp_path / "mnt", tmp_path / "mnt2"):
        if is_mounted(t):
            subprocess.run(["umount", "-l", str(t)], capture_output=True, timeout=30, check=False)
        force_unmount(t)


def test_a_tmpfs_in_use_is_not_ours_to_unmount(base):
    root, mnt = base / "root", base / "mnt"
    pyunion("snapshot", "--root", str(root), "prepare", "a")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True, timeout=30)
    inside = subprocess.Popen(["sleep", "600"], cwd=mnt)
    try:
        refused(["snapshot", "--root", str(root), "umount", str(mnt)], 1, watch=[root],
                contains="is not a mount of the snapshot store")
        assert is_mounted(mnt) and inside.poll() is None
    finally:
        inside.kill()
        inside.wait()


def test_nothing_mounted_says_so(base):
    root = base / "root"
    pyunion("snapshot", "--root", str(root), "prepare", "a")
    refused(["snapshot", "--root", str(root), "umount", str(base / "mnt")], 1, watch=[root],
            contains="nothing is mounted")


@pytest.mark.parametrize("layers", [1, 2])
def test_another_stores_mount_is_left_alone(base, layers):
    """A bind mount (one layer) or a union (two) of store B is not store A's to unmount."""
    a, b, mnt = base / "a", base / "b", base / "mnt"
    pyunion("snapshot", "--root", str(a), "prepare", "x")
    pyunion("snapshot", "--root", str(b), "prepare", "p")
    if layers == 2:
        pyunion("snapshot", "--root", str(b), "commit", "c", "p")
        pyunion("snapshot", "--root", str(b), "prepare", "p", "c")
    pyunion("snapshot", "--root", str(b), "mount", "p", str(mnt))
    refused(["snapshot", "--root", str(a), "umount", str(mnt)], 1, watch=[a, b],
            contains="is not a mount of the snapshot store")
    assert is_mounted(mnt)
    pyunion("snapshot", "--root", str(b), "umount", str(mnt))
    assert not is_mounted(mnt)


def test_a_store_directory_bound_elsewhere_by_hand_is_still_refused_outside_it(base):
    """A bind of a directory next to the store (same filesystem, not below snapshots/)."""
    root, mnt = base / "root", base / "mnt"
    pyunion("snapshot", "--root", str(root), "prepare", "a")
    (base / "other").mkdir()
    subprocess.run(["mount", "--bind", str(base / "other"), str(mnt)], check=True, timeout=30)
    refused(["snapshot", "--root", str(root), "umount", str(mnt)], 1, watch=[root],
            contains="is not a mount of the snapshot store")
    assert is_mounted(mnt)
    assert Path(mnt).exists()
