"""Per-operation behaviour of a real pyunion mount over two lowers (OCI and kernel dialects)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.mounting import mounted
from unionfs import libc

pytestmark = [pytest.mark.root, pytest.mark.fuse]   # chown

def renameat2(a: Path, b: Path, flags: int) -> None:
    libc.renameat2(str(a), str(b), flags)


class Stack:
    def __init__(self, base: Path):
        self.base = base
        self.up, self.l1, self.l2 = base / "up", base / "l1", base / "l2"
        self.work, self.mnt = base / "work", base / "mnt"
        for d in (self.up, self.l1, self.l2, self.work, self.mnt):
            d.mkdir()

    def mount(self, upper: bool = True, options: tuple[str, ...] = ()):
        return mounted(self.up if upper else None, [self.l1, self.l2], self.mnt,
                       options=([f"workdir={self.work}"] if upper else []) + list(options))


def build_lowers(s: Stack) -> None:
    """l2 (bottom): plain tree. l1: overrides, OCI whiteout, kernel whiteout, opaque dirs."""
    (s.l2 / "keep").write_text("keep-l2")
    (s.l2 / "over").write_text("over-l2")
    (s.l2 / "gone").write_text("gone-l2")
    (s.l2 / "kgone").write_text("kgone-l2")
    (s.l2 / "dir").mkdir()
    (s.l2 / "dir" / "low").write_text("low")
    (s.l2 / "opq").mkdir()
    (s.l2 / "opq" / "hidden").write_text("hidden")
    (s.l2 / "xopq").mkdir()
    (s.l2 / "xopq" / "hidden").write_text("hidden")
    (s.l2 / "big").write_bytes(os.urandom(1 << 20))
    (s.l2 / "hl1").write_text("linked")
    os.link(s.l2 / "hl1", s.l2 / "hl2")
    os.symlink("keep", s.l2 / "sym")
    (s.l2 / "ro").write_text("root only")
    os.chmod(s.l2 / "ro", 0o644)
    os.setxattr(s.l2 / "keep", "user.color", b"blue")
    os.chown(s.l2 / "keep", 1234, 5678)
    os.chmod(s.l2 / "keep", 0o640)
    os.utime(s.l2 / "keep", ns=(1_000_000_123, 2_000_000_456))

    (s.l1 / "over").write_text("over-l1")
    (s.l1 / ".wh.gone").touch()
    os.mknod(s.l1 / "kgone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (s.l1 / "dir").mkdir()
    (s.l1 / "dir" / "top").write_text("top")
    (s.l1 / "opq").mkdir()
    (s.l1 / "opq" / ".wh..wh..opq").touch()
    (s.l1 / "opq" / "new").write_text("new")
    (s.l1 / "xopq").mkdir()
    os.setxattr(s.l1 / "xopq", "trusted.overlay.opaque", b"y")


@pytest.fixture
def s(tmp_path):
    st = Stack(tmp_path)
    build_lowers(st)
    return st


def names(p: Path) -> set[str]:
    return set(os.listdir(p))


def test_merged_view_and_whiteout_dialects(s):
    with s.mount():
        m = s.mnt
        assert names(m) == {"keep", "over", "dir", "opq", "xopq", "big", "hl1", "hl2", "sym",
                            "ro"}
        assert (m / "over").read_text() == "over-l1"
        assert names(m / "dir") == {"low", "top"}
        assert names(m / "opq") == {"new"}
        assert names(m / "xopq") == set()
        for hidden in ("gone", "kgone", ".wh.gone", "opq/.wh..wh..opq"):
            assert not os.path.lexists(m / hidden)
        assert os.readlink(m / "sym") == "keep"
        assert (m / "sym").read_text() == "keep-l2"
        entries = os.listdir(m)
        assert len(entries) == len(set(entries))
        out = subprocess.run(["ls", "-a", str(m / "dir")], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[:2] == [".", ".."]
        assert os.stat(m / "dir" / "..").st_ino == os.stat(m).st_ino
        # lower files never change
    assert (s.l2 / "over").read_text() == "over-l2"


def test_copy_up_keeps_metadata_and_lower_untouched(s):
    with s.mount():
        m = s.mnt
        before = os.lstat(m / "keep")
        with open(m / "keep", "a") as f:
            f.write("+")
        after = os.lstat(m / "keep")
        assert (m / "keep").read_text() == "keep-l2+"
        assert after.st_ino == before.st_ino
        assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (1234, 5678, 0o640)
        assert os.getxattr(m / "keep", "user.color") == b"blue"
    up = os.lstat(s.up / "keep")
    assert (up.st_uid, up.st_gid, stat.S_IMODE(up.st_mode)) == (1234, 5678, 0o640)
    assert os.getxattr(s.up / "keep", "user.color") == b"blue"
    assert (s.l2 / "keep").read_text() == "keep-l2"
    assert os.lstat(s.l2 / "keep").st_mtime_ns == 2_000_000_456


def test_copy_up_on_chmod_copies_times_to_the_nanosecond(s):
    with s.mount():
        os.chmod(s.mnt / "keep", 0o600)
        st = os.lstat(s.mnt / "keep")
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_mtime_ns == 2_000_000_456
        assert st.st_atime_ns == 1_000_000_123
    assert (s.up / "keep").read_text() == "keep-l2"
    assert not list(s.work.glob("work/*")), "nothing staged may remain"


def test_parent_dirs_copied_up_first_with_metadata(s):
    os.chmod(s.l2 / "dir", 0o751)
    os.chown(s.l2 / "dir", 42, 43)
    (s.l2 / "deep" / "er").mkdir(parents=True)
    (s.l2 / "deep" / "er" / "f").write_text("f")
    with s.mount(), open(s.mnt / "deep" / "er" / "f", "a") as f:
        f.write("!")
    assert (s.up / "deep" / "er" / "f").read_text() == "f!"
    assert stat.S_IMODE(os.lstat(s.up / "deep").st_mode) == \
        stat.S_IMODE(os.lstat(s.l2 / "deep").st_mode)


def test_sparse_file_stays_sparse(s):
    with open(s.l2 / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"x")
    with s.mount():
        with open(s.mnt / "sparse", "r+b") as f:
            f.seek(0)
            f.write(b"y")
        assert os.path.getsize(s.mnt / "sparse") == 64 << 20
    st = os.lstat(s.up / "sparse")
    assert st.st_blocks * 512 < 1 << 20


def test_unlink_leaves_whiteout_only_where_a_lower_has_the_name(s):
    with s.mount():
        m = s.mnt
        os.unlink(m / "keep")
        (m / "fresh").write_text("x")
        os.unlink(m / "fresh")
        assert not os.path.lexists(m / "keep")
        with pytest.raises(FileNotFoundError):
            os.unlink(m / "keep")
        with pytest.raises(IsADirectoryError):
            os.unlink(m / "dir")
    assert (s.up / ".wh.keep").exists()
    assert not (s.up / ".wh.fresh").exists() and not (s.up / "fresh").exists()


def test_rmdir_rules_and_mkdir_over_whiteout_is_opaque(s):
    with s.mount():
        m = s.mnt
        with pytest.raises(OSError) as e:
            os.rmdir(m / "dir")
        assert e.value.errno == errno.ENOTEMPTY
        os.unlink(m / "dir" / "low")
        os.unlink(m / "dir" / "top")
        os.rmdir(m / "dir")
        assert not os.path.exists(m / "dir")
        os.mkdir(m / "dir")
        assert names(m / "dir") == set()
        (m / "dir" / "n").write_text("n")
        assert names(m / "dir") == {"n"}
        with pytest.raises(NotADirectoryError):
            os.rmdir(m / "keep")
    assert (s.up / "dir" / ".wh..wh..opq").exists()
    assert not (s.up / ".wh.dir").exists()


def test_rename_file_across_layers(s):
    with s.mount():
        m = s.mnt
        os.rename(m / "over", m / "dir" / "moved")
        assert (m / "dir" / "moved").read_text() == "over-l1"
        assert not os.path.lexists(m / "over")
    assert (s.up / ".wh.over").exists()
    assert (s.up / "dir" / "moved").read_text() == "over-l1"


def test_rename_lower_directory_succeeds(s):
    """Better than overlayfs's EXDEV: apt and dpkg rename directories that come from images."""
    with s.mount():
        m = s.mnt
        os.rename(m / "dir", m / "dir2")
        assert names(m / "dir2") == {"low", "top"}
        assert not os.path.lexists(m / "dir")
        (m / "dir").mkdir()
        assert names(m / "dir") == set()
    with s.mount():
        assert names(s.mnt / "dir2") == {"low", "top"}
        assert (s.mnt / "dir2" / "low").read_text() == "low"


def test_rename_noreplace_and_exchange(s):
    with s.mount():
        m = s.mnt
        (m / "a").write_text("A")
        (m / "b").write_text("B")
        with pytest.raises(FileExistsError):
            renameat2(m / "a", m / "b", 1)
        renameat2(m / "a", m / "b", 2)
        assert (m / "a").read_text() == "B" and (m / "b").read_text() == "A"
        renameat2(m / "keep", m / "over", 2)
        assert (m / "over").read_text() == "keep-l2"
        assert (m / "keep").read_text() == "over-l1"


def test_rename_over_existing_file_replaces_it(s):
    with s.mount():
        m = s.mnt
        os.rename(m / "keep", m / "over")
        assert (m / "over").read_text() == "keep-l2"
        assert not os.path.lexists(m / "keep")


def test_lower_hardlinks_stay_one_file_also_after_remount(s):
    with s.mount():
        m = s.mnt
        a0 = os.lstat(m / "hl1")
        assert a0.st_ino == os.lstat(m / "hl2").st_ino
        with open(m / "hl1", "a") as f:
            f.write("+1")
        assert (m / "hl2").read_text() == "linked+1"
    with s.mount():
        m = s.mnt
        assert (m / "hl2").read_text() == "linked+1"
        with open(m / "hl2", "a") as f:
            f.write("+2")
        assert (m / "hl1").read_text() == "linked+1+2"
        assert os.lstat(m / "hl1").st_ino == os.lstat(m / "hl2").st_ino == a0.st_ino
    assert (s.l2 / "hl1").read_text() == "linked"


def test_link_copies_up_and_counts_links(s):
    with s.mount():
        m = s.mnt
        os.link(m / "keep", m / "keep2")
        assert os.lstat(m / "keep").st_nlink == 2
        assert os.lstat(m / "keep").st_ino == os.lstat(m / "keep2").st_ino
        with open(m / "keep2", "a") as f:
            f.write("!")
        assert (m / "keep").read_text() == "keep-l2!"


def test_inode_numbers_stable_across_copy_up_remount_and_ro_mount(s):
    with s.mount(upper=False):
        ro = {n: os.lstat(s.mnt / n).st_ino for n in ("keep", "over", "dir", "big")}
    with s.mount():
        rw = {n: os.lstat(s.mnt / n).st_ino for n in ro}
        assert rw == ro
        os.chmod(s.mnt / "keep", 0o600)
        (s.mnt / "dir" / "new").write_text("n")
        assert os.lstat(s.mnt / "keep").st_ino == ro["keep"]
        assert os.lstat(s.mnt / "dir").st_ino == ro["dir"]
        all_inos = [os.lstat(s.mnt / n).st_ino for n in os.listdir(s.mnt) if n != "hl2"]
        assert len(all_inos) == len(set(all_inos))
    with s.mount():
        assert os.lstat(s.mnt / "keep").st_ino == ro["keep"]


@pytest.mark.parametrize("mode", ["passthrough=upper", "passthrough=off", "backend=pyfuse3"])
def test_reader_opened_before_copy_up_sees_new_data(s, mode):
    """Overlayfs's rule, kept wherever lower files are not passed through (rootless mounts,
    pyfuse3, passthrough=upper/off); the default's one exception is pinned in
    tests/transport/test_union_passthrough.py."""
    with s.mount(options=(mode,)):
        m = s.mnt
        with open(m / "over", "rb", buffering=0) as reader:
            assert reader.read(3) == b"ove"
            with open(m / "over", "r+b") as w:
                w.write(b"NEW")
            reader.seek(0)
            assert reader.read() == b"NEWr-l1"


def test_meta_names_cannot_be_created_and_long_names(s):
    with s.mount():
        m = s.mnt
        for mk in (lambda p: p.write_text("x"), os.mkdir, lambda p: os.symlink("x", p)):
            with pytest.raises(PermissionError):
                mk(m / ".wh.evil")
        with pytest.raises(OSError) as e:
            (m / ("n" * 252)).write_text("x")
        assert e.value.errno == errno.ENAMETOOLONG
        (m / ("n" * 251)).write_text("ok")
        assert os.statvfs(m).f_namemax == 251
        with pytest.raises(OSError) as e:
            os.mknod(m / "wh", stat.S_IFCHR | 0o600, 0)
        assert e.value.errno == errno.EPERM


def test_readonly_mount(s):
    with s.mount(upper=False):
        m = s.mnt
        assert (m / "over").read_text() == "over-l1"
        for op in (lambda: (m / "x").write_text("x"), lambda: os.unlink(m / "keep"),
                   lambda: os.chmod(m / "keep", 0o600), lambda: os.mkdir(m / "d")):
            with pytest.raises(OSError) as e:
                op()
            assert e.value.errno == errno.EROFS


def test_special_files_symlinks_xattrs(s):
    with s.mount():
        m = s.mnt
        os.mkfifo(m / "fifo")
        assert stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)
        os.mknod(m / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert os.lstat(m / "null").st_rdev == os.makedev(1, 3)
        os.symlink("dir/low", m / "ln")
        assert (m / "ln").read_text() == "low"
        os.setxattr(m / "over", "user.k", b"v")
        assert os.getxattr(m / "over", "user.k") == b"v"
        assert "user.k" in os.listxattr(m / "over")
        os.removexattr(m / "over", "user.k")
        with pytest.raises(OSError) as e:
            os.getxattr(m / "over", "user.k")
        assert e.value.errno == errno.ENODATA
        assert not any(x.startswith("trusted.") for x in os.listxattr(m / "xopq"))


def test_unlink_right_after_rename_over_a_lower_file(s):
    """rename(a, b) over a lower b, then unlink(b): the kernel still holds b's dentry (moved
    there from a), so no LOOKUP comes in between; the core must not answer the unlink from
    what it resolved *during* the rename (the old, lower b: it left a whiteout and kept the
    moved file visible)."""
    with s.mount():
        m = s.mnt
        assert (m / "keep").read_text() == "keep-l2"
        (m / "newf").write_bytes(b"moved")
        os.rename(m / "newf", m / "keep")
        os.unlink(m / "keep")
        assert not (m / "keep").exists()
        assert "keep" not in os.listdir(m)


def test_absent_xattr_answered_after_every_change(s):
    """The core answers a repeated absent xattr from memory (the kernel asks for
    security.capability before each write): every change must end that answer, whichever
    name of the file it goes through, and writes through the mount in between change nothing."""
    with s.mount():
        m = s.mnt
        f = m / "new"
        f.write_bytes(b"x")
        os.link(f, m / "other")
        for _ in range(2):
            with pytest.raises(OSError) as e:
                os.getxattr(f, "user.k")
            assert e.value.errno == errno.ENODATA
        with open(f, "ab") as fh:
            for _ in range(3):
                fh.write(b"y")
                fh.flush()
        os.setxattr(m / "other", "user.k", b"1")
        assert os.getxattr(f, "user.k") == b"1"
        os.removexattr(f, "user.k")
        with pytest.raises(OSError) as e:
            os.getxattr(m / "other", "user.k")
        assert e.value.errno == errno.ENODATA
        os.setxattr(f, "user.k", b"2")
        assert os.getxattr(m / "other", "user.k") == b"2"
        assert (m / "other").read_bytes() == b"xyyy"


@pytest.fixture
def shared_s():
    """A stack other users can reach (pytest's tmp dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="pyunion-perm-"))
    os.chmod(base, 0o755)
    st = Stack(base)
    build_lowers(st)
    yield st
    shutil.rmtree(base, ignore_errors=True)


def test_new_objects_belong_to_caller_and_permissions_hold(shared_s):
    s = shared_s
    os.chmod(s.l2, 0o755)
    with s.mount():
        m = s.mnt
        os.chmod(m, 0o777)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "sh", "-c", f"umask 027; echo hi > {m}/mine; echo x >> {m}/ro"],
                           capture_output=True, text=True, check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        st = os.lstat(m / "mine")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o640)
        assert (m / "ro").read_text() == "root only"


def test_write_by_another_user_clears_setuid_and_setgid(shared_s):
    """As on any filesystem (and kernel overlayfs): a write by a user without CAP_FSETID drops
    setuid and group-executable setgid, on a lower file being copied up and on an upper file;
    root's write keeps them."""
    s = shared_s
    os.chmod(s.l2, 0o755)
    for name, mode in (("lsuid", 0o4777), ("lsgid", 0o2777)):
        (s.l2 / name).write_text("x")
        os.chmod(s.l2 / name, mode)
    with s.mount():
        m = s.mnt
        for name, mode in (("usuid", 0o4777), ("usgid", 0o2777), ("rootw", 0o4777)):
            (m / name).write_text("x")
            os.chmod(m / name, mode)
        script = "; ".join(f"echo y >> {m}/{n}" for n in ("lsuid", "lsgid", "usuid", "usgid"))
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "sh", "-c", script], check=True, timeout=60)
        with open(m / "rootw", "a") as f:
            f.write("y")
        modes = {n: stat.S_IMODE(os.lstat(m / n).st_mode)
                 for n in ("lsuid", "lsgid", "usuid", "usgid", "rootw")}
        assert modes == {"lsuid": 0o777, "lsgid": 0o777, "usuid": 0o777, "usgid": 0o777,
                         "rootw": 0o4777}
        assert stat.S_IMODE(os.lstat(s.up / "lsuid").st_mode) == 0o777
    assert stat.S_IMODE(os.lstat(s.l2 / "lsuid").st_mode) == 0o4777   # the lower is untouched


def test_large_directory_merge(s):
    for i in range(5000):
        (s.l2 / f"f{i}").touch()
    for i in range(0, 5000, 2):
        (s.l1 / f".wh.f{i}").touch()
    for i in range(5000, 6000):
        (s.l1 / f"f{i}").touch()
    with s.mount():
        listing = os.listdir(s.mnt)
        files = [n for n in listing if n.startswith("f") and n[1:].isdigit()]
        assert len(files) == len(set(files)) == 2500 + 1000


def test_readdir_offsets_stable_while_directory_changes(s):
    for i in range(300):
        (s.l2 / f"e{i:03}").touch()
    with s.mount():
        d = s.mnt
        seen = []
        with os.scandir(d) as it:
            for n, e in enumerate(it):
                seen.append(e.name)
                if n == 10:
                    (d / "zz-new").touch()
                    os.unlink(d / "e299")
        untouched = {f"e{i:03}" for i in range(299)}
        assert untouched <= set(seen)
        assert len(seen) == len(set(seen))


def test_full_upper_fails_copy_up_cleanly(tmp_path):
    """ENOSPC during copy-up: the caller gets the error, the upper holds nothing partial."""
    low, small, mnt = tmp_path / "low", tmp_path / "small", tmp_path / "mnt"
    for d in (low, small, mnt):
        d.mkdir()
    (low / "big").write_bytes(os.urandom(4 << 20))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        (small / "up").mkdir()
        (small / "work").mkdir()
        with mounted(small / "up", [low], mnt, options=[f"workdir={small / 'work'}"]):
            with pytest.raises(OSError) as e, open(mnt / "big", "ab") as f:
                f.write(b"!")
            assert e.value.errno == errno.ENOSPC
            assert (mnt / "big").read_bytes() == (low / "big").read_bytes()
            (mnt / "small").write_text("still writable")
        assert sorted(os.listdir(small / "up")) == ["small"]
        assert os.listdir(small / "work" / "work") == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_link_count_of_lower_hardlinks(tmp_path):
    """A lower file counts the names the mount shows; links from outside its layer (a store
    that shares files between layers by hardlinks) are not names of the mount."""
    s = Stack(tmp_path)
    (s.l2 / "pair1").write_text("p")
    os.link(s.l2 / "pair1", s.l2 / "pair2")
    (s.l2 / "shared").write_text("s")
    outside = tmp_path / "store-copy"
    os.link(s.l2 / "shared", outside)       # the same inode, in no layer of the mount
    os.link(s.l2 / "shared", s.l1 / "shared-too")   # and in another layer
    with s.mount():
        m = s.mnt
        assert os.lstat(s.l2 / "shared").st_nlink == 3
        assert os.lstat(m / "shared").st_nlink == 1
        assert os.lstat(m / "shared-too").st_nlink == 1
        assert os.lstat(m / "pair1").st_nlink == os.lstat(m / "pair2").st_nlink == 2
        os.unlink(m / "pair2")
        assert os.lstat(m / "pair1").st_nlink == 1
        assert sorted(os.listdir(m)) == ["pair1", "shared", "shared-too"]


def test_hardlink_group_split_by_a_crash_is_rejoined(tmp_path):
    """The daemon dying between a copy-up's rename and linking the group's other names leaves
    an upper copy of one name only. The next mount links the others on sight, so the group is
    one file again; a name whose upper file is unrelated (replaced by the user) is left alone."""
    s = Stack(tmp_path)
    (s.l2 / "sub").mkdir()
    (s.l2 / "a").write_text("old")
    os.link(s.l2 / "a", s.l2 / "sub" / "b")
    (s.l2 / "c").write_text("old-c")
    os.link(s.l2 / "c", s.l2 / "d")
    with s.mount():
        with open(s.mnt / "a", "a") as f:
            f.write("+new")
        os.unlink(s.mnt / "c")
        (s.mnt / "c").write_text("replaced")       # a new file: not the group's copy
    assert os.lstat(s.up / "sub" / "b").st_ino == os.lstat(s.up / "a").st_ino
    os.unlink(s.up / "sub" / "b")                  # the state the crash window leaves
    shutil.rmtree(s.up / "sub")
    for listing_first in (False, True):            # by lookup, and by a directory listing
        with s.mount():
            m = s.mnt
            if listing_first:
                assert sorted(os.listdir(m / "sub")) == ["b"]
            assert (m / "sub" / "b").read_text() == "old+new"
            assert os.lstat(m / "sub" / "b").st_ino == os.lstat(m / "a").st_ino
            assert os.lstat(m / "a").st_nlink == 2
            assert (m / "d").read_text() == "old-c"
            assert (m / "c").read_text() == "replaced"
        assert os.lstat(s.up / "sub" / "b").st_ino == os.lstat(s.up / "a").st_ino
        assert not (s.up / "d").exists()
        os.unlink(s.up / "sub" / "b")
        shutil.rmtree(s.up / "sub")
    assert (s.l2 / "a").read_text() == "old"
