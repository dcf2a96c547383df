"""Rootless images: import, commit and export as a real unprivileged user (issue 6).

The user is created by tests/rootless.py. An image whose layers hold files of several owners, a
setuid and a setgid file, a read-only file, a sticky directory and two device nodes is imported
by that user into its default per-user store; the store must hold the podman/fuse-overlayfs
override xattrs; the export is checked by `umoci unpack` as root; the same image handled by root
gives the same layers; commits of an upper changed directly and through a rootless pyunion mount
carry the recorded owners in the tar.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from snapshotter.applier import (
    RootlessIds,
    apply_tar,
    disk_mode,
    entry_override,
    needs_override,
)
from snapshotter.images import ImageStore
from snapshotter.layer_writer import recorded_kind, recorded_owner, write_layer
from snapshotter.store_paths import SYSTEM_ROOT, default_store_root
from tests.imagebuild import FIXED_MTIME, base_layers, build_image
from tests.mounting import force_unmount
from tests.rootless import User, skip_reason, unprivileged_user
from unionfs.ownership import OVERRIDE_XATTR, Override

pytestmark = pytest.mark.timeout(120)
NAME = "pyunion-test/rootless:v1"
XATTR_REASON = skip_reason()
needs_user = pytest.mark.skipif(XATTR_REASON is not None, reason=XATTR_REASON or "")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None,
                                 reason="umoci (Debian package umoci) validates the export")

# What the special layer asks for, and the override xattr a rootless store must hold for it
# (None: the file on disk says it all: owned by the user, who stands for root, plain mode).
EXPECTED_OVERRIDES = {
    "srv": None,
    "srv/owned": "1000:1000:0750:dir",
    "srv/owned/file": "1000:1000:0640:file",
    "srv/suid": "0:0:4755:file",
    "srv/sgid": "0:50:2755:file",
    "srv/ro": "0:0:0444:file",
    "srv/plain": None,
    "srv/fifo": None,
    "srv/sticky": "0:0:1777:dir",
    "dev/null": "0:0:0666:char-1-3",
    "dev/loop0": "0:6:0660:block-7-0",
}


def _ti(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = 0,
        gid: int = 0, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, FIXED_MTIME
    ti.uname = ti.gname = ""
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def special_layer() -> bytes:
    """A layer tar with several owners, special modes, a fifo, devices and hardlinks."""
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_ti("dev", tarfile.DIRTYPE, 0o755), None),
        (_ti("dev/loop0", tarfile.BLKTYPE, 0o660, gid=6, devmajor=7, devminor=0), None),
        (_ti("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
        (_ti("srv", tarfile.DIRTYPE, 0o755), None),
        (_ti("srv/fifo", tarfile.FIFOTYPE, 0o644), None),
        (_ti("srv/link", tarfile.SYMTYPE, 0o777, linkname="plain"), None),
        (_ti("srv/owned", tarfile.DIRTYPE, 0o750, 1000, 1000), None),
        (_ti("srv/owned/file", mode=0o640, uid=1000, gid=1000), b"owned by app\n"),
        (_ti("srv/plain"), b"plain\n"),
        (_ti("srv/ro", mode=0o444), b"read only\n"),
        (_ti("srv/sgid", mode=0o2755, gid=50), b"setgid\n"),
        (_ti("srv/sticky", tarfile.DIRTYPE, 0o1777), None),
        (_ti("srv/suid", mode=0o4755), b"setuid\n"),
        (_ti("dev/null-link", tarfile.LNKTYPE, 0o666, linkname="dev/null"), None),
        (_ti("srv/suid-link", tarfile.LNKTYPE, 0o4755, linkname="srv/suid"), None),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


# ------------------------------------------------------------------ pure parts (no user) -----

def test_default_store_root_rules():
    assert default_store_root(0, {"XDG_DATA_HOME": "/x"}) == SYSTEM_ROOT
    assert default_store_root(1000, {"XDG_DATA_HOME": "/data", "HOME": "/h"}) == \
        Path("/data/pyunion")
    assert default_store_root(1000, {"HOME": "/h"}) == Path("/h/.local/share/pyunion")
    # a relative XDG_DATA_HOME is invalid per the XDG spec and ignored
    assert default_store_root(1000, {"XDG_DATA_HOME": "rel", "HOME": "/h"}) == \
        Path("/h/.local/share/pyunion")


def _st(mode: int, uid: int, gid: int, size: int = 0) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, size, 0, 0, 0))


def test_override_decisions():
    ids = RootlessIds(1234, 1234)
    assert disk_mode(stat.S_IFREG | 0o4755) == 0o755
    assert disk_mode(stat.S_IFREG | 0o444) == 0o644
    assert disk_mode(stat.S_IFDIR | 0o1555) == 0o755
    plain = Override(0, 0, stat.S_IFREG | 0o644)
    assert not needs_override(plain, ids, _st(stat.S_IFREG | 0o644, 1234, 1234))
    assert needs_override(plain, ids, _st(stat.S_IFREG | 0o644, 1234, 99))
    assert needs_override(Override(1000, 1000, stat.S_IFREG | 0o644), ids,
                          _st(stat.S_IFREG | 0o644, 1234, 1234))
    dev = Override(0, 0, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert needs_override(dev, ids, _st(stat.S_IFREG | 0o666, 1234, 1234))
    m = _ti("d", tarfile.BLKTYPE, 0o660, 0, 6, devmajor=7, devminor=1)
    assert entry_override(m) == Override(0, 6, stat.S_IFBLK | 0o660, os.makedev(7, 1))
    # the writer: an empty stand-in file with a device override is archived as the device
    assert recorded_kind(stat.S_IFREG | 0o600, 0, dev) == stat.S_IFCHR
    assert recorded_kind(stat.S_IFREG | 0o600, 5, dev) == stat.S_IFREG
    assert recorded_kind(stat.S_IFREG | 0o600, 0, None) == stat.S_IFREG
    assert recorded_owner(_st(stat.S_IFREG | 0o755, 1234, 1234), None, ids) == (0, 0, 0o755)
    assert recorded_owner(_st(stat.S_IFREG | 0o755, 1234, 1234), None, None) == \
        (1234, 1234, 0o755)
    assert recorded_owner(_st(stat.S_IFREG | 0o755, 1234, 1234),
                          Override(7, 8, stat.S_IFREG | 0o4711), ids) == (7, 8, 0o4711)


def test_override_xattrs_never_leave_or_enter_through_pax(tmp_path):
    """A layer's own PAX override xattr is dropped on import (the header is the truth), and the
    writer never archives one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = _ti("f", size=1)
        ti.pax_headers = {"SCHILY.xattr." + OVERRIDE_XATTR: "0:0:4755:file",
                          "SCHILY.xattr.user.fuseoverlayfs.override_stat": "0:0:4755:file",
                          "SCHILY.xattr.user.keep": "yes"}
        tf.addfile(ti, io.BytesIO(b"x"))
    dest = tmp_path / "layer"
    dest.mkdir()
    res = apply_tar(io.BytesIO(buf.getvalue()), dest, rootless=False)
    assert sorted(os.listxattr(dest / "f")) == ["user.keep"]
    assert sum("dropped xattr" in n for n in res.notes) == 2
    os.setxattr(dest / "f", OVERRIDE_XATTR, b"0:0:0600:file")
    out = io.BytesIO()
    write_layer(dest, out, "none")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        (m,) = tf.getmembers()
    assert m.mode == 0o600
    assert set(m.pax_headers) == {"SCHILY.xattr.user.keep"}


# ------------------------------------------------------------------ as a real user -----------

@pytest.fixture(scope="module")
def user():
    if XATTR_REASON:
        pytest.skip(XATTR_REASON)
    with unprivileged_user() as u:
        yield u


@pytest.fixture(scope="module")
def image(user: User) -> Path:
    """The test image, built by root in a directory the user can read."""
    src = user.home / "src-image"
    build_image(src, [*base_layers(), special_layer()], "oci", name=NAME)
    for dirpath, _, _ in os.walk(src):
        os.chmod(dirpath, 0o755)
    return src


def _store(user: User) -> Path:
    return user.home / ".local/share/pyunion"


def _inspect(user: User, name: str) -> dict:
    return json.loads(user.pyunion("image", "inspect", name).stdout)


FS_PATHS = """
import json, sys
from snapshotter.snapshots import Snapshotter
with Snapshotter(sys.argv[1]) as sn:
    print(json.dumps([str(sn.fs_path(c)) for c in sys.argv[2:]]))
"""


def _fs_paths(user: User, root: Path, chains: list[str]) -> list[Path]:
    return [Path(p) for p in json.loads(user.python(FS_PATHS, str(root), *chains).stdout)]


@pytest.fixture(scope="module")
def imported(user: User, image: Path) -> dict:
    """`pyunion image import` as the user, into its default store (no --root)."""
    r = user.pyunion("image", "import", str(image), "--name", NAME)
    assert f"imported {NAME}" in r.stdout
    assert _store(user).is_dir(), "the per-user default store was not used"
    return _inspect(user, NAME)


@needs_user
def test_user_store_root_follows_xdg(user: User):
    code = "from snapshotter.store_paths import default_store_root; print(default_store_root())"
    assert user.python(code).stdout.strip() == str(_store(user))
    env = user.env(XDG_DATA_HOME=str(user.home / "xdg"))
    assert user.python(code, env=env).stdout.strip() == str(user.home / "xdg/pyunion")


@needs_user
def test_import_records_owners_modes_and_devices(user: User, imported: dict):
    top = _fs_paths(user, _store(user), [imported["layers"][-1]["chain_id"]])[0]
    for rel, want in EXPECTED_OVERRIDES.items():
        p = top / rel
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (user.uid, user.gid), rel
        assert stat.S_IMODE(st.st_mode) & 0o7000 == 0, f"{rel}: special bit kept on disk"
        assert stat.S_IMODE(st.st_mode) & 0o600 == 0o600, f"{rel}: not u+rw for the user"
        names = os.listxattr(p, follow_symlinks=False)
        got = os.getxattr(p, OVERRIDE_XATTR).decode() if OVERRIDE_XATTR in names else None
        assert got == want, rel
    for dev in ("dev/null", "dev/loop0"):
        st = os.lstat(top / dev)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0, f"{dev}: not an empty stand-in"
    assert os.lstat(top / "dev/null-link").st_ino == os.lstat(top / "dev/null").st_ino
    assert os.lstat(top / "srv/link").st_uid == user.uid
    base = _fs_paths(user, _store(user), [imported["layers"][0]["chain_id"]])[0]
    assert os.getxattr(base / "home/app", OVERRIDE_XATTR) == b"1000:1000:0755:dir"
    assert os.getxattr(base / "tmp", OVERRIDE_XATTR) == b"0:0:1777:dir"
    assert OVERRIDE_XATTR not in os.listxattr(base / "root")     # 0:0 0700: the disk says it
    assert OVERRIDE_XATTR not in os.listxattr(base / "bin/busybox")


def _umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    r = subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return bundle / "rootfs"


def _owner_mode(p: Path) -> tuple[int, int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@needs_user
@needs_umoci
def test_export_as_user_checked_by_umoci_as_root(user: User, imported: dict, tmp_path):
    out = user.home / "export-v1"
    user.pyunion("image", "export", NAME, str(out))
    rootfs = _umoci_unpack(out, "v1", tmp_path / "bundle")
    assert _owner_mode(rootfs / "srv/owned") == (1000, 1000, 0o750)
    assert _owner_mode(rootfs / "srv/owned/file") == (1000, 1000, 0o640)
    assert _owner_mode(rootfs / "srv/suid") == (0, 0, 0o4755)
    assert _owner_mode(rootfs / "srv/sgid") == (0, 50, 0o2755)
    assert _owner_mode(rootfs / "srv/sticky") == (0, 0, 0o1777)
    assert _owner_mode(rootfs / "home/app") == (1000, 1000, 0o755)
    st = os.lstat(rootfs / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    st = os.lstat(rootfs / "dev/loop0")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0) and st.st_gid == 6
    assert not (rootfs / "etc/deleted-in-image").exists()


def _retar_digests(paths: list[Path], ids: RootlessIds | None) -> list[str]:
    out = []
    for p in paths:
        with open(os.devnull, "wb") as sink:
            out.append(write_layer(p, sink, "none", ids=ids).diff_id)
    return out


RETAR = """
import json, os, sys
from snapshotter.applier import rootless_ids
from snapshotter.layer_writer import write_layer
out = []
for p in sys.argv[1:]:
    with open(os.devnull, "wb") as sink:
        out.append(write_layer(p, sink, "none", ids=rootless_ids()).diff_id)
print(json.dumps(out))
"""


@needs_user
def test_same_layers_as_root(user: User, image: Path, imported: dict, tmp_path):
    """Root's store and the user's hold the same image: the same blobs on export, and every
    stored layer written back as a tar gives the same DiffID (owners, modes, devices agree)."""
    root_store = tmp_path / "root-store"
    with ImageStore(root_store, rootless=False) as st:
        rec = st.import_path(image, NAME)
        st.export(NAME, tmp_path / "root-export")
        root_paths = [st.snapshots.fs_path(c) for c in rec.chain_ids]
        root_digests = _retar_digests(root_paths, None)
    user_out = user.home / "export-same"
    user.pyunion("image", "export", NAME, str(user_out))
    blobs = {"root": sorted(os.listdir(tmp_path / "root-export/blobs/sha256")),
             "user": sorted(os.listdir(user_out / "blobs/sha256"))}
    assert blobs["root"] == blobs["user"]
    assert [x["digest"] for x in imported["layers"]] == [d["digest"] for d in rec.layers]
    paths = _fs_paths(user, _store(user), [x["chain_id"] for x in imported["layers"]])
    user_digests = json.loads(user.python(RETAR, *map(str, paths)).stdout)
    assert user_digests == root_digests
    # the root store really chowned and created devices: the two stores differ on disk
    assert stat.S_ISCHR(os.lstat(root_paths[-1] / "dev/null").st_mode)
    assert OVERRIDE_XATTR not in os.listxattr(root_paths[-1] / "srv/suid")


def make_changes(upper: str | Path, rootless: bool) -> None:
    """The same changes made directly in an upper, by root (chown, mknod) or rootless (override
    xattrs); called by the user through a subprocess."""
    up = Path(upper)

    def owned(p: Path, uid: int, gid: int, mode: int, rdev: int = 0) -> None:
        kind = stat.S_IFMT(mode)
        if rootless:
            os.chmod(p, disk_mode(mode))
            os.setxattr(p, OVERRIDE_XATTR, Override(uid, gid, mode, rdev).encode())
        else:
            if kind != stat.S_IFREG or not rdev:
                os.chown(p, uid, gid)
                os.chmod(p, stat.S_IMODE(mode))

    for d in ("srv", "dev", "etc"):
        (up / d).mkdir(mode=0o755)
        os.chmod(up / d, 0o755)
    (up / "hello.txt").write_text("hello\n")
    os.chmod(up / "hello.txt", 0o644)
    (up / "srv/app-data").write_text("app\n")
    owned(up / "srv/app-data", 1000, 1000, stat.S_IFREG | 0o600)
    (up / "srv/tool").write_text("tool\n")
    owned(up / "srv/tool", 0, 0, stat.S_IFREG | 0o4755)
    if rootless:
        (up / "dev/zero").touch()
        owned(up / "dev/zero", 0, 0, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    else:
        os.mknod(up / "dev/zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
        os.chmod(up / "dev/zero", 0o666)
    (up / "etc/.wh.motd").touch()
    os.symlink("tool", up / "srv/link")
    for dirpath, dirnames, filenames in os.walk(up, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (FIXED_MTIME, FIXED_MTIME),
                     follow_symlinks=False)


MAKE_CHANGES = """
import sys
from snapshotter.snapshots import Snapshotter
from tests.snapshotter.test_rootless_images import make_changes
with Snapshotter(sys.argv[1]) as sn:
    sn.prepare(sys.argv[2], sys.argv[3], labels={"pyunion.image": sys.argv[4]})
    make_changes(sn.upper_path(sys.argv[2]), rootless=True)
"""


def _last_layer(layout: Path) -> tarfile.TarFile:
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdigest).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes())))


@needs_user
@needs_umoci
def test_commit_of_upper_changed_directly(user: User, image: Path, imported: dict, tmp_path):
    top = imported["layers"][-1]["chain_id"]
    user.python(MAKE_CHANGES, str(_store(user)), "ctr-direct", top, NAME)
    r = user.pyunion("image", "commit", "ctr-direct", "rootless:direct", "-m", "direct")
    assert "committed rootless:direct" in r.stdout
    user_diff = _inspect(user, "rootless:direct")["layers"][-1]["diff_id"]
    out = user.home / "export-direct"
    user.pyunion("image", "export", "rootless:direct", str(out))
    with _last_layer(out) as tf:
        members = {m.name: m for m in tf.getmembers()}
    for m in members.values():
        assert not any("override" in k for k in m.pax_headers), m.name
    got = {n: (m.uid, m.gid, m.mode, m.type) for n, m in members.items()}
    assert got["hello.txt"] == (0, 0, 0o644, tarfile.REGTYPE)
    assert got["srv"] == (0, 0, 0o755, tarfile.DIRTYPE)
    assert got["srv/app-data"] == (1000, 1000, 0o600, tarfile.REGTYPE)
    assert got["srv/tool"] == (0, 0, 0o4755, tarfile.REGTYPE)
    assert got["srv/link"][:2] == (0, 0) and got["srv/link"][3] == tarfile.SYMTYPE
    assert got["dev/zero"] == (0, 0, 0o666, tarfile.CHRTYPE)
    assert (members["dev/zero"].devmajor, members["dev/zero"].devminor) == (1, 5)
    assert "etc/.wh.motd" in got
    rootfs = _umoci_unpack(out, "direct", tmp_path / "bundle")
    assert _owner_mode(rootfs / "srv/tool") == (0, 0, 0o4755)
    assert not (rootfs / "etc/motd").exists()
    # root making the same changes for real in its own store commits the very same layer
    with ImageStore(tmp_path / "root-store", rootless=False) as st:
        rec = st.import_path(image, NAME)
        st.snapshots.prepare("ctr-direct", rec.top, labels={"pyunion.image": NAME})
        make_changes(st.snapshots.upper_path("ctr-direct"), rootless=False)
        root_rec = st.commit("ctr-direct", "root:direct", "direct")
    assert root_rec.diff_ids[-1] == user_diff


MOUNT_AND_CHANGE = """
import sys
from pathlib import Path
from snapshotter.snapshots import Snapshotter, mount_snapshot
with Snapshotter(sys.argv[1]) as sn:
    mounts = sn.prepare(sys.argv[2], sys.argv[3], labels={"pyunion.image": sys.argv[4]})
mount_snapshot(mounts, Path(sys.argv[5]))
"""


@needs_user
@needs_umoci
def test_commit_through_rootless_mount(user: User, imported: dict, tmp_path):
    """Changes made through a pyunion mount run by the user (fusermount3) are committed with the
    owners they have in the image: what the user creates is root's (the user is root in a
    rootless container), a deletion is a whiteout, lower layers keep their recorded owners."""
    top = imported["layers"][-1]["chain_id"]
    mnt = user.home / "mnt"
    mnt.mkdir()
    os.chown(mnt, user.uid, user.gid)
    try:
        user.python(MOUNT_AND_CHANGE, str(_store(user)), "ctr-mount", top, NAME, str(mnt))
        script = (f"cd {mnt} && echo new > new.txt && chmod 4750 new.txt && mkdir newdir && "
                  "rm etc/motd && echo more >> srv/plain")
        user.run(["sh", "-c", script])
    finally:
        user.pyunion("umount", str(mnt), check=False, timeout=60)
        force_unmount(mnt)
    user.pyunion("image", "commit", "ctr-mount", "rootless:mount")
    out = user.home / "export-mount"
    user.pyunion("image", "export", "rootless:mount", str(out))
    with _last_layer(out) as tf:
        got = {m.name: (m.uid, m.gid, m.mode, m.type) for m in tf.getmembers()}
    assert got["new.txt"] == (0, 0, 0o4750, tarfile.REGTYPE)
    assert got["newdir"][:2] == (0, 0) and got["newdir"][3] == tarfile.DIRTYPE
    assert "etc/.wh.motd" in got
    assert got["srv/plain"] == (0, 0, 0o644, tarfile.REGTYPE)        # copied up
    assert got["srv"] == (0, 0, 0o755, tarfile.DIRTYPE)
    assert "srv/owned/file" not in got
    rootfs = _umoci_unpack(out, "mount", tmp_path / "bundle")
    assert (rootfs / "srv/plain").read_text() == "plain\nmore\n"
    assert _owner_mode(rootfs / "new.txt") == (0, 0, 0o4750)
    assert _owner_mode(rootfs / "srv/owned/file") == (1000, 1000, 0o640)
    assert not (rootfs / "etc/motd").exists()


@needs_user
def test_refused_layer_as_user_leaves_the_store_as_it_was(user: User, imported: dict):
    """A hostile layer is refused for a user as for root: one line, exit 1, nothing left."""
    bad = user.home / "bad-image"
    forged = io.BytesIO()
    with tarfile.open(fileobj=forged, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = _ti("srv", tarfile.DIRTYPE, 0o755)
        ti.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
        tf.addfile(ti)
    build_image(bad, [*base_layers(), forged.getvalue()], "oci", name="bad:1")
    for dirpath, _, _ in os.walk(bad):
        os.chmod(dirpath, 0o755)
    before = sorted(os.listdir(_store(user) / "snapshots"))
    images_before = user.pyunion("image", "ls", "-q").stdout
    r = user.pyunion("image", "import", str(bad), "--name", "bad:1", check=False)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "trusted.overlay.opaque" in r.stderr
    assert sorted(os.listdir(_store(user) / "snapshots")) == before
    assert user.pyunion("image", "ls", "-q").stdout == images_before
