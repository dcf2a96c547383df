"""A node of the union is an object, not a path: the cases of issue 9, each on a real mount.

Every test here failed on the path-based core (a node known by one name, calls built from the
layer's root path); each says which numbered case of the issue it pins.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import mounted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for FUSE and mknod")


class Stack:
    """upper, two lowers, workdir and a mount point under `base`."""

    def __init__(self, base: Path, layer_prefix: str = ""):
        self.base = base
        root = base / layer_prefix if layer_prefix else base
        self.up, self.l1, self.l2 = root / "up", root / "l1", root / "l2"
        self.work, self.mnt = root / "work", base / "m"
        for d in (self.up, self.l1, self.l2, self.work, self.mnt):
            d.mkdir(parents=True, exist_ok=True)

    def mount(self, lowers: list[Path] | None = None, upper: Path | None = None):
        return mounted(upper or self.up, lowers or [self.l1, self.l2], self.mnt,
                       options=[f"workdir={self.work}"])


@pytest.fixture
def s(oracle_base: Path) -> Iterator[Stack]:
    yield Stack(oracle_base)


def _make(kind: str, path: Path) -> None:
    if kind == "file":
        path.write_bytes(b"x")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        finally:
            sock.close()
    elif kind == "blockdev":
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 200))
    elif kind == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    elif kind == "symlink":
        os.symlink("target", path)


KINDS = ["file", "fifo", "socket", "blockdev", "chardev", "symlink"]


def _same_object(path: Path, kind: str) -> None:
    st = os.lstat(path)
    if kind == "file":
        assert path.read_bytes() == b"x"
    elif kind == "symlink":
        assert os.readlink(path) == "target"
    assert stat.S_IFMT(st.st_mode) == {
        "file": stat.S_IFREG, "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK,
        "blockdev": stat.S_IFBLK, "chardev": stat.S_IFCHR, "symlink": stat.S_IFLNK}[kind]


@pytest.mark.parametrize("where", ["upper", "lower"])
@pytest.mark.parametrize("kind", KINDS)
def test_unlink_one_name_of_a_hard_link_keeps_the_others(s: Stack, kind: str, where: str) -> None:
    """Case 1: `ln a b; ln a c; rm a` leaves b and c readable, st_nlink one less each time."""
    if where == "lower":
        _make(kind, s.l2 / "a")
    with s.mount() as m:
        if where == "upper":
            _make(kind, m / "a")
        os.link(m / "a", m / "b", follow_symlinks=False)
        os.link(m / "a", m / "c", follow_symlinks=False)
        assert os.lstat(m / "b").st_nlink == 3
        os.unlink(m / "a")
        for name in ("b", "c"):
            _same_object(m / name, kind)
            assert os.lstat(m / name).st_nlink == 2
        os.unlink(m / "b")
        _same_object(m / "c", kind)
        assert os.lstat(m / "c").st_nlink == 1
        assert sorted(os.listdir(m)) == ["c"]
        os.chmod(m / "c", 0o640, follow_symlinks=False) if kind != "symlink" else None
        _same_object(m / "c", kind)


def test_relink_after_delete(s: Stack) -> None:
    """Case 2: `ln f l; rm f; ln l f` (ENOENT on l before)."""
    with s.mount() as m:
        (m / "f").write_bytes(b"data")
        os.link(m / "f", m / "l")
        os.unlink(m / "f")
        os.link(m / "l", m / "f")
        assert (m / "f").read_bytes() == b"data"
        assert os.stat(m / "f").st_ino == os.stat(m / "l").st_ino
        assert os.stat(m / "l").st_nlink == 2


def _lower_pair_dance(m: Path, i: int) -> None:
    a, b = m / f"usr/bin/perl{i}", m / f"usr/bin/perl{i}.36.0"
    os.chown(a, 1000, 1000)
    os.unlink(b)
    os.link(a, b)
    assert b.read_bytes() == f"perl {i}".encode()
    assert os.stat(b).st_uid == 1000
    assert os.stat(a).st_nlink == 2


def test_lower_hard_links_chown_rm_ln(s: Stack) -> None:
    """Case 3: two names of one lower file; chown one, rm the other, ln it back; 50 pairs in
    parallel too."""
    (s.l2 / "usr/bin").mkdir(parents=True)
    for i in range(51):
        (s.l2 / f"usr/bin/perl{i}").write_bytes(f"perl {i}".encode())
        os.link(s.l2 / f"usr/bin/perl{i}", s.l2 / f"usr/bin/perl{i}.36.0")
    with s.mount() as m:
        _lower_pair_dance(m, 50)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: _lower_pair_dance(m, i), range(50)))
        names = os.listdir(m / "usr/bin")
        assert len(names) == 102
    with s.mount() as m:   # and the upper says the same after a remount
        for i in range(51):
            assert (m / f"usr/bin/perl{i}.36.0").read_bytes() == f"perl {i}".encode()
            assert os.stat(m / f"usr/bin/perl{i}").st_nlink == 2


@pytest.mark.parametrize("lower_links", [False, True])
def test_ring_of_renames_then_upper_rotated_into_lowers(s: Stack, lower_links: bool) -> None:
    """Case 4: names linked to lower files (in the mount, or already in the lower), renamed
    around a ring, the upper then used as the top lower under a fresh upper: every name reads
    right and can be unlinked, the partner's st_nlink dropping to 1."""
    n = 5
    for i in range(n):
        (s.l2 / f"f{i}").write_bytes(f"f{i}".encode())
        if lower_links:
            os.link(s.l2 / f"f{i}", s.l2 / f"r{i}")
    with s.mount() as m:
        if not lower_links:
            for i in range(n):
                os.link(m / f"f{i}", m / f"r{i}")
        os.rename(m / "r0", m / "gap")
        for i in range(1, n):
            os.rename(m / f"r{i}", m / f"r{i - 1}")
        os.rename(m / "gap", m / f"r{n - 1}")
        ring = {f"r{i}": f"f{(i + 1) % n}".encode() for i in range(n)}
        for name, data in ring.items():
            assert (m / name).read_bytes() == data
    up2, work2 = s.base / "up2", s.base / "work2"
    up2.mkdir()
    work2.mkdir()
    left = {**{f"f{i}": f"f{i}".encode() for i in range(n)}, **ring}
    with mounted(up2, [s.up, s.l1, s.l2], s.mnt, options=[f"workdir={work2}"]) as m:
        for name, data in left.items():
            assert (m / name).read_bytes() == data
            assert os.lstat(m / name).st_nlink == 2
        for i in range(n):
            f, r = f"f{(i + 1) % n}", f"r{i}"
            os.unlink(m / f)
            del left[f]
            assert os.lstat(m / r).st_nlink == 1
            for other, data in left.items():
                assert (m / other).read_bytes() == data, other
            os.unlink(m / r)
            del left[r]
        assert os.listdir(m) == []


def test_concurrent_directory_churn(s: Stack) -> None:
    """Case 5: four workers make and remove cdir_W_R/sub/deep/f in the mount root; the disk
    reuses inode numbers of removed directories. No ESTALE, and no listing shows what is gone."""
    errors: list[str] = []

    def worker(w: int, m: Path) -> None:
        for r in range(60):
            top = m / f"cdir_{w}_{r}"
            try:
                os.makedirs(top / "sub/deep")
                (top / "sub/deep/f").write_bytes(b"x")
                shutil.rmtree(top)
                if top.name in os.listdir(m):
                    errors.append(f"{top.name} listed after its removal")
            except OSError as e:
                errors.append(f"worker {w} round {r}: {e}")
                return

    with s.mount() as m:
        threads = [threading.Thread(target=worker, args=(w, m)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert os.listdir(m) == []


NAME = "d" * 200


def _deep_dir(root: Path, total: int) -> Path:
    """Create (through `root`) a chain of 200-byte directories until the path is ~`total`."""
    p = root
    while len(os.fsencode(str(p / NAME))) + 40 < total:
        p = p / NAME
        os.mkdir(p)
    return p


def test_every_call_works_near_path_max(oracle_base: Path) -> None:
    """Case 6: the layers' own paths are longer than the mount's, so a path near PATH_MAX
    through the mount is beyond it once prefixed with a layer's path."""
    s = Stack(oracle_base, layer_prefix="L" * 250 + "/" + "L" * 250)
    # A deep lower directory too, made relative to descriptors (its own path is too long).
    fd = os.open(s.l2, os.O_RDONLY)
    depth = 0
    try:
        while len(str(s.mnt)) + (len(NAME) + 1) * (depth + 1) + 30 < 4096:
            os.mkdir(NAME, dir_fd=fd)
            nfd = os.open(NAME, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            depth += 1
        with open(os.open("lowfile", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"low")
    finally:
        os.close(fd)
    with s.mount() as m:
        d = m.joinpath(*[NAME] * depth)
        assert len(os.fsencode(str(d))) > 4096 - 260
        assert (d / "lowfile").read_bytes() == b"low"
        os.chmod(d / "lowfile", 0o600)                       # copy-up of the deep lower file
        os.chown(d / "lowfile", 1000, 1000)
        os.truncate(d / "lowfile", 1)
        assert (d / "lowfile").read_bytes() == b"l"
        (d / "new").write_bytes(b"new")
        assert os.stat(d / "new").st_size == 3
        os.link(d / "new", d / "hl")
        os.symlink("new", d / "sl")
        assert os.readlink(d / "sl") == "new"
        os.mkfifo(d / "fifo")
        os.mknod(d / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mkdir(d / "sub")
        os.rename(d / "hl", d / "sub/hl2")
        os.setxattr(d / "new", "user.k", b"v")
        assert os.getxattr(d / "new", "user.k") == b"v"
        assert sorted(os.listdir(d)) == ["dev", "fifo", "lowfile", "new", "sl", "sub"]
        for name in ("new", "sl", "fifo", "dev", "lowfile"):
            os.unlink(d / name)
        os.unlink(d / "sub/hl2")
        os.rmdir(d / "sub")
        assert os.listdir(d) == []
        os.rmdir(d)
        assert NAME not in os.listdir(d.parent)


@pytest.mark.parametrize("length", [252, 253, 254, 255])
def test_names_too_long_for_a_whiteout_say_enametoolong(s: Stack, length: int) -> None:
    """Case 7: statfs says namemax 251 (a `.wh.` whiteout must fit); longer names get
    ENAMETOOLONG from lookups and creating calls alike, never ENOENT or EPERM."""
    name = "n" * length
    (s.l2 / "f").write_bytes(b"f")
    with s.mount() as m:
        assert os.statvfs(m).f_namemax == 251
        ok = m / ("o" * 251)
        ok.write_bytes(b"ok")
        assert ok.read_bytes() == b"ok"
        calls = [
            lambda p: os.stat(p),
            lambda p: os.open(p, os.O_WRONLY | os.O_CREAT, 0o644),
            lambda p: os.mkdir(p),
            lambda p: os.symlink("f", p),
            lambda p: os.mkfifo(p),
            lambda p: os.link(m / "f", p),
            lambda p: os.rename(m / "f", p),
            lambda p: os.unlink(p),
        ]
        for call in calls:
            with pytest.raises(OSError) as e:
                call(m / name)
            assert e.value.errno == errno.ENAMETOOLONG, (call, e.value)
        assert (m / "f").read_bytes() == b"f"


@pytest.mark.parametrize("ns", ["trusted", "user"])
def test_xattr_whiteouts_and_opaque_x(s: Stack, ns: str) -> None:
    """Case 8: `opaque=x` marks a merge directory holding xattr whiteouts (zero-size files with
    `overlay.whiteout`); it is not opaque. `y` is."""
    (s.l2 / "d").mkdir()
    (s.l2 / "d/keep").write_bytes(b"keep")
    (s.l2 / "d/gone").write_bytes(b"hidden")
    (s.l2 / "o").mkdir()
    (s.l2 / "o/hidden").write_bytes(b"hidden")
    (s.l1 / "d").mkdir()
    os.setxattr(s.l1 / "d", f"{ns}.overlay.opaque", b"x")
    (s.l1 / "d/gone").touch()
    os.setxattr(s.l1 / "d/gone", f"{ns}.overlay.whiteout", b"")
    (s.l1 / "d/plain").touch()          # zero-size but no whiteout xattr: a file
    (s.l1 / "o").mkdir()
    os.setxattr(s.l1 / "o", f"{ns}.overlay.opaque", b"y")
    with s.mount() as m:
        assert sorted(os.listdir(m / "d")) == ["keep", "plain"]
        assert (m / "d/keep").read_bytes() == b"keep"
        with pytest.raises(FileNotFoundError):
            os.stat(m / "d/gone")
        assert os.listdir(m / "o") == []
        (m / "d/gone").write_bytes(b"back")
        assert (m / "d/gone").read_bytes() == b"back"
        os.unlink(m / "d/keep")
        assert sorted(os.listdir(m / "d")) == ["gone", "plain"]


def test_git_init_add_commit_inside_the_mount(s: Stack) -> None:
    """Case 1 as git meets it: `git commit` replaces refs by link + unlink."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e", "HOME": str(s.base)}
    with s.mount() as m:
        repo = m / "repo"
        repo.mkdir()
        (repo / "a.txt").write_text("hello\n")

        def git(*args: str) -> str:
            r = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True,
                               check=False,
                               text=True, timeout=60)
            assert r.returncode == 0, (args, r.stderr)
            return r.stdout

        git("init", "-q", "-b", "master")
        git("add", "a.txt")
        git("commit", "-q", "-m", "first")
        (repo / "b.txt").write_text("two\n")
        git("add", "b.txt")
        git("commit", "-q", "-m", "second")
        assert git("log", "--format=%s").split() == ["second", "first"]
        git("fsck", "--strict")


def test_renamed_merged_dir_keeps_its_upper_subdirs_numbers_to_itself(s: Stack) -> None:
    """Found by the concurrent stress: renaming a merged directory copied its upper-only
    subdirectories and deleted the originals, whose disk inodes then came free while the
    copies still answered with their numbers (origin) - a new object got the same st_ino as a
    live one, and the kernel mixed the two up (EEXIST, ENOENT, EIO under load)."""
    (s.l2 / "d").mkdir()
    (s.l2 / "d/x").write_bytes(b"x")
    with s.mount() as m:
        for i in range(5):
            os.makedirs(m / f"d/s{i}/t")
        moved = {i: os.stat(m / f"d/s{i}").st_ino for i in range(5)}
        os.rename(m / "d", m / "e")
        os.mkdir(m / "new")
        fresh = set()
        for i in range(200):
            (m / f"new/f{i}").touch()
            os.mkdir(m / f"new/d{i}")
            fresh |= {os.stat(m / f"new/f{i}").st_ino, os.stat(m / f"new/d{i}").st_ino}
        for i, ino in moved.items():
            st = os.stat(m / f"e/s{i}")
            assert stat.S_ISDIR(st.st_mode) and st.st_ino == ino
            assert ino not in fresh
            assert os.listdir(m / f"e/s{i}") == ["t"]


def test_open_unlinked_file_keeps_its_own_attributes(s: Stack) -> None:
    """An editor's pattern: the file is open, its name removed and made again for a new file;
    fstat through the old descriptor shows the old file, not the new one under its name."""
    with s.mount() as m:
        (m / "a").write_bytes(b"old contents")
        with open(m / "a", "rb") as old:
            os.unlink(m / "a")
            (m / "a").write_bytes(b"new")
            assert os.fstat(old.fileno()).st_size == len(b"old contents")
            assert old.read() == b"old contents"
        assert (m / "a").read_bytes() == b"new"


def test_deep_lower_hard_links_after_rotation(oracle_base: Path) -> None:
    """Found by the oracle: hard links deeper than PATH_MAX in a lower (an upper rotated into
    the lowers) went missing: looking for their peers in the fresh upper named directories
    that do not exist there, and that error hid the names."""
    s = Stack(oracle_base, layer_prefix="L" * 200)
    with s.mount() as m:
        d = _deep_dir(m, 4000)
        (d / "f").write_bytes(b"deep")
        os.link(d / "f", d / "g")
        rel = d.relative_to(m)
    up2, work2 = s.up.parent / "up2", s.up.parent / "work2"
    up2.mkdir()
    work2.mkdir()
    with mounted(up2, [s.up, s.l1, s.l2], s.mnt, options=[f"workdir={work2}"]) as m:
        d = m / rel
        assert sorted(os.listdir(d)) == ["f", "g"]
        assert (d / "g").read_bytes() == b"deep"
        assert os.stat(d / "f").st_nlink == 2
        os.chmod(d / "f", 0o600)                 # copy-up links the peer in the new upper
        assert stat.S_IMODE(os.stat(d / "g").st_mode) == 0o600
        os.unlink(d / "f")
        assert os.stat(d / "g").st_nlink == 1
