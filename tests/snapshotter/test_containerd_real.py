"""The real containerd (Debian's 1.6) using pyunion as its proxy snapshotter.

Each containerd here is private (tests/containerd_env.py): own root, state, socket, config with
`[proxy_plugins.pyunion]`, and `pyunion snapshotter serve` on a fresh store shared with
`pyunion image`. Images are built offline (tests/imagebuild.py); the zero-unpack case pulls
through containerd's CRI plugin (as the kubelet does) from a loopback registry.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter.images import ImageStore
from snapshotter.proxy_store import PREFIX, SNAPSHOT_REF, ZERO_UNPACK_LABEL, split_internal
from snapshotter.snapshots import Kind, Snapshotter
from tests.containerd_env import Containerd, have_containerd, running_containerd
from tests.imagebuild import DEFAULT_NAME, build_busybox_image

pytestmark = pytest.mark.skipif(have_containerd() is not None,
                                reason=have_containerd() or "")
IMAGE = DEFAULT_NAME
SN = ("--snapshotter", "pyunion")


@pytest.fixture(scope="module")
def ctrd(tmp_path_factory) -> Iterator[Containerd]:
    """One containerd for the module, with the busybox image imported through pyunion."""
    base = tmp_path_factory.mktemp("ctrd")
    tar = build_busybox_image(base / "busybox.tar", "oci-tar")
    with running_containerd(base / "c") as c:
        c.ctr("images", "import", *SN, str(tar))
        yield c


def containerd_rows(store_root: Path) -> dict[str, object]:
    """containerd's snapshots in the store, by the key containerd uses for them."""
    with Snapshotter(store_root) as sn:
        return {split_internal(i.name)[1]: i for i in sn.walk() if i.name.startswith(PREFIX)}


def test_import_then_run_sees_the_image(ctrd):
    r = ctrd.ctr("run", *SN, "--rm", IMAGE, "run1", "sh", "-c",
                 "cat /etc/motd; ls /opt/old; test -e /etc/deleted-in-image || echo gone;"
                 " cat /usr/share/hello.txt >/dev/null && echo hello-ok")
    assert r.stdout.splitlines() == ["built by tests/imagebuild.py", "new", "gone", "hello-ok"]
    # the image's two layers are committed snapshots in the store, stacked by chain ID
    rows = containerd_rows(ctrd.store_root)
    committed = [i for i in rows.values() if i.kind is Kind.COMMITTED]
    assert len(committed) == 2
    # --rm removed the container's snapshot from containerd's view (the backend copy goes at
    # the next garbage collection: test_image_rm_and_gc_keep_pyunions_images)
    assert "run1" not in ctrd.ctr("snapshots", *SN, "ls").stdout


def test_files_written_in_the_container_land_in_the_upper(ctrd):
    ctrd.ctr("run", *SN, IMAGE, "writer", "sh", "-c",
             "echo from-container > /written; rm /etc/motd")
    try:
        rows = containerd_rows(ctrd.store_root)
        key = next(k for k in rows if k.endswith("/writer"))
        assert rows[key].kind is Kind.ACTIVE
        with Snapshotter(ctrd.store_root) as sn:
            upper = sn.upper_path(rows[key].name)
        assert (upper / "written").read_text() == "from-container\n"
        assert (upper / "etc" / ".wh.motd").exists()       # the delete is a whiteout
        lowers = [r for r in rows.values() if r.kind is Kind.COMMITTED]
        for low in lowers:                                  # never written into a lower
            with Snapshotter(ctrd.store_root) as sn:
                fs = sn.fs_path(low.name)
            assert not (fs / "written").exists()
    finally:
        ctrd.ctr("containers", "rm", "writer", check=False)


def test_ctr_snapshots_commands(ctrd):
    ctrd.ctr("snapshots", *SN, "prepare", "manual", _top_chain(ctrd))
    try:
        ls = ctrd.ctr("snapshots", *SN, "ls").stdout
        assert any(line.split()[:1] == ["manual"] and "Active" in line
                   for line in ls.splitlines()), ls
        tree = ctrd.ctr("snapshots", *SN, "tree").stdout
        assert "manual" in tree and _top_chain(ctrd) in tree
        info = json.loads(ctrd.ctr("snapshots", *SN, "info", "manual").stdout)
        assert info["Name"] == "manual" and info["Parent"] == _top_chain(ctrd)
        usage = ctrd.ctr("snapshots", *SN, "usage", _top_chain(ctrd)).stdout
        assert _top_chain(ctrd) in usage
        mounts = ctrd.ctr("snapshots", *SN, "mounts", "/mnt/x", "manual").stdout
        assert "fuse3.pyunion" in mounts and "lowerdir=" in mounts and "upperdir=" in mounts
        ctrd.ctr("snapshots", *SN, "label", "manual", "containerd.io/snapshot/who=test")
        rows = containerd_rows(ctrd.store_root)
        key = next(k for k in rows if k.endswith("/manual"))
        assert rows[key].labels.get("containerd.io/snapshot/who") == "test"
        r = ctrd.ctr("snapshots", *SN, "rm", _top_chain(ctrd), check=False)
        assert r.returncode != 0      # it has children
    finally:
        ctrd.ctr("snapshots", *SN, "rm", "manual", check=False)


def _top_chain(ctrd: Containerd) -> str:
    ls = ctrd.ctr("snapshots", *SN, "ls").stdout.splitlines()[1:]
    committed = [line.split() for line in ls if line.split()[-1] == "Committed"]
    parents = {p[1] for p in committed if len(p) == 3}
    tops = [p[0] for p in committed if p[0] not in parents]
    assert len(tops) == 1, ls
    return tops[0]


def test_image_rm_and_gc_keep_pyunions_images(ctrd, tmp_path):
    """containerd's GC removes its own snapshots and never pyunion's (which it never sees)."""
    own = build_busybox_image(tmp_path / "own", "oci", extra_layers=[{"own": "mine\n"}])
    with ImageStore(ctrd.store_root) as st:
        rec = st.import_path(own, "pyunion-own:1")
    tar = build_busybox_image(tmp_path / "other.tar", "oci-tar", name="gc-test/other:1",
                              extra_layers=[{"other": "theirs\n"}])
    ctrd.ctr("images", "import", *SN, str(tar))
    before = containerd_rows(ctrd.store_root)
    assert len(before) >= 3
    ctrd.ctr("images", "rm", "--sync", "gc-test/other:1")
    after = containerd_rows(ctrd.store_root)
    # only the module's busybox image (still referenced) is left: the other image's layers and
    # every removed container's snapshot went at this collection
    assert sorted(i.kind.value for i in after.values()) == ["committed", "committed"]
    with ImageStore(ctrd.store_root) as st:
        again = st.resolve("pyunion-own:1")
        assert again.chain_ids == rec.chain_ids
        for chain in rec.chain_ids:
            assert st.snapshots.stat(chain).kind is Kind.COMMITTED
            assert st.snapshots.fs_path(chain).is_dir()


def test_containers_started_at_once(ctrd):
    """Six `ctr run` at once: parallel Prepare/Mounts/Remove through one server."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        # The task exits 0 (ctr would raise otherwise), yet once in CI ctr 1.6 lost the tail of
        # a task's stdout when the task ended at once: the pause lets its IO copy drain.
        return ctrd.ctr("run", *SN, "--rm", IMAGE, f"par{i}", "sh", "-c",
                        f"echo {i} > /mine; cat /mine /etc/motd; sleep 0.5").stdout
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(one, range(6)))
    assert outs == [f"{i}\nbuilt by tests/imagebuild.py\n" for i in range(6)]
    db = sqlite3.connect(ctrd.store_root / "metadata.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


def test_restart_keeps_running_containers_and_containerd_reconnects(tmp_path):
    tar = build_busybox_image(tmp_path / "busybox.tar", "oci-tar")
    with running_containerd(tmp_path / "c") as c:
        c.ctr("images", "import", *SN, str(tar))
        c.ctr("run", "-d", *SN, IMAGE, "long", "sh", "-c", "echo up > /state; sleep 600")
        try:
            before = containerd_rows(c.store_root)
            c.snapshotter.stop()
            # the running container keeps its root filesystem while the server is away
            r = c.ctr("tasks", "exec", "--exec-id", "e1", "long", "sh", "-c",
                      "cat /state; echo during > /during; cat /etc/motd")
            assert r.stdout.splitlines() == ["up", "built by tests/imagebuild.py"]
            assert c.ctr("snapshots", *SN, "ls", check=False, timeout=60).returncode != 0
            c.snapshotter.start()
            deadline = time.monotonic() + 90
            while True:              # containerd's gRPC client redials with backoff
                r = c.ctr("snapshots", *SN, "ls", check=False, timeout=60)
                if r.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert r.returncode == 0, r.stderr
            assert any(line.startswith("long ") for line in r.stdout.splitlines())
            assert containerd_rows(c.store_root).keys() == before.keys()    # nothing lost
            r = c.ctr("tasks", "exec", "--exec-id", "e2", "long", "cat", "/during")
            assert r.stdout == "during\n"
            r = c.ctr("run", *SN, "--rm", IMAGE, "after", "cat", "/etc/motd")
            assert r.stdout == "built by tests/imagebuild.py\n"
        finally:
            c.ctr("tasks", "kill", "-s", "SIGKILL", "long", check=False)
            time.sleep(0.5)
            c.ctr("tasks", "delete", "-f", "long", check=False)
            c.ctr("containers", "rm", "long", check=False)


def test_zero_unpack_of_an_image_pyunion_holds(tmp_path):
    """Pulled through CRI (as the kubelet does): containerd labels each layer's Prepare with
    containerd.io/snapshot.ref; pyunion holds every layer already, so none is fetched or
    unpacked, and a container runs from it."""
    from tests.cri import pull_image
    from tests.oci_registry import serving_registry
    layout = build_busybox_image(tmp_path / "layout", "oci")
    store = tmp_path / "store"
    with ImageStore(store) as st:
        rec = st.import_path(layout, "busybox:pyunion")
    with serving_registry(layout) as reg, \
            running_containerd(tmp_path / "c", store, cri_registry=reg.address) as c:
        ref = f"{reg.address}/pyunion-test/busybox:latest"
        pull_image(c.sock, ref)
        layer_digests = {d["digest"] for d in json.loads(
            (layout / "blobs/sha256" / rec.manifest_digest[7:]).read_text())["layers"]}
        assert not layer_digests & set(reg.blob_gets()), "a layer was fetched"
        rows = containerd_rows(store)
        assert sorted(rows) == sorted(f"k8s.io/pyunion/{c}" for c in rec.chain_ids)
        for name, info in rows.items():
            chain = name.rsplit("/", 1)[1]
            assert info.kind is Kind.COMMITTED
            assert info.labels[SNAPSHOT_REF] == chain
            assert info.labels[ZERO_UNPACK_LABEL] == chain    # made from pyunion's layer
        assert not any("extract" in k for k in rows)          # no extraction snapshot ever
        r = c.ctr("run", *SN, "--rm", ref, "zero1", "cat", "/etc/motd", namespace="k8s.io")
        assert r.stdout == "built by tests/imagebuild.py\n"
