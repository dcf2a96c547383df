"""The snapshot store's API without mounts: containerd's error table, labels, usage, filters,
crash safety and two processes racing on one root."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from snapshotter.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SnapshotterError,
)
from snapshotter.snapshots import (
    Info,
    Kind,
    Mount,
    Selector,
    Snapshotter,
    filters_match,
    parse_filter,
    union_config,
)

REPO = Path(__file__).resolve().parents[2]


def committed(sn: Snapshotter, name: str, parent: str = "", **labels: str) -> str:
    sn.prepare(name + "-tmp", parent)
    sn.commit(name, name + "-tmp", labels or None)
    return name


def dirs(sn: Snapshotter) -> set[str]:
    return set(os.listdir(sn.snapshots_dir))


# ------------------------------------------------------------------ containerd's error table ---

def test_prepare_duplicate_key_already_exists(sn):
    sn.prepare("a")
    with pytest.raises(AlreadyExists):
        sn.prepare("a")
    with pytest.raises(AlreadyExists):
        sn.view("a")


def test_prepare_missing_parent_not_found(sn):
    with pytest.raises(NotFound):
        sn.prepare("a", "nope")
    with pytest.raises(NotFound):
        sn.view("v", "nope")
    assert list(sn.walk()) == []
    assert dirs(sn) == set()


@pytest.mark.parametrize("make_parent", ["prepare", "view"])
def test_parent_must_be_committed(sn, make_parent):
    getattr(sn, make_parent)("p")
    with pytest.raises(InvalidArgument):
        sn.prepare("a", "p")
    with pytest.raises(InvalidArgument):
        sn.view("v", "p")
    assert [i.name for i in sn.walk()] == ["p"]


def test_keys_and_names_share_one_key_space(sn):
    committed(sn, "c")
    sn.prepare("a")
    with pytest.raises(AlreadyExists):
        sn.prepare("c")
    with pytest.raises(AlreadyExists):
        sn.view("c", "c")
    with pytest.raises(AlreadyExists):
        sn.commit("a", "a")  # the name is taken by the active key itself
    sn.prepare("b")
    with pytest.raises(AlreadyExists):
        sn.commit("c", "b")
    assert sn.stat("b").kind is Kind.ACTIVE


def test_commit_errors(sn):
    with pytest.raises(NotFound):
        sn.commit("x", "missing")
    committed(sn, "c")
    sn.view("v", "c")
    with pytest.raises(FailedPrecondition):
        sn.commit("x", "v")
    with pytest.raises(FailedPrecondition):
        sn.commit("x", "c")
    with pytest.raises(NotFound):
        sn.stat("x")


def test_remove_refused_while_children_exist(sn):
    committed(sn, "base")
    sn.view("v", "base")
    with pytest.raises(FailedPrecondition, match="remove"):
        sn.remove("base")
    sn.remove("v")
    committed(sn, "mid", "base")
    with pytest.raises(FailedPrecondition):
        sn.remove("base")
    sn.remove("mid")
    sn.remove("base")
    assert list(sn.walk()) == []
    with pytest.raises(NotFound):
        sn.remove("base")


def test_stat_and_mounts_errors(sn):
    with pytest.raises(NotFound):
        sn.stat("nope")
    with pytest.raises(NotFound):
        sn.mounts("nope")
    with pytest.raises(NotFound):
        sn.usage("nope")
    committed(sn, "c")
    with pytest.raises(FailedPrecondition):
        sn.mounts("c")


def test_empty_key_is_invalid(sn):
    with pytest.raises(InvalidArgument):
        sn.prepare("")
    sn.prepare("a")
    with pytest.raises(InvalidArgument):
        sn.commit("", "a")


# ------------------------------------------------------------------ mounts -------------------

def test_mount_shapes(sn):
    root = sn.snapshots_dir
    m = sn.prepare("a")
    assert m == [Mount("bind", str(root / "1" / "fs"), ["rw", "rbind"])]
    assert sn.view("v0") == [Mount("bind", str(root / "2" / "fs"), ["ro", "rbind"])]
    sn.commit("c1", "a")
    # a view of a single committed layer is a read-only bind of that layer
    assert sn.view("v1", "c1") == [Mount("bind", str(root / "1" / "fs"), ["ro", "rbind"])]
    m = sn.prepare("b", "c1")
    assert m == [Mount("fuse3.pyunion", "pyunion", [
        f"lowerdir={root}/1/fs", f"upperdir={root}/4/fs", f"workdir={root}/4/work"])]
    assert sn.mounts("b") == m
    sn.commit("c2", "b")
    # lowers are listed top first; a view of two layers is a read-only union (no upper)
    assert sn.view("v2", "c2") == [Mount("fuse3.pyunion", "pyunion",
                                         [f"lowerdir={root}/4/fs:{root}/1/fs"])]
    sn.prepare("c", "c2")
    assert sn.lower_paths("c") == [root / "4" / "fs", root / "1" / "fs"]
    assert sn.upper_path("c") == root / "6" / "fs"
    assert sn.fs_path("c2") == root / "4" / "fs"
    with pytest.raises(FailedPrecondition):
        sn.upper_path("c2")


def test_union_config_from_mount():
    """A containerd Mount's options become a MountConfig directly (no command line between):
    layers, work directory, the read-only form, other pyunion options, and paths with ','."""
    m = Mount("fuse3.pyunion", "pyunion", ["lowerdir=/l1:/l2", "upperdir=/u", "workdir=/w"])
    cfg = union_config(m, "/t")
    assert (cfg.upper, cfg.lowers, cfg.workdir, cfg.target) == ("/u", ["/l1", "/l2"], "/w", "/t")
    assert not cfg.readonly
    ro = union_config(Mount("fuse3.pyunion", "pyunion", ["lowerdir=/l1:/l2", "ro"]), "/t")
    assert (ro.upper, ro.lowers, ro.workdir, ro.readonly) == (None, ["/l1", "/l2"], None, True)
    mapped = union_config(Mount("fuse3.pyunion", "pyunion",
                                ["lowerdir=/a,b", "upperdir=/u,1", "workdir=/w,1",
                                 "uidmapping=0:1000:1", "volatile"]), "/t")
    assert (mapped.lowers, mapped.upper, mapped.uidmapping, mapped.fsync) == \
        (["/a,b"], "/u,1", "0:1000:1", False)
    with pytest.raises(InvalidArgument, match="lower directory"):
        union_config(Mount("fuse3.pyunion", "pyunion", ["upperdir=/u"]), "/t")
    with pytest.raises(InvalidArgument, match="unknown mount option"):
        union_config(Mount("fuse3.pyunion", "pyunion", ["lowerdir=/l", "bogus"]), "/t")
    with pytest.raises(InvalidArgument, match="uidmapping"):
        union_config(Mount("fuse3.pyunion", "pyunion", ["lowerdir=/l", "uidmapping=x"]), "/t")


def test_directory_layout_and_modes(sn):
    root = sn.root
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    sn.prepare("a")
    sn.view("v")
    d1, d2 = sn.snapshots_dir / "1", sn.snapshots_dir / "2"
    assert stat.S_IMODE(os.stat(d1 / "fs").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(d1 / "work").st_mode) == 0o711
    assert (d2 / "fs").is_dir() and not (d2 / "work").exists()
    assert (d1 / "work").stat().st_dev == (d1 / "fs").stat().st_dev


# ------------------------------------------------------------------ labels and update --------

def test_update_only_labels_are_mutable(sn):
    committed(sn, "c")
    info = sn.stat("c")
    for path in ("parent", "kind", "name", "created", "updated", "labelsx"):
        with pytest.raises(InvalidArgument):
            sn.update(info, path)
    with pytest.raises(NotFound):
        sn.update(Info(Kind.ACTIVE, "nope"), "labels")


def test_update_label_paths(sn):
    sn.prepare("a", labels={"x": "1", "y": "2"})
    before = sn.stat("a")
    assert before.labels == {"x": "1", "y": "2"}
    assert before.created == before.updated
    info = sn.update(Info(Kind.VIEW, "a", "ignored", {"x": "9", "z": "3"}), "labels.x",
                     "labels.y")
    assert info.labels == {"x": "9"}  # y absent from the given labels: deleted; z not named
    assert info.kind is Kind.ACTIVE and info.parent == ""
    assert info.created == before.created and info.updated > before.updated
    info = sn.update(Info(Kind.ACTIVE, "a", "", {"k.with.dots": "v"}), "labels.k.with.dots")
    assert info.labels == {"x": "9", "k.with.dots": "v"}
    info = sn.update(Info(Kind.ACTIVE, "a", "", {"only": "this", "gone": ""}))
    assert info.labels == {"only": "this"}
    assert sn.stat("a") == info


def test_label_size_limit(sn):
    big = {"k": "v" * 4096}
    with pytest.raises(InvalidArgument):
        sn.prepare("a", labels=big)
    assert list(sn.walk()) == [] and dirs(sn) == set()
    sn.prepare("a", labels={"k": "v" * 4095})
    with pytest.raises(InvalidArgument):
        sn.update(Info(Kind.ACTIVE, "a", "", big), "labels")
    assert sn.stat("a").labels == {"k": "v" * 4095}


def test_commit_keeps_parent_and_takes_commit_labels(sn):
    committed(sn, "base")
    sn.prepare("a", "base", labels={"from": "prepare"})
    t0 = datetime.now(UTC)
    sn.commit("c", "a", {"from": "commit"})
    info = sn.stat("c")
    assert (info.kind, info.parent, info.labels) == (Kind.COMMITTED, "base", {"from": "commit"})
    assert info.created >= t0 and info.created == info.updated
    with pytest.raises(NotFound):
        sn.stat("a")


def test_removed_keys_and_dirs(sn):
    sn.prepare("a")
    (sn.upper_path("a") / "f").write_text("x")
    d = sn.snapshots_dir / "1"
    assert d.exists()
    sn.remove("a")
    assert not d.exists() and dirs(sn) == set()
    sn.prepare("a")  # the key is free again
    assert sn.stat("a").kind is Kind.ACTIVE


# ------------------------------------------------------------------ usage --------------------

def test_usage_counts_only_this_snapshot(sn):
    sn.prepare("a")
    up = sn.upper_path("a")
    (up / "big").write_bytes(os.urandom(64 * 1024))
    (up / "d").mkdir()
    (up / "d" / "small").write_bytes(b"x")
    os.link(up / "big", up / "d" / "hard")
    u = sn.usage("a")
    assert u.inodes == 4  # fs itself, big (once despite the hardlink), d, small
    assert u.size >= 64 * 1024 + 1
    sn.commit("c", "a")
    assert sn.usage("c") == u
    sn.prepare("child", "c")
    (sn.upper_path("child") / "one").write_bytes(b"1")
    uc = sn.usage("child")
    assert uc.inodes == 2 and uc.size < u.size


# ------------------------------------------------------------------ filters ------------------

def test_parse_filter_syntax():
    assert parse_filter('labels."containerd.io/gc.root"==check-walk') == [
        Selector(("labels", "containerd.io/gc.root"), "==", "check-walk")]
    assert parse_filter('name==a-wl, labels.l') == [
        Selector(("name",), "==", "a-wl"), Selector(("labels", "l"))]
    assert parse_filter('parent!=""') == [Selector(("parent",), "!=", "")]
    assert parse_filter('name~="^a.*$"') == [Selector(("name",), "~=", "^a.*$")]
    assert parse_filter("name==sha256:abc") == [Selector(("name",), "==", "sha256:abc")]
    for bad in ("kind=active", "==x", 'labels."x', "name==a,", "name~=(", "a b"):
        with pytest.raises(InvalidArgument):
            parse_filter(bad)


def test_filter_semantics():
    info = Info(Kind.ACTIVE, "a1", "p", {"l": "2", "e.f": "g"})
    root = Info(Kind.COMMITTED, "r", "", {})

    def m(i, *fs):
        return filters_match([parse_filter(f) for f in fs], i)

    assert m(info) and m(info, "kind==active") and not m(info, "kind==view")
    assert m(info, "kind==view", "name==a1")  # OR between strings
    assert not m(info, "kind==view,name==a1")  # AND within one
    assert m(info, "labels.l") and not m(root, "labels.l")
    assert m(info, 'labels."e.f"==g') and m(info, "labels.e.f==g")
    assert m(info, 'parent!=""') and not m(root, 'parent!=""')
    # name and parent are always present in containerd's adaptors: `parent==` (and
    # `parent==""`, what its remote-snapshot lookup sends) selects the parentless
    assert m(root, "parent!=p") and m(root, "parent==") and not m(info, 'parent==""')
    assert m(info, "name~=^a[0-9]$") and not m(root, "name~=^a")
    assert not m(info, "unknown==x") and m(info, "unknown!=x")


def test_walk_with_filters_and_bad_filter(sn):
    committed(sn, "p", l="1")
    sn.prepare("a", "p", labels={"l": "2"})
    sn.view("v", "p")
    assert sorted(i.name for i in sn.walk("labels.l")) == ["a", "p"]
    assert sorted(i.name for i in sn.walk("kind==view", "labels.l==1")) == ["p", "v"]
    with pytest.raises(InvalidArgument):
        list(sn.walk("kind=view"))


def test_mutation_during_walk(sn):
    for i in range(5):
        sn.prepare(f"k{i}")
    seen = []
    for info in sn.walk():
        seen.append(info.name)
        sn.remove(info.name)  # must neither deadlock nor break the iteration
    assert seen == [f"k{i}" for i in range(5)] and list(sn.walk()) == []


# ------------------------------------------------------------------ lifecycle ----------------

def test_close_twice_and_use_after_close(tmp_path):
    s = Snapshotter(tmp_path / "r")
    s.prepare("a")
    s.close()
    s.close()
    with pytest.raises(SnapshotterError):
        s.stat("a")
    with Snapshotter(tmp_path / "r") as again:  # the data outlives the handle
        assert again.stat("a").kind is Kind.ACTIVE


def test_root_with_colon_refused(tmp_path):
    with pytest.raises(InvalidArgument):
        Snapshotter(tmp_path / "a:b")


# ------------------------------------------------------------------ crash safety -------------

def test_failed_create_leaves_nothing(sn, monkeypatch):
    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("snapshotter.snapshots.os.rename", boom)
    with pytest.raises(OSError):
        sn.prepare("a")
    monkeypatch.undo()
    assert list(sn.walk()) == [] and dirs(sn) == set()
    sn.prepare("a")
    assert dirs(sn) == {"1"}


CRASH = textwrap.dedent("""
    import os, sys
    import snapshotter.snapshots as s
    real = os.rename
    def crash(a, b):
        real(a, b)
        if sys.argv[2] == "after-rename":
            os._exit(9)   # killed after the directory is in place, before the commit
    s.os.rename = crash
    def boom(*a):
        os._exit(9)       # killed while the temporary directory is being filled
    if sys.argv[2] == "in-tmp":
        s.os.chmod = boom
    sn = s.Snapshotter(sys.argv[1])
    sn.prepare("victim", "base")
""")


@pytest.mark.parametrize("when", ["in-tmp", "after-rename"])
def test_crash_during_create_is_cleaned_up(tmp_path, when):
    root = tmp_path / "root"
    with Snapshotter(root) as sn:
        committed(sn, "base")
    r = subprocess.run([sys.executable, "-c", CRASH, str(root), when], cwd=REPO, timeout=60,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 9, r.stderr
    with Snapshotter(root) as sn:
        with pytest.raises(NotFound):
            sn.stat("victim")
        assert [i.name for i in sn.walk()] == ["base"]
        leftovers = dirs(sn) - {"1"}
        assert leftovers  # the crash did leave a directory behind ...
        sn.prepare("next", "base")  # ... which never blocks a new snapshot
        assert (sn.upper_path("next")).is_dir()
        sn.cleanup()
        assert dirs(sn) == {"1", str(sn.upper_path("next").parent.name)}
        sn.commit("next-c", "next")
        assert sn.stat("next-c").parent == "base"


def test_cleanup_removes_only_orphans(sn):
    sn.prepare("a")
    committed(sn, "c")
    live = dirs(sn)
    for junk in ("new-abc", "rm-7", "99"):
        (sn.snapshots_dir / junk / "fs").mkdir(parents=True)
        (sn.snapshots_dir / junk / "fs" / "f").write_text("x")
    (sn.snapshots_dir / "stray-file").write_text("x")
    sn.cleanup()
    assert dirs(sn) == live
    assert sn.stat("a").kind is Kind.ACTIVE and sn.stat("c").kind is Kind.COMMITTED


def test_remove_of_read_only_tree(sn):
    sn.prepare("a")
    up = sn.upper_path("a")
    (up / "ro" / "sub").mkdir(parents=True)
    (up / "ro" / "sub" / "f").write_text("x")
    os.chmod(up / "ro" / "sub", 0o500)
    os.chmod(up / "ro", 0o500)
    sn.remove("a")
    assert dirs(sn) == set()


# ------------------------------------------------------------------ two processes racing -----

RACER = textwrap.dedent("""
    import os, sys, time
    from snapshotter.errors import AlreadyExists
    from snapshotter.snapshots import Snapshotter
    sn = Snapshotter(sys.argv[1])
    open(sys.argv[1] + f"-ready-{sys.argv[2]}", "w").close()
    while not os.path.exists(sys.argv[1] + "-go"):  # start line: both begin together
        time.sleep(0.001)
    won = 0
    for i in range(25):
        try:
            sn.prepare(f"tmp-{i}", "base")
        except AlreadyExists:
            continue
        try:
            sn.commit(f"layer-{i}", f"tmp-{i}")
        except AlreadyExists:  # the other one got there first (and freed tmp-i again)
            sn.remove(f"tmp-{i}")
            continue
        sn.prepare(f"own-{sys.argv[2]}-{i}", f"layer-{i}")
        won += 1
    print(won)
""")


def test_two_processes_racing(tmp_path):
    root = tmp_path / "root"
    with Snapshotter(root) as sn:
        committed(sn, "base")
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(root), str(n)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(2)]
    for n in range(2):
        for _ in range(3000):
            if Path(f"{root}-ready-{n}").exists() or procs[n].poll() is not None:
                break
            time.sleep(0.01)
    Path(f"{root}-go").touch()
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        finally:
            p.kill()
        assert p.returncode == 0, err
        outs.append(int(out))
    assert sum(outs) == 25  # every key was won exactly once, nobody failed on a lock
    with Snapshotter(root) as sn:
        infos = {i.name: i for i in sn.walk()}
        assert sorted(n for n in infos if n.startswith("layer-")) == sorted(
            f"layer-{i}" for i in range(25))
        assert not [n for n in infos if n.startswith("tmp-")]
        assert len([n for n in infos if n.startswith("own-")]) == 25
        assert all(infos[n].parent.startswith("layer-") for n in infos if n.startswith("own-"))
        assert len(dirs(sn)) == len(infos)  # one directory per snapshot, no strays
