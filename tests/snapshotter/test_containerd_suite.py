"""containerd's snapshotter test suite (core/snapshots/testsuite/testsuite.go and issues.go),
ported case by case, with real mounts: pyunion for stacked layers, bind mounts for single layers
(the same shapes containerd's overlay snapshotter returns).

One suite, run against each implementation of the interface: the local store (`local`) and
`pyunion snapshotter serve` in its own process through a gRPC client (`grpc`), the way
containerd's proxy plugin reaches it.

Like the original, every case gets a fresh store root and a separate work area, keys are often
paths under the work area, and content is checked by comparing a mounted View with a flat
directory that received the same changes (`check_directory_equal`, after continuity's
fstest.CheckDirectoryEqual: type, mode, owner, size, content, link target, xattrs, hardlinks).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from snapshotter.errors import InvalidArgument
from snapshotter.snapshots import Info, Kind, Mount, Snapshotter, mount_snapshot, unmount
from tests.mounting import force_unmount, is_mounted
from tests.snapshotter.grpc_support import running_server
from unionfs import mountinfo

GC_ROOT = {"containerd.io/gc.root": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

# ------------------------------------------------------------------ fstest, ported -----------

Applier = Callable[[Path], None]


def _p(root: Path, name: str) -> Path:
    return root / name.lstrip("/")


def create_file(name: str, content: bytes, perm: int) -> Applier:
    def f(root: Path) -> None:
        p = _p(root, name)
        p.write_bytes(content)
        os.chmod(p, perm)
    return f


def create_dir(name: str, perm: int) -> Applier:
    def f(root: Path) -> None:
        p = _p(root, name)
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, perm)
    return f


def remove_all(name: str) -> Applier:
    def f(root: Path) -> None:
        p = _p(root, name)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    return f


def chown(name: str, uid: int, gid: int) -> Applier:
    return lambda root: os.lchown(_p(root, name), uid, gid)


def rename(old: str, new: str) -> Applier:
    return lambda root: os.rename(_p(root, old), _p(root, new))


def link(old: str, new: str) -> Applier:
    return lambda root: os.link(_p(root, old), _p(root, new))


def apply(*appliers: Applier) -> Applier:
    def f(root: Path) -> None:
        for a in appliers:
            a(root)
    return f


def _manifest(root: Path) -> dict[str, tuple]:
    """Every entry below root (root itself excluded) as comparable metadata."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    def fail(e: OSError) -> None:  # os.walk would skip unreadable directories silently
        raise e

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            try:
                names = sorted(n for n in os.listxattr(full, follow_symlinks=False)
                               if not n.startswith(("security.", "system.")))
                xattrs = tuple((n, os.getxattr(full, n, follow_symlinks=False)) for n in names)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.ENODATA):
                    raise
                xattrs = ()
            entry: tuple = (stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid,
                            st.st_gid, xattrs)
            if stat.S_ISREG(st.st_mode):
                entry += (st.st_size, hashlib.sha256(Path(full).read_bytes()).hexdigest())
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(full),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry += (st.st_rdev,)
            out[rel] = entry
    for group in inodes.values():  # hardlinks: which paths share a file inside this tree
        for rel in group:
            out[rel] += (tuple(sorted(group)),)
    return out


def check_directory_equal(expected: Path, actual: Path) -> None:
    want, got = _manifest(expected), _manifest(actual)
    if want != got:
        diffs = []
        for k in sorted(set(want) | set(got)):
            if want.get(k) != got.get(k):
                diffs.append(f"{k}: expected {want.get(k)} got {got.get(k)}")
        raise AssertionError(f"{actual} differs from {expected}:\n  " + "\n  ".join(diffs[:20]))


def test_check_directory_equal_sees_differences(tmp_path):
    """The comparison itself must fail on each kind of difference it claims to check."""
    a, b = tmp_path / "a", tmp_path / "b"
    base = apply(create_dir("/d", 0o755), create_file("/d/f", b"abc", 0o644),
                 create_file("/g", b"x", 0o644))
    changes = [create_file("/d/f", b"abd", 0o644), create_file("/d/f", b"abcd", 0o644),
               create_file("/d/f", b"abc", 0o600), create_dir("/d", 0o700),
               chown("/d/f", 1, 1), remove_all("/g"), create_file("/new", b"", 0o644),
               link("/d/f", "/h"), lambda r: os.setxattr(r / "g", "user.k", b"v"),
               lambda r: (remove_all("/g")(r), os.symlink("x", r / "g"))]
    for change in changes:
        for d in (a, b):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            base(d)
        check_directory_equal(a, b)
        change(b)
        with pytest.raises(AssertionError):
            check_directory_equal(a, b)


# ------------------------------------------------------------------ harness ------------------

@pytest.fixture(params=["local", "grpc"])
def sn(request, tmp_path) -> Iterator[Snapshotter]:
    """A fresh store per case: the local Snapshotter, or a gRPC client of a fresh server."""
    if request.param == "local":
        s = Snapshotter(tmp_path / "root")
        yield s
        s.close()
        return
    from snapshotter.grpc_client import SnapshotsClient
    sock = tmp_path / "sn.sock"
    with running_server(sock, tmp_path / "root"), SnapshotsClient(sock, "suite") as c:
        yield c


@pytest.fixture(autouse=True)
def clear_umask():
    """The original suite clears the umask (clearMask) so modes are exactly those requested."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def work(tmp_path) -> Iterator[Path]:
    w = tmp_path / "work"
    w.mkdir()
    yield w
    # never leave anything mounted under the work area, whatever the test did
    targets = [m.mountpoint for m in mountinfo.mounts()]
    for t in reversed(targets):
        if t.startswith(str(w) + "/"):
            with contextlib.suppress(Exception):
                unmount(Path(t))
            force_unmount(t)


def do_mount(mounts: list[Mount], target: Path) -> None:
    assert len(mounts) >= 1, "expected mounts to have entries"
    target.mkdir(parents=True, exist_ok=True)
    mount_snapshot(mounts, target)
    assert is_mounted(target)


def do_unmount(target: Path) -> None:
    unmount(target)
    assert not is_mounted(target)


@contextlib.contextmanager
def mounted(mounts: list[Mount], target: Path) -> Iterator[Path]:
    do_mount(mounts, target)
    try:
        yield target
    finally:
        do_unmount(target)


def apply_to_mounts(mounts: list[Mount], work: Path, a: Applier) -> None:
    td = Path(tempfile.mkdtemp(prefix="prepare", dir=work))
    try:
        with mounted(mounts, td):
            a(td)
    finally:
        shutil.rmtree(td, ignore_errors=True)


def create_snapshot(sn: Snapshotter, parent: str, work: Path, a: Applier) -> str:
    n = f"{id(a):x}-{random.getrandbits(48)}"
    prepare = f"{n}-prepare"
    m = sn.prepare(prepare, parent, GC_ROOT)
    apply_to_mounts(m, work, a)
    sn.commit(n, prepare, GC_ROOT)
    return n


def check_snapshot(sn: Snapshotter, work: Path, name: str, check: Path) -> None:
    td = Path(tempfile.mkdtemp(prefix="check", dir=work))
    view = f"{name}-view"
    m = sn.view(view, name, GC_ROOT)
    try:
        with mounted(m, td):
            check_directory_equal(check, td)
    finally:
        sn.remove(view)
        os.rmdir(td)


def check_snapshots(sn: Snapshotter, work: Path, *appliers: Applier) -> None:
    """A chain of snapshots, each checked in a View against one flat directory."""
    td = Path(tempfile.mkdtemp(prefix="flat", dir=work))
    parent = ""
    for a in appliers:
        s = create_snapshot(sn, parent, work, a)
        a(td)
        check_snapshot(sn, work, s, td)
        parent = s


def prepare_mount(sn: Snapshotter, name: str, parent: str, work: Path) -> str:
    preparing = work / name
    preparing.mkdir(parents=True, exist_ok=True)
    do_mount(sn.prepare(str(preparing), parent, GC_ROOT), preparing)
    return str(preparing)


# ------------------------------------------------------------------ testsuite.go -------------

def test_basic(sn, work):
    initial = apply(create_file("/foo", b"foo\n", 0o777), create_dir("/a", 0o755),
                    create_dir("/a/b", 0o755), create_dir("/a/b/c", 0o755))
    diff = apply(create_file("/bar", b"bar\n", 0o777),
                 create_file("/foo", b"bar\n", 0o777),  # also, change content of foo to bar
                 remove_all("/a/b"))

    preparing = work / "preparing"
    preparing.mkdir()
    with mounted(sn.prepare(str(preparing), "", GC_ROOT), preparing):
        initial(preparing)
    committed = str(work / "committed")
    sn.commit(committed, str(preparing), GC_ROOT)
    si = sn.stat(committed)
    assert si.parent == "" and si.kind is Kind.COMMITTED
    with pytest.raises(Exception):  # noqa: B017 - any error: the key is gone after Commit
        sn.stat(str(preparing))

    nxt = work / "nextlayer"
    nxt.mkdir()
    with mounted(sn.prepare(str(nxt), committed, GC_ROOT), nxt):
        flat = Path(tempfile.mkdtemp(dir=work))
        initial(flat)
        check_directory_equal(flat, nxt)
        diff(nxt)
    ni = sn.stat(str(nxt))
    assert ni.parent == committed and ni.kind is Kind.ACTIVE

    next_committed = str(work / "committed-next")
    sn.commit(next_committed, str(nxt), GC_ROOT)
    si2 = sn.stat(next_committed)
    assert si2.parent == committed and si2.kind is Kind.COMMITTED
    with pytest.raises(Exception):  # noqa: B017
        sn.stat(str(nxt))

    walked = {i.name: i for i in sn.walk()}  # walk is not ordered
    assert walked[si.name] == si and walked[si2.name] == si2

    nextnext = work / "nextnextlayer"
    nextnext.mkdir()
    with mounted(sn.view(str(nextnext), next_committed, GC_ROOT), nextnext):
        flat = Path(tempfile.mkdtemp(dir=work))
        apply(initial, diff)(flat)
        check_directory_equal(flat, nextnext)
    sn.remove(str(nextnext))

    with pytest.raises(Exception) as err:
        sn.remove(committed)
    assert "remove" in str(err.value)
    sn.remove(next_committed)
    sn.remove(committed)


def test_stat_active(sn, work):
    preparing = work / "preparing"
    preparing.mkdir()
    with mounted(sn.prepare(str(preparing), "", GC_ROOT), preparing):
        (preparing / "foo").write_bytes(b"foo\n")
        si = sn.stat(str(preparing))
        assert si.name == str(preparing)
        assert si.kind is Kind.ACTIVE
        assert si.parent == ""


def test_stat_committed(sn, work):
    preparing = work / "preparing"
    preparing.mkdir()
    with mounted(sn.prepare(str(preparing), "", GC_ROOT), preparing):
        (preparing / "foo").write_bytes(b"foo\n")
        committed = str(work / "committed")
        sn.commit(committed, str(preparing), GC_ROOT)
        si = sn.stat(committed)
        assert si.name == committed
        assert si.kind is Kind.COMMITTED
        assert si.parent == ""


def test_transitivity(sn, work):
    preparing = prepare_mount(sn, "preparing", "", work)
    Path(preparing, "foo").write_bytes(b"foo\n")
    do_unmount(Path(preparing))
    snap_a = str(work / "snapA")
    sn.commit(snap_a, preparing, GC_ROOT)

    nxt = prepare_mount(sn, "next", snap_a, work)
    Path(nxt, "foo").write_bytes(b"foo bar\n")
    do_unmount(Path(nxt))
    snap_b = str(work / "snapB")
    sn.commit(snap_b, nxt, GC_ROOT)

    si_a, si_b = sn.stat(snap_a), sn.stat(snap_b)
    si_parent_b = sn.stat(si_b.parent)
    assert si_a.parent == ""
    assert si_b.parent == snap_a
    assert si_parent_b.parent == ""


def test_prepare_view_failing(sn, work):
    preparing = prepare_mount(sn, "preparing", "", work)
    do_unmount(Path(preparing))
    snap_a = str(work / "snapA")
    sn.commit(snap_a, preparing, GC_ROOT)

    new_layer = str(work / "newlayer")  # Prepare & View with same key
    sn.prepare(new_layer, snap_a, GC_ROOT)
    with pytest.raises(Exception):  # noqa: B017
        sn.view(new_layer, snap_a, GC_ROOT)

    prep_layer = str(work / "prepLayer")  # two Prepare with same key
    sn.prepare(prep_layer, snap_a, GC_ROOT)
    with pytest.raises(Exception):  # noqa: B017
        sn.prepare(prep_layer, snap_a, GC_ROOT)

    view_layer = str(work / "viewLayer")  # two View with same key
    sn.view(view_layer, snap_a, GC_ROOT)
    with pytest.raises(Exception):  # noqa: B017
        sn.view(view_layer, snap_a, GC_ROOT)


def base_test_snapshots(sn: Snapshotter) -> None:
    sn.prepare("c1-a", "", GC_ROOT)
    sn.commit("c1", "c1-a", GC_ROOT)
    sn.prepare("c2-a", "c1", GC_ROOT)
    sn.commit("c2", "c2-a", GC_ROOT)
    sn.prepare("a1", "c2", GC_ROOT)
    sn.prepare("a2", "", GC_ROOT)
    sn.view("v1", "c2", GC_ROOT)
    sn.view("v2", "", GC_ROOT)


def test_update(sn, work):
    t1 = datetime.now(UTC)
    base_test_snapshots(sn)
    t2 = datetime.now(UTC)
    cases = [("c1", Kind.COMMITTED, ""), ("c2", Kind.COMMITTED, "c1"), ("a1", Kind.ACTIVE, "c2"),
             ("a2", Kind.ACTIVE, ""), ("v1", Kind.VIEW, "c2"), ("v2", Kind.VIEW, "")]
    for name, kind, parent in cases:
        st = sn.stat(name)
        assert t1 <= st.created <= t2, name
        assert st.created == st.updated, name
        assert (st.kind, st.parent, st.name) == (kind, parent, name)

        created_at = st.created
        root_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", "containerd.io/gc.root": root_time}
        st.parent = "doesnotexist"
        st.labels = dict(expected)
        u1 = datetime.now(UTC)
        st = sn.update(st)
        u2 = datetime.now(UTC)
        assert st.created == created_at, name
        assert u1 <= st.updated <= u2, name
        assert (st.kind, st.parent, st.name) == (kind, parent, name)
        assert st.labels == expected

        expected = {"l1": "updated", "l3": "v3", "containerd.io/gc.root": root_time}
        st.labels = {"l1": "updated", "l4": "v4"}
        st = sn.update(st, "labels.l1", "labels.l2")
        assert st.labels == expected

        expected = {"l4": "v4", "containerd.io/gc.root": root_time}
        st.labels = dict(expected)
        st = sn.update(st, "labels")
        assert st.labels == expected

        st.parent = "doesnotexist"  # an immutable field path is refused
        with pytest.raises(InvalidArgument):
            sn.update(st, "parent")


def test_remove(sn, work):
    sn.prepare("committed-a", "", GC_ROOT)
    sn.commit("committed-1", "committed-a", GC_ROOT)
    sn.prepare("reuse-1", "committed-1", GC_ROOT)
    sn.remove("reuse-1")
    sn.view("reuse-1", "committed-1", GC_ROOT)
    sn.remove("reuse-1")
    sn.prepare("reuse-1", "", GC_ROOT)
    sn.remove("committed-1")
    sn.commit("committed-1", "reuse-1", GC_ROOT)


WALK_CASES = [
    (["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
     ['labels."containerd.io/gc.root"==check-walk']),
    (["a-np", "a", "a-wl", "a-np-wl"], ['kind==active,labels."containerd.io/gc.root"==check-walk']),
    (["v", "v-wl"], ['kind==view,labels."containerd.io/gc.root"==check-walk']),
    (["p", "p-wl"], ['kind==committed,labels."containerd.io/gc.root"==check-walk']),
    (["p", "a-np-wl"], ["name==p", "name==a-np-wl"]),
    (["a-wl"], ["name==a-wl,labels.l"]),
    (["a", "v"], ["parent==p"]),
    (["a", "v", "a-wl", "v-wl"], ['parent!="",labels."containerd.io/gc.root"==check-walk']),
    (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
    (["a-wl", "a-np-wl"], ["labels.l==2"]),
]


def test_walk(sn, work):
    opt = {"containerd.io/gc.root": "check-walk"}
    sn.prepare("a-np", "", opt)  # no parent active
    sn.prepare("p-tmp", "", opt)  # base parent
    sn.commit("p", "p-tmp", opt)
    sn.prepare("a", "p", opt)
    sn.view("v", "p", opt)
    sn.prepare("p-wl-tmp", "", opt)  # base parent with label=1
    sn.commit("p-wl", "p-wl-tmp", {"l": "1", **opt})
    sn.prepare("a-wl", "p-wl", {"l": "2", **opt})
    sn.view("v-wl", "p-wl", {"l": "3", **opt})
    sn.prepare("a-np-wl", "", {"l": "2", **opt})
    for i, (matches, filters) in enumerate(WALK_CASES):
        actual = sorted(info.name for info in sn.walk(*filters))
        assert actual == sorted(matches), f"[{i}] {filters}"


def test_view_readonly(sn, work):
    preparing = str(work / "preparing")
    sn.prepare(preparing, "", GC_ROOT)
    committed = str(work / "committed")
    sn.commit(committed, preparing, GC_ROOT)
    view = str(work / "view")
    m = sn.view(view, committed, GC_ROOT)
    mp = work / "view-mount"
    mp.mkdir()
    # Just checking the option string is not enough: test a real mount (containerd#1368).
    with mounted(m, mp), pytest.raises(OSError):
        (mp / "testfile").write_bytes(b"testcontent")  # EROFS is expected
    sn.remove(view)
    sn.remove(committed)


def test_close_twice(sn, work):
    n = f"closeTwice-{random.getrandbits(31)}"
    prepare = f"{n}-prepare"
    sn.prepare(prepare, "", GC_ROOT)  # do some dummy ops to modify the internal state
    sn.commit(n, prepare, GC_ROOT)
    sn.remove(n)
    sn.close()
    sn.close()


def test_root_permission(sn, work):
    preparing = prepare_mount(sn, "preparing", "", work)
    try:
        assert stat.S_IMODE(os.stat(preparing).st_mode) == 0o755
    finally:
        do_unmount(Path(preparing))


@pytest.mark.timeout(900)  # 129 mount cycles: about 2 min on an idle 2-core machine
def test_128_layers_mount(sn, work):
    lowest = apply(create_file("/bottom", b"way at the bottom\n", 0o777),
                   create_file("/overwriteme", b"FIRST!\n", 0o777),
                   create_dir("/addhere", 0o755), create_dir("/onlyme", 0o755),
                   create_file("/onlyme/bottom", b"bye!\n", 0o777))
    appliers = [lowest] + [
        apply(create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
              create_file(f"/addhere/file-{i}", b"same\n", 0o755),
              remove_all("/onlyme"), create_dir("/onlyme", 0o755),
              create_file(f"/onlyme/file-{i}", b"only me!\n", 0o777))
        for i in range(1, 128)]
    flat = work / "flat"
    flat.mkdir()
    parent = ""
    for i, a in enumerate(appliers):
        preparing = work / f"prepare-layer-{i}"
        preparing.mkdir()
        with mounted(sn.prepare(str(preparing), parent, GC_ROOT), preparing):
            check_directory_equal(flat, preparing)  # before apply
            a(flat)
            a(preparing)
            check_directory_equal(flat, preparing)  # after apply
        parent = str(work / f"committed-{i}")
        sn.commit(parent, str(preparing), GC_ROOT)
    view = work / "fullview"
    view.mkdir()
    with mounted(sn.view(str(view), parent, GC_ROOT), view):
        check_directory_equal(flat, view)


# ------------------------------------------------------------------ issues.go ----------------

def test_layer_file_update(sn, work):
    """moby#21555: same-size overwrite plus mode change, run 5 times across second boundaries."""
    l1 = apply(create_dir("/etc", 0o700),
               create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
               create_file("/etc/profile", b"PATH=/usr/bin", 0o644))
    l2 = apply(create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
               create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
               create_dir("/root", 0o700),
               create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644))
    sleep = 0.0
    for _ in range(5):
        time.sleep(sleep)
        check_snapshots(sn, work, l1, l2)
        now = time.time()
        sleep = int(now) + 1 - now  # until the next second boundary


def test_remove_directory_in_lower_layer(sn, work):
    """moby#25244: removing and recreating a lower directory hides its old children."""
    check_snapshots(
        sn, work,
        apply(create_dir("/lib", 0o700), create_file("/lib/hidden", b"", 0o644)),
        apply(remove_all("/lib"), create_dir("/lib", 0o700),
              create_file("/lib/not-hidden", b"", 0o644)),
        apply(create_file("/lib/newfile", b"", 0o644)))


def test_chown(sn, work):
    """moby#20240, #24913, #28391: owner changes survive commit across layers."""
    check_snapshots(
        sn, work,
        apply(create_dir("/opt", 0o700), create_dir("/opt/a", 0o700),
              create_dir("/opt/a/b", 0o700), create_file("/opt/a/b/file.txt", b"hello", 0o644)),
        apply(chown("/opt", 1, 1), chown("/opt/a", 1, 1), chown("/opt/a/b", 1, 1),
              chown("/opt/a/b/file.txt", 1, 1)))


def test_rename(sn, work):
    """moby#25409: file renames, and (not skipped for pyunion) renaming a lower directory."""
    l1 = apply(create_dir("/dir1", 0o700), create_dir("/somefiles", 0o700),
               create_file("/somefiles/f1", b"was here first!", 0o644),
               create_file("/somefiles/f2", b"nothing interesting", 0o644))
    l2 = apply(rename("/dir1", "/dir2"),
               create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
               rename("/somefiles/f1-overwrite", "/somefiles/f1"),
               rename("/somefiles/f2", "/somefiles/f3"))
    check_snapshots(sn, work, l1, l2)


def test_directory_permission_on_commit(sn, work):
    """moby#27298: directory owners and modes survive commit, removal and re-creation."""
    l1 = apply(create_dir("/dir1", 0o700), create_dir("/dir2", 0o700),
               create_dir("/dir3", 0o700), create_dir("/dir4", 0o700),
               create_file("/dir4/f1", b"...", 0o644), create_dir("/dir5", 0o700),
               create_file("/dir5/f1", b"...", 0o644),
               chown("/dir1", 1, 1), chown("/dir2", 1, 1), chown("/dir3", 1, 1),
               chown("/dir5", 1, 1), chown("/dir5/f1", 1, 1))
    l2 = apply(chown("/dir2", 0, 0), remove_all("/dir3"), chown("/dir4", 1, 1),
               chown("/dir4/f1", 1, 1))
    l3 = apply(create_dir("/dir3", 0o700), chown("/dir3", 1, 1), remove_all("/dir5"),
               create_dir("/dir5", 0o700), chown("/dir5", 1, 1))
    check_snapshots(sn, work, l1, l2, l3)


def test_remove_intermediate_snapshot(sn, work):
    base = prepare_mount(sn, "base", "", work)
    do_unmount(Path(base))
    committed_base = str(work / "committed-base")
    sn.commit(committed_base, base, GC_ROOT)
    intermediate = str(work / "intermediate")  # create intermediate layer
    sn.prepare(intermediate, committed_base, GC_ROOT)
    committed_inter = str(work / "committed-inter")
    sn.commit(committed_inter, intermediate, GC_ROOT)
    top = str(work / "toplayer")  # create top layer
    sn.prepare(top, committed_inter, GC_ROOT)
    with pytest.raises(Exception):  # noqa: B017 - deleting the intermediate layer must fail
        sn.remove(committed_inter)
    sn.remove(top)  # removal from top layer to base does not fail
    sn.remove(committed_inter)
    sn.remove(committed_base)


def test_deleted_files_in_child_snapshot(sn, work):
    check_snapshots(
        sn, work,
        apply(create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777)),
        apply(remove_all("/foobar")),
        apply())


def test_move_file_from_lower_layer(sn, work):
    check_snapshots(
        sn, work,
        apply(create_dir("/dir1", 0o700), create_file("/dir1/f1", b"Hello", 0o644),
              create_dir("dir2", 0o700), create_file("dir2/f2", b"...", 0o644)),
        apply(create_dir("/dir3", 0o700), create_file("/dir3/f1", b"Hello", 0o644),
              remove_all("/dir1"), link("dir2/f2", "dir3/f2"), remove_all("dir2/f2")))


def create_named_snapshots(sn: Snapshotter, ns: str) -> None:
    c1, c2 = f"{ns}c1", f"{ns}c2"
    sn.prepare(c1 + "-a", "", GC_ROOT)
    sn.commit(c1, c1 + "-a", GC_ROOT)
    sn.prepare(c2 + "-a", c1, GC_ROOT)
    sn.commit(c2, c2 + "-a", GC_ROOT)
    sn.prepare(f"{ns}a1", c2, GC_ROOT)
    sn.view(f"{ns}v1", c2, GC_ROOT)


def test_stat_in_walk(sn, work):
    prefix = "stats-in-walk-"
    create_named_snapshots(sn, prefix)
    checked = 0
    for si in sn.walk():
        if not si.name.startswith(prefix):
            continue  # only stat snapshots from this test
        si2 = sn.stat(si.name)
        assert isinstance(si2, Info) and si2 == si  # kind, name, parent, labels, times
        checked += 1
    assert checked == 4
