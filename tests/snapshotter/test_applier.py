"""The layer applier on well-formed layers: every entry type and its metadata, whiteouts kept."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from snapshotter.applier import apply_tar, clean_name, resolve_in_root
from tests.imagebuild import base_layers, layer_tar

root_only = pytest.mark.root   # chown, mknod


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ti(name: str, type=tarfile.REGTYPE, data: bytes | None = None, **kw) -> tuple:
    t = tarfile.TarInfo(name)
    t.type = type
    t.mtime = kw.pop("mtime", 1_600_000_000)
    t.mode = kw.pop("mode", 0o755 if type == tarfile.DIRTYPE else 0o644)
    if data is not None:
        t.size = len(data)
    for k, v in kw.items():
        setattr(t, k, v)
    return t, data


def apply(data: bytes, dest: Path, **kw):
    dest.mkdir(exist_ok=True)
    return apply_tar(io.BytesIO(data), dest, **kw)


def test_diff_id_is_sha256_of_the_whole_stream(tmp_path):
    data = layer_tar(base_layers()[0])
    res = apply(data, tmp_path / "l")
    assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert res.size == len(data)
    assert res.notes == []


def test_busybox_base_layer_runs(tmp_path):
    apply(layer_tar(base_layers()[0]), tmp_path / "l")
    bb = tmp_path / "l/bin/busybox"
    assert os.access(bb, os.X_OK)
    assert os.readlink(tmp_path / "l/bin/sh") == "busybox"
    st1, st2 = (os.stat(tmp_path / f"l/usr/share/{n}") for n in ("hello.txt", "hello-link.txt"))
    assert (st1.st_ino, st1.st_nlink) == (st2.st_ino, 2)


def test_whiteouts_and_opaque_marker_are_kept_as_files(tmp_path):
    res = apply(layer_tar(base_layers()[1]), tmp_path / "l")
    wh = tmp_path / "l/etc/.wh.deleted-in-image"
    opq = tmp_path / "l/opt/old/.wh..wh..opq"
    assert wh.is_file() and wh.stat().st_size == 0
    assert opq.is_file()
    assert (tmp_path / "l/opt/old/new").read_text() == "new\n"
    assert res.notes == []


@root_only
def test_owner_mode_special_bits_and_times(tmp_path):
    data = tar_of(
        ti("d", tarfile.DIRTYPE, mode=0o1777, uid=1000, gid=1001, mtime=1_500_000_000),
        ti("d/suid", data=b"x", mode=0o4755, uid=1000, gid=1000, mtime=1_400_000_000),
        ti("d/sgid", data=b"y", mode=0o2711, uid=0, gid=50),
        ti("d/link", tarfile.SYMTYPE, linkname="suid", uid=1000, gid=1000, mtime=1_300_000_000),
    )
    apply(data, tmp_path / "l")
    d = tmp_path / "l/d"
    st = os.lstat(d)
    assert stat.S_IMODE(st.st_mode) == 0o1777 and (st.st_uid, st.st_gid) == (1000, 1001)
    # Directory times are set last, after its children were created.
    assert st.st_mtime == 1_500_000_000
    st = os.lstat(d / "suid")
    assert stat.S_IMODE(st.st_mode) == 0o4755, "chmod must come after chown (which clears suid)"
    assert (st.st_uid, st.st_gid, st.st_mtime) == (1000, 1000, 1_400_000_000)
    assert stat.S_IMODE(os.lstat(d / "sgid").st_mode) == 0o2711
    st = os.lstat(d / "link")
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_mtime) == (1000, 1_300_000_000)


@root_only
def test_fifo_and_devices_as_root(tmp_path):
    data = tar_of(ti("dev", tarfile.DIRTYPE), ti("dev/fifo", tarfile.FIFOTYPE, mode=0o600),
                  ti("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
                  ti("dev/loop9", tarfile.BLKTYPE, devmajor=7, devminor=9, mode=0o660))
    apply(data, tmp_path / "l")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "l/dev/fifo").st_mode)
    st = os.lstat(tmp_path / "l/dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(tmp_path / "l/dev/loop9")
    assert stat.S_ISBLK(st.st_mode) and os.minor(st.st_rdev) == 9


def test_devices_skipped_without_privilege(tmp_path):
    data = tar_of(ti("null", tarfile.CHRTYPE, devmajor=1, devminor=3))
    res = apply(data, tmp_path / "l", devices=False)
    assert not os.path.lexists(tmp_path / "l/null")
    assert any("skipped device" in n for n in res.notes)


def test_pax_xattrs_applied(tmp_path):
    t, d = ti("f", data=b"x")
    t.pax_headers = {"SCHILY.xattr.user.comment": "hello",
                     "SCHILY.xattr.user.bin": b"\xff\x00\x01".decode("utf-8", "surrogateescape")}
    apply(tar_of((t, d)), tmp_path / "l")
    assert os.getxattr(tmp_path / "l/f", "user.comment") == b"hello"
    assert os.getxattr(tmp_path / "l/f", "user.bin") == b"\xff\x00\x01"


@root_only
def test_security_capability_xattr_survives_chown(tmp_path):
    cap = bytes.fromhex("0100000200100000000000000000000000000000")  # cap_net_bind_service
    t, d = ti("ping", data=b"x", mode=0o755, uid=0)
    t.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    apply(tar_of((t, d)), tmp_path / "l")
    assert os.getxattr(tmp_path / "l/ping", "security.capability") == cap


def test_implicit_parents_created(tmp_path):
    apply(tar_of(ti("a/b/c/file", data=b"deep")), tmp_path / "l")
    assert (tmp_path / "l/a/b/c/file").read_bytes() == b"deep"
    assert stat.S_IMODE(os.stat(tmp_path / "l/a/b").st_mode) == 0o755


def test_dir_over_dir_keeps_children_and_updates_mode(tmp_path):
    data = tar_of(ti("d", tarfile.DIRTYPE), ti("d/f", data=b"1"),
                  ti("d", tarfile.DIRTYPE, mode=0o700))
    res = apply(data, tmp_path / "l")
    assert (tmp_path / "l/d/f").read_bytes() == b"1"
    assert stat.S_IMODE(os.stat(tmp_path / "l/d").st_mode) == 0o700
    assert res.notes == []


def test_root_entry_skipped(tmp_path):
    res = apply(tar_of(ti("./", tarfile.DIRTYPE, mode=0o700), ti("./f", data=b"x")),
                tmp_path / "l")
    assert (tmp_path / "l/f").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(tmp_path / "l").st_mode) != 0o700
    assert res.entries == 2


def test_gnu_sparse_and_long_names(tmp_path):
    long = "d/" + "n" * 200 + "/" + "f" * 150
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        t, d = ti(long, data=b"long")
        tf.addfile(t, io.BytesIO(d))
    apply(buf.getvalue(), tmp_path / "l")
    assert (tmp_path / "l" / long).read_bytes() == b"long"


def test_aufs_metadata_skipped(tmp_path):
    res = apply(tar_of(ti(".wh..wh.plnk", tarfile.DIRTYPE), ti(".wh..wh.plnk/123.456", data=b"")),
                tmp_path / "l")
    assert os.listdir(tmp_path / "l") == []
    assert any("aufs" in n for n in res.notes)


def test_clean_name_pure():
    assert clean_name("a/b/../c") == (["a", "c"], False)
    assert clean_name("./x/") == (["x"], False)
    assert clean_name("../../etc/passwd") == (["etc", "passwd"], True)
    assert clean_name("/abs/p") == (["abs", "p"], True)
    assert clean_name("a/../../b") == (["b"], True)
    assert clean_name(".") == ([], False)


def test_resolve_in_root_clamps_symlinks(tmp_path):
    root = tmp_path / "r"
    (root / "real").mkdir(parents=True)
    os.symlink("/", root / "abs")
    os.symlink("../../..", root / "up")
    os.symlink("real", root / "rel")
    os.symlink("loop", root / "loop")
    r = str(root)
    assert resolve_in_root(r, ["abs", "etc"]) == os.path.join(r, "etc")
    assert resolve_in_root(r, ["up", "x"]) == os.path.join(r, "x")
    assert resolve_in_root(r, ["rel", "y"]) == os.path.join(r, "real", "y")
    with pytest.raises(Exception, match="too many symlinks"):
        resolve_in_root(r, ["loop", "z"])


@root_only
def test_layer_made_by_gnu_tar_round_trips(tmp_path):
    """An independent producer: GNU tar with xattrs, hardlinks, fifos, devices, special bits."""
    import subprocess

    from tests.imagebuild import tree_snapshot
    src = tmp_path / "src"
    (src / "d/sub").mkdir(parents=True)
    (src / "d/sub/f").write_bytes(b"content" * 1000)
    os.link(src / "d/sub/f", src / "d/hard")
    os.symlink("sub/f", src / "d/sym")
    os.mkfifo(src / "d/fifo")
    os.mknod(src / "d/zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    os.chmod(src / "d/sub/f", 0o2755)
    os.chmod(src / "d/sub", 0o1777)
    os.chown(src / "d/sub/f", 1000, 1000)
    os.setxattr(src / "d/sub/f", "user.k", b"v")
    data = subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "--numeric-owner",
                           "-C", str(src), "-cf", "-", "."], capture_output=True, check=True,
                          timeout=60).stdout
    res = apply(data, tmp_path / "l")
    assert res.notes == []
    assert tree_snapshot(tmp_path / "l") == tree_snapshot(src)
    assert os.getxattr(tmp_path / "l/d/sub/f", "user.k") == b"v"
    assert os.stat(tmp_path / "l/d/hard").st_ino == os.stat(tmp_path / "l/d/sub/f").st_ino
    assert os.stat(tmp_path / "l/d/sub/f").st_mtime_ns == os.stat(src / "d/sub/f").st_mtime_ns
