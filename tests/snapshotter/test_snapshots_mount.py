"""Mounting snapshots: what lands in a snapshot's `fs` (an OCI changeset), read-only unions of
several layers, and mount_snapshot/unmount error handling."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter.errors import InvalidArgument, NotFound, SnapshotterError
from snapshotter.snapshots import Mount, Snapshotter, mount_fstype, mount_snapshot, unmount
from tests.mounting import force_unmount, is_mounted
from tests.processes import children as child_pids
from unionfs.registry import daemon_record


@pytest.fixture
def target(tmp_path) -> Iterator[Path]:
    t = tmp_path / "mnt"
    t.mkdir()
    yield t
    with contextlib.suppress(Exception):
        unmount(t)
    force_unmount(t)


@contextlib.contextmanager
def mounted(mounts: list[Mount], target: Path) -> Iterator[Path]:
    mount_snapshot(mounts, target)
    try:
        yield target
    finally:
        unmount(target)


def layer(sn: Snapshotter, name: str, parent: str, target: Path, change) -> str:
    with mounted(sn.prepare(name + "-a", parent), target):
        change(target)
    sn.commit(name, name + "-a")
    return name


def test_upper_is_an_oci_changeset(sn, target):
    def base(t: Path) -> None:
        (t / "keep").write_text("keep\n")
        (t / "gone").write_text("gone\n")
        (t / "dir" / "sub").mkdir(parents=True)
        (t / "dir" / "old").write_text("old\n")

    layer(sn, "base", "", target, base)
    sn.prepare("ctr", "base")
    with mounted(sn.mounts("ctr"), target):
        assert mount_fstype(target).startswith("fuse")
        os.unlink(target / "gone")
        shutil.rmtree(target / "dir")
        (target / "dir").mkdir()
        (target / "dir" / "new").write_text("new\n")
        (target / "added").write_text("added\n")
        assert sorted(os.listdir(target)) == ["added", "dir", "keep"]
        assert os.listdir(target / "dir") == ["new"]
    up = sn.upper_path("ctr")
    assert (up / ".wh.gone").exists()
    assert (up / "dir" / ".wh..wh..opq").exists()
    assert (up / "added").read_text() == "added\n" and not (up / "keep").exists()
    assert (sn.fs_path("base") / "gone").exists()  # the parent is never touched
    usage = sn.usage("ctr")
    assert usage.inodes == 6  # fs, .wh.gone, dir, dir/.wh..wh..opq, dir/new, added


def test_view_of_several_layers_is_read_only(sn, target):
    layer(sn, "l1", "", target, lambda t: (t / "a").write_text("1\n"))
    layer(sn, "l2", "l1", target, lambda t: (t / "b").write_text("2\n"))
    layer(sn, "l3", "l2", target, lambda t: (os.unlink(t / "a"), (t / "c").write_text("3\n")))
    m = sn.view("v", "l3")
    assert m[0].type == "fuse3.pyunion" and not any(o.startswith("upperdir") for o in
                                                    m[0].options)
    with mounted(m, target):
        assert sorted(os.listdir(target)) == ["b", "c"]
        with pytest.raises(OSError):
            (target / "x").write_text("no")
        with pytest.raises(OSError):
            os.unlink(target / "b")
    assert not is_mounted(target)
    assert sorted(os.listdir(sn.fs_path("v"))) == []


def test_mount_errors(sn, tmp_path, target):
    sn.prepare("a")
    with pytest.raises(NotFound):
        mount_snapshot(sn.mounts("a"), tmp_path / "missing")
    with pytest.raises(InvalidArgument):
        mount_snapshot([Mount("nfs", "x", [])], target)
    with pytest.raises(InvalidArgument):
        mount_snapshot([], target)
    with pytest.raises(SnapshotterError):  # a lower that does not exist: the helper refuses
        mount_snapshot([Mount("fuse3.pyunion", "pyunion",
                              [f"lowerdir={tmp_path}/nope"])], target)
    assert not is_mounted(target)
    unmount(target)  # nothing mounted: a no-op



def test_snapshot_mounts_in_process(sn, target):
    """mount_snapshot calls the mount library: the union's daemon is `python -m unionfs.daemon`
    (not the `python -m unionfs mount` command line, nor a child of it), it is not left as our
    child, and unmount ends it."""
    sn.prepare("base-a")
    sn.commit("base", "base-a")
    children = child_pids()
    with mounted(sn.prepare("top", "base"), target):
        assert mount_fstype(target) == "fuse.pyunion"
        rec = daemon_record(str(target))
        assert rec is not None
        with open(f"/proc/{rec['pid']}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
        assert argv[argv.index("-m") + 1] == "unionfs.daemon", argv
        assert "mount" not in argv
        assert child_pids() == children
    assert not is_mounted(target)
    assert daemon_record(str(target)) is None
