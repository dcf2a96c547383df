"""`image commit`: an active snapshot's upper becomes a new layer of a new image.

The round trip goes through a real pyunion mount: import, prepare, change files through the
mount, commit, export, validate with umoci, re-import, and compare with the mount's tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter.digest import chain_id
from snapshotter.errors import AlreadyExists, FailedPrecondition, NotFound
from snapshotter.images import IMAGE_LABEL, ImageStore
from snapshotter.snapshots import Kind, mount_snapshot, unmount
from tests.imagebuild import build_busybox_image, tree_snapshot
from tests.mounting import force_unmount, pyunion

root_only = pytest.mark.root   # mounts, chown
TOOLS = pytest.mark.skipif(not shutil.which("umoci"), reason="umoci validates exports")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return build_busybox_image(tmp_path_factory.mktemp("img") / "oci", "oci", name="base:1")


@pytest.fixture
def store(tmp_path, image) -> Iterator[ImageStore]:
    with ImageStore(tmp_path / "root") as st:
        st.import_path(image)
        yield st


@contextlib.contextmanager
def mounted_snapshot(st: ImageStore, key: str, target: Path) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    mount_snapshot(st.snapshots.mounts(key), target)
    try:
        yield target
    finally:
        try:
            unmount(target)
        finally:
            force_unmount(target)


def change_directly(upper: Path) -> None:
    """Changes written straight into the upper in OCI form (what the union mount writes)."""
    (upper / "etc").mkdir()
    (upper / "etc/added").write_text("added\n")
    (upper / "etc/.wh.motd").write_bytes(b"")
    for p in (upper / "etc", upper / "etc/added"):
        os.utime(p, (1_650_000_000, 1_650_000_000))


def test_commit_appends_a_layer(store):
    base = store.resolve("base:1")
    store.snapshots.prepare("c", base.top, labels={IMAGE_LABEL: "base:1"})
    change_directly(store.snapshots.upper_path("c"))
    rec = store.commit("c", "new:1", message="added a file")
    assert rec.diff_ids[:-1] == base.diff_ids and len(rec.diff_ids) == 3
    assert rec.config["rootfs"]["diff_ids"] == rec.diff_ids
    assert rec.config["history"][-1]["comment"] == "added a file"
    assert rec.manifest["layers"][:-1] == base.manifest["layers"]
    assert rec.manifest["layers"][-1]["mediaType"].endswith("tar+gzip")
    assert rec.chain_ids[-1] == chain_id(base.top, rec.diff_ids[-1])
    top = store.snapshots.fs_path(rec.top)
    assert store.snapshots.stat(rec.top).kind is Kind.COMMITTED
    assert (top / "etc/added").read_text() == "added\n" and (top / "etc/.wh.motd").exists()
    assert store.snapshots.stat("c").kind is Kind.ACTIVE   # the container's snapshot stays
    assert store.resolve("new:1").manifest_digest == rec.manifest_digest


def test_same_changes_same_layer_digest(store):
    top = store.resolve("base:1").top
    for key in ("a", "b"):
        store.snapshots.prepare(key, top, labels={IMAGE_LABEL: "base:1"})
        change_directly(store.snapshots.upper_path(key))
    a, b = store.commit("a", "img:a"), store.commit("b", "img:b")
    assert a.layers[-1]["digest"] == b.layers[-1]["digest"]
    assert a.chain_ids == b.chain_ids


def test_commit_refusals_leave_store_unchanged(store):
    base = store.resolve("base:1")
    store.snapshots.prepare("c", base.top, labels={IMAGE_LABEL: "base:1"})
    store.snapshots.prepare("unrelated", base.chain_ids[0])
    store.snapshots.prepare("nolabel", base.top)
    before = (sorted(store.content.list()), [r.name for r in store.list()])
    with pytest.raises(FailedPrecondition, match="committed"):
        store.commit(base.top, "x")
    with pytest.raises(AlreadyExists):
        store.commit("c", "base:1")
    with pytest.raises(FailedPrecondition, match="not based on image|no image ends"):
        store.commit("unrelated", "x")
    with pytest.raises(NotFound):
        store.commit("missing", "x")
    assert (sorted(store.content.list()), [r.name for r in store.list()]) == before
    # without the label, the image whose top is the parent is used
    assert store.commit("nolabel", "x").diff_ids[:2] == base.diff_ids


def mutate_through_mount(m: Path) -> None:
    """Add, modify, delete, replace a directory, plus links, modes and owners."""
    (m / "etc/added").write_text("added through the mount\n")
    with open(m / "etc/passwd", "a") as f:
        f.write("extra:x:1001:1001::/home/extra:/bin/sh\n")
    (m / "etc/motd").unlink()
    shutil.rmtree(m / "opt/old")
    (m / "opt/old").mkdir()
    (m / "opt/old/replaced").write_text("replaced dir\n")
    shutil.rmtree(m / "usr/share")
    os.link(m / "etc/added", m / "etc/added-hardlink")
    os.symlink("/etc/passwd", m / "etc/pw-symlink")
    (m / "home/app/owned").write_text("app's\n")
    os.chown(m / "home/app/owned", 1000, 1000)
    os.chmod(m / "bin/busybox", 0o4755)
    os.mkfifo(m / "tmp/fifo")


@root_only
@TOOLS
def test_round_trip_through_pyunion_mount(store, tmp_path):
    base = store.resolve("base:1")
    store.snapshots.prepare("ctr", base.top, labels={IMAGE_LABEL: "base:1"})
    with mounted_snapshot(store, "ctr", tmp_path / "mnt") as m:
        assert not (m / "etc/deleted-in-image").exists()
        mutate_through_mount(m)
        expected = tree_snapshot(m)
    assert "/opt/old/a" not in expected and "/etc/motd" not in expected
    assert expected["/etc/added"][0] == "file" and "/usr/share" not in expected

    r = pyunion("image", "commit", "ctr", "rt:1", "-m", "round trip", "--root", str(store.root))
    assert r.stdout.startswith("committed rt:1 ")
    r = pyunion("image", "export", "rt:1", str(tmp_path / "out"), "--root", str(store.root))
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path / 'out'}:1",
                    str(tmp_path / "bundle")], check=True, capture_output=True, timeout=120)
    assert tree_snapshot(tmp_path / "bundle/rootfs") == expected
    bundle_cfg = json.loads((tmp_path / "bundle/config.json").read_text())
    assert bundle_cfg["process"]["args"] == ["/bin/sh"]

    with ImageStore(tmp_path / "root2") as st2:
        again = st2.import_path(tmp_path / "out")
        assert again.name == "rt:1" and again.diff_ids == store.resolve("rt:1").diff_ids
        st2.snapshots.view("check", again.top)
        with mounted_snapshot(st2, "check", tmp_path / "mnt2") as m2:
            assert tree_snapshot(m2) == expected


def test_commit_uncompressed_layer(store):
    base = store.resolve("base:1")
    store.snapshots.prepare("c", base.top, labels={IMAGE_LABEL: "base:1"})
    change_directly(store.snapshots.upper_path("c"))
    r = pyunion("image", "commit", "c", "plain:1", "--compression", "none", "--root",
                str(store.root))
    assert r.stdout.startswith("committed plain:1")
    rec = store.resolve("plain:1")
    assert rec.layers[-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert rec.layers[-1]["digest"] == rec.diff_ids[-1]
