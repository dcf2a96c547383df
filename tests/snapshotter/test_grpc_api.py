"""`pyunion snapshotter serve`: containerd's snapshot service over gRPC, driven by a client.

The server runs in its own process on a fresh store (grpc_support); containerd itself drives it
in tests/snapshotter/test_containerd_real.py.
"""

from __future__ import annotations

import filecmp
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from snapshotter import errors
from snapshotter.grpc_client import SnapshotsClient, Unimplemented
from snapshotter.grpcapi import snapshots_pb2, snapshots_pb2_grpc
from snapshotter.images import ImageStore
from snapshotter.proxy_store import SNAPSHOT_REF, ZERO_UNPACK_LABEL
from snapshotter.snapshots import Kind, Snapshotter, mount_snapshot, unmount
from tests.imagebuild import build_busybox_image
from tests.snapshotter.grpc_support import REPO, running_server


@pytest.fixture
def server(tmp_path):
    sock = tmp_path / "sn.sock"
    with running_server(sock, tmp_path / "root") as srv:
        yield srv


def client(srv, ns: str | None = "default") -> SnapshotsClient:
    return SnapshotsClient(srv.sock, ns)


def test_generated_modules_match_the_proto_files(tmp_path):
    """The committed *_pb2*.py are what grpcio-tools makes of our .proto files today."""
    out = tmp_path / "gen"
    out.mkdir()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".",
                    f"--python_out={out}", f"--grpc_python_out={out}",
                    "snapshotter/grpcapi/mount.proto", "snapshotter/grpcapi/snapshots.proto"],
                   cwd=REPO, check=True, timeout=120)
    for name in ("mount_pb2.py", "snapshots_pb2.py", "snapshots_pb2_grpc.py"):
        assert filecmp.cmp(out / "snapshotter/grpcapi" / name,
                           REPO / "snapshotter/grpcapi" / name, shallow=False), \
            f"{name} is stale: run scripts/gen_proto.sh"


def test_wire_names_are_containerds():
    """containerd dials this exact service and method path."""
    svc = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert svc.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert [m.name for m in svc.methods] == ["Prepare", "View", "Mounts", "Commit", "Remove",
                                              "Stat", "Update", "List", "Usage", "Cleanup"]
    info = snapshots_pb2.Info.DESCRIPTOR
    assert {f.name: f.number for f in info.fields} == {
        "name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6}


def test_errors_map_to_containerd_codes(server):
    with client(server) as c:
        with pytest.raises(errors.NotFound):
            c.stat("nope")
        c.prepare("a", "")
        with pytest.raises(errors.AlreadyExists):
            c.prepare("a", "")
        with pytest.raises(errors.InvalidArgument):      # parent not committed
            c.prepare("b", "a")
        c.commit("base", "a")
        c.prepare("child", "base")
        with pytest.raises(errors.FailedPrecondition) as e:   # remove with a child
            c.remove("base")
        assert "remove" in str(e.value)
        with pytest.raises(errors.FailedPrecondition):   # mounts of a committed snapshot
            c.mounts("base")
        c.view("v", "base")
        with pytest.raises(errors.FailedPrecondition):   # commit a view
            c.commit("vv", "v")
        with pytest.raises(errors.InvalidArgument):      # immutable field path
            c.update(c.stat("base"), "parent")
        with pytest.raises(errors.InvalidArgument):      # bad filter
            list(c.walk("kind=="+'"'))


def test_rebase_is_unimplemented(server):
    stub = snapshots_pb2_grpc.SnapshotsStub(grpc.insecure_channel(f"unix:{server.sock}"))
    md = (("containerd-namespace", "default"),)
    stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(key="k"), metadata=md)
    with pytest.raises(grpc.RpcError) as e:
        stub.Commit(snapshots_pb2.CommitSnapshotRequest(name="n", key="k", parent="other"),
                    metadata=md)
    assert e.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert Unimplemented.__mro__[1] is errors.SnapshotterError


def test_mount_shapes(server):
    with client(server) as c:
        m = c.prepare("a", "")
        assert m[0].type == "bind" and "rw" in m[0].options
        c.commit("l1", "a")
        m = c.view("v1", "l1")
        assert m[0].type == "bind" and "ro" in m[0].options
        m = c.prepare("b", "l1")
        assert m[0].type == "fuse3.pyunion"
        opts = dict(o.split("=", 1) for o in m[0].options)
        assert set(opts) == {"lowerdir", "upperdir", "workdir"}


def test_namespaces_are_separate(server):
    with client(server, "one") as a, client(server, "two") as b, client(server, None) as gc:
        a.prepare("same", "")
        b.prepare("same", "", {"who": "b"})
        assert a.stat("same").labels == {} and b.stat("same").labels == {"who": "b"}
        a.prepare("only-a", "")
        with pytest.raises(errors.NotFound):
            b.stat("only-a")
        assert sorted(i.name for i in b.walk()) == ["same"]
        # containerd's garbage collector lists and removes without a namespace
        assert sorted(i.name for i in gc.walk()) == ["only-a", "same", "same"]
        a.prepare("parented", "")
        with pytest.raises(errors.NotFound):                # b cannot use a's as a parent
            b.prepare("child", "parented")
        gc.remove("only-a")
        with pytest.raises(errors.NotFound):
            a.stat("only-a")
        with pytest.raises(errors.FailedPrecondition):   # ambiguous without a namespace
            gc.remove("same")
        # without a namespace (containerd 1.6 sends none for ctr's calls): the namespace at
        # the head of containerd's key, else the shared space, which every namespace sees
        gc.prepare("one/7/c1", "")
        assert [i.name for i in a.walk("name==one/7/c1")] == ["one/7/c1"]
        assert list(b.walk("name==one/7/c1")) == []
        gc.prepare("x", "")
        assert gc.stat("x").kind is Kind.ACTIVE and a.stat("x").kind is Kind.ACTIVE
        assert list(a.walk("name==x")) == []
        with pytest.raises(errors.InvalidArgument):
            client(server, "bad/ns").stat("same")


def test_list_never_shows_pyunions_own_snapshots(server):
    """containerd's GC removes whatever it lists and does not own: pyunion's stay unlisted."""
    with Snapshotter(server.root) as own:
        own.prepare("own-a", "")
        own.commit("own", "own-a")
    with client(server) as c, client(server, None) as gc:
        c.prepare("ctr", "")
        assert [i.name for i in c.walk()] == ["ctr"]
        assert [i.name for i in gc.walk()] == ["ctr"]
        with pytest.raises(errors.NotFound):
            c.stat("own")
        with pytest.raises(errors.NotFound):
            gc.remove("own")
    with Snapshotter(server.root) as own:
        assert own.stat("own").kind is Kind.COMMITTED


def test_list_streams_batches_and_filters(server):
    with client(server) as c:
        for i in range(130):
            c.prepare(f"k{i:03d}", "", {"n": str(i % 2)})
    stub = snapshots_pb2_grpc.SnapshotsStub(grpc.insecure_channel(f"unix:{server.sock}"))
    md = (("containerd-namespace", "default"),)
    batches = list(stub.List(snapshots_pb2.ListSnapshotsRequest(), metadata=md))
    assert [len(b.info) for b in batches] == [100, 30]
    odd = list(stub.List(snapshots_pb2.ListSnapshotsRequest(filters=["labels.n==1"]),
                         metadata=md))
    assert sum(len(b.info) for b in odd) == 65


def test_parent_equals_empty_selects_parentless(sn):
    """containerd's remote-snapshot lookup sends `parent==""` for a base layer: it must match
    snapshots without a parent, as containerd's own filter adaptor does."""
    sn.prepare("a", "")
    sn.commit("base", "a")
    sn.prepare("child", "base")
    assert sorted(i.name for i in sn.walk('parent==""')) == ["base"]
    assert sorted(i.name for i in sn.walk('name==child,parent=="base"')) == ["child"]


def test_update_labels_and_usage(server, tmp_path):
    with client(server) as c:
        c.prepare("a", "")
        info = c.stat("a")
        info.labels = {"x": "1", "y": "2"}
        info = c.update(info)
        assert info.labels == {"x": "1", "y": "2"}
        info.labels = {"x": ""}
        assert c.update(info, "labels.x").labels == {"y": "2"}
        target = tmp_path / "mnt"
        target.mkdir()
        mount_snapshot(c.mounts("a"), target)
        try:
            (target / "f").write_bytes(b"z" * 8192)
        finally:
            unmount(target)
        c.commit("done", "a")
        u = c.usage("done")
        assert u.size >= 8192 and u.inodes == 2
        c.cleanup()


def _import_busybox(root: Path, tmp: Path):
    img = build_busybox_image(tmp / "img", "oci")
    with ImageStore(root) as st:
        return st.import_path(img, "busybox:zero")


def test_zero_unpack_commits_pyunions_layer_under_containerds_name(server, tmp_path):
    rec = _import_busybox(server.root, tmp_path)
    base, top = rec.chain_ids
    with client(server) as c:
        with pytest.raises(errors.AlreadyExists):
            c.prepare("default/1/extract-1 " + base, "", {SNAPSHOT_REF: base})
        # what containerd's metadata store then asks (core/metadata/snapshot.go)
        found = list(c.walk(f'labels."{SNAPSHOT_REF}"=={base},parent==""'))
        zbase = f"default/pyunion/{base}"
        assert [(i.name, i.kind, i.parent) for i in found] == [(zbase, Kind.COMMITTED, "")]
        assert found[0].labels[ZERO_UNPACK_LABEL] == base
        with pytest.raises(errors.AlreadyExists):
            c.prepare("default/3/extract-2 " + top, zbase, {SNAPSHOT_REF: top})
        ztop = f"default/pyunion/{top}"
        assert [i.name for i in c.walk(f'labels."{SNAPSHOT_REF}"=={top},parent=="{zbase}"')] \
            == [ztop]
        # a second Prepare for the same layer finds it committed already
        with pytest.raises(errors.AlreadyExists):
            c.prepare("default/5/extract-3 " + base, "", {SNAPSHOT_REF: base})
        # no extraction snapshot was ever left behind, and a container sees the image
        assert sorted(i.name for i in c.walk()) == sorted([zbase, ztop])
        target = tmp_path / "rootfs"
        target.mkdir()
        mount_snapshot(c.view("default/6/c1", ztop), target)
        try:
            assert (target / "etc/motd").read_text() == "built by tests/imagebuild.py\n"
            assert not (target / "etc/deleted-in-image").exists()
            assert sorted(os.listdir(target / "opt/old")) == ["new"]
        finally:
            unmount(target)
        # pyunion's image is untouched by containerd's removal of its copies
        c.remove("default/6/c1")
        c.remove(ztop)
        c.remove(zbase)
    with ImageStore(server.root) as st:
        assert st.resolve("busybox:zero").chain_ids == [base, top]
        assert st.snapshots.stat(top).kind is Kind.COMMITTED


def test_zero_unpack_only_for_layers_pyunion_holds(server):
    with client(server) as c:
        m = c.prepare("default/1/extract-1 sha256:" + "ab" * 32, "",
                      {SNAPSHOT_REF: "sha256:" + "ab" * 32})
        assert m[0].type == "bind"          # an ordinary unpack: containerd applies the layer


def test_concurrent_prepare_commit_remove_keep_the_store_consistent(server):
    """containerd unpacks layers in parallel: 8 clients x 25 rounds of Prepare/Commit/Remove,
    including races on the same names, leave a consistent store."""
    failures: list[BaseException] = []
    committed: set[str] = set()
    lock = threading.Lock()

    def worker(n: int) -> None:
        rnd = random.Random(n)
        try:
            with client(server) as c:
                for i in range(25):
                    key = f"w{n}-{i}"
                    parent = ""
                    with lock:
                        pool = sorted(committed)
                    if pool and rnd.random() < 0.5:
                        parent = rnd.choice(pool)
                    try:
                        c.prepare(key, parent)
                    except (errors.NotFound, errors.InvalidArgument):
                        continue                     # parent removed meanwhile
                    name = f"shared-{rnd.randrange(6)}" if rnd.random() < 0.3 else f"c-{key}"
                    try:
                        c.commit(name, key)
                        with lock:
                            committed.add(name)
                    except errors.AlreadyExists:
                        c.remove(key)
                    if rnd.random() < 0.4:
                        victim = rnd.choice(sorted(committed))
                        try:
                            c.remove(victim)
                            with lock:
                                committed.discard(victim)
                        except (errors.NotFound, errors.FailedPrecondition):
                            pass
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures
    with client(server) as c:
        infos = {i.name: i for i in c.walk()}
        for info in infos.values():
            assert info.parent == "" or infos[info.parent].kind is Kind.COMMITTED
        c.cleanup()
    db = sqlite3.connect(server.root / "metadata.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = {str(r[0]) for r in db.execute("SELECT id FROM snapshots")}
    db.close()
    assert set(os.listdir(server.root / "snapshots")) == ids   # one dir per row, no strays


def test_serve_refuses_a_live_socket_and_bad_usage(server):
    cmd = [sys.executable, "-m", "unionfs", "snapshotter"]
    r = subprocess.run([*cmd, "serve", "--address", str(server.sock), "--root",
                        str(server.root)], check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1 and "another server is listening" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*cmd, "serve"], check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "--address" in r.stderr
    with client(server) as c:        # the running server was not disturbed
        c.prepare("still-here", "")


def test_cleanup_spares_a_directory_still_being_built(tmp_path):
    """containerd calls Cleanup after every garbage collection, while zero unpack may be
    hard-linking a layer into a new-* directory outside the metadata lock."""
    from snapshotter.snapshots import _hold
    with Snapshotter(tmp_path / "root") as sn:
        building = sn.snapshots_dir / "new-building"
        building.mkdir()
        leftover = sn.snapshots_dir / "new-crashed"
        leftover.mkdir()
        fd = _hold(building)
        try:
            sn.cleanup()
            assert building.is_dir() and not leftover.exists()
        finally:
            os.close(fd)
        sn.cleanup()
        assert not building.exists()


def test_sigterm_ends_the_server_cleanly(tmp_path):
    """A stopped server removes its socket and exits 0; a new one starts on the same path."""
    sock = tmp_path / "sn.sock"
    with running_server(sock, tmp_path / "root") as srv:
        with client(srv) as c:
            c.prepare("kept", "")
        proc = srv.proc
        srv.stop()
        assert proc.returncode == 0 and not sock.exists()
        srv.start()
        with client(srv) as c:
            assert c.stat("kept").kind is Kind.ACTIVE
