"""Every operation a Filesystem serves, through our transport on a real mount (loopback fs),
with passthrough on and off: the results must be what the same calls give on the source."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from unionfs.libc import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2

SEEK_DATA, SEEK_HOLE = 3, 4
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def test_files_read_write_truncate_append(served):
    m = served.mnt
    (m / "f").write_bytes(b"hello world")
    assert (served.src / "f").read_bytes() == b"hello world"
    assert (m / "f").read_bytes() == b"hello world"
    with open(m / "f", "ab") as f:
        f.write(b"!")
    assert (m / "f").read_bytes() == b"hello world!"
    os.truncate(m / "f", 5)
    assert (m / "f").read_bytes() == b"hello"
    with open(m / "f", "r+b") as f:
        f.seek(2)
        f.write(b"LL")
        f.truncate(4)
    assert (m / "f").read_bytes() == b"heLL"
    with open(m / "f", "wb") as f:          # O_TRUNC in open (ATOMIC_O_TRUNC)
        f.write(b"x")
    assert (m / "f").read_bytes() == b"x" and os.stat(m / "f").st_size == 1


def test_large_io_crosses_request_sizes(served):
    data = os.urandom(3 * 1024 * 1024 + 123)
    (served.mnt / "big").write_bytes(data)
    assert (served.src / "big").read_bytes() == data
    assert (served.mnt / "big").read_bytes() == data
    with open(served.mnt / "big", "rb") as f:
        f.seek(1024 * 1024 - 7)
        assert f.read(100) == data[1024 * 1024 - 7:1024 * 1024 + 93]


def test_names_links_and_renames(served):
    m = served.mnt
    (m / "d").mkdir(0o750)
    assert stat.S_IMODE(os.stat(served.src / "d").st_mode) == 0o750 & ~0o022 | 0o750 & 0o750
    (m / "d" / "a").write_text("A")
    (m / "b").write_text("B")
    os.link(m / "d" / "a", m / "hard")
    assert os.stat(m / "hard").st_nlink == 2
    assert os.stat(m / "hard").st_ino == os.stat(m / "d" / "a").st_ino
    os.symlink("d/a", m / "sym")
    assert os.readlink(m / "sym") == "d/a"
    assert (m / "sym").read_text() == "A"
    os.rename(m / "b", m / "d" / "b2")
    assert (m / "d" / "b2").read_text() == "B" and not (m / "b").exists()
    with pytest.raises(FileExistsError):
        renameat2(str(m / "d" / "b2"), str(m / "hard"), RENAME_NOREPLACE)
    renameat2(str(m / "d" / "b2"), str(m / "hard"), RENAME_EXCHANGE)
    assert (m / "hard").read_text() == "B" and (m / "d" / "b2").read_text() == "A"
    os.unlink(m / "hard")
    with pytest.raises(OSError) as e:
        os.rmdir(m / "d")
    assert e.value.errno == errno.ENOTEMPTY
    for n in os.listdir(m / "d"):
        os.unlink(m / "d" / n)
    os.rmdir(m / "d")
    assert sorted(os.listdir(m)) == ["sym"]
    assert not (served.src / "d").exists()


def test_special_files_and_attributes(served):
    m = served.mnt
    os.mkfifo(m / "fifo", 0o640)
    assert stat.S_ISFIFO(os.lstat(served.src / "fifo").st_mode)
    os.mknod(m / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(m / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    (m / "f").write_text("x")
    os.chmod(m / "f", 0o4711)
    assert stat.S_IMODE(os.stat(m / "f").st_mode) == 0o4711
    os.chown(m / "f", 1234, 5678)
    st = os.stat(served.src / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(m / "f", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(m / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    os.setxattr(m / "f", "user.k", b"v" * 300)
    assert os.getxattr(m / "f", "user.k") == b"v" * 300
    assert "user.k" in os.listxattr(m / "f")
    os.removexattr(m / "f", "user.k")
    with pytest.raises(OSError) as e:
        os.getxattr(m / "f", "user.k")
    assert e.value.errno == errno.ENODATA
    sv, sn = os.statvfs(m), os.statvfs(served.src)
    assert (sv.f_blocks, sv.f_bsize, sv.f_namemax) == (sn.f_blocks, sn.f_bsize, sn.f_namemax)


def test_big_directory_listing_and_stat(served):
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(3000)}
    for n in names:
        (served.src / n).write_text(n)
    assert set(os.listdir(served.mnt)) == names          # several READDIRPLUS replies
    with os.scandir(served.mnt) as it:
        got = {e.name: e.stat(follow_symlinks=False).st_size for e in it}
    assert got == {n: len(n) for n in names}
    out = subprocess.run(["ls", "-la", str(served.mnt)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.count("entry-") == 3000
    assert set(os.listdir(served.mnt)) == names          # again, from the kernel's cache


def test_fallocate_and_holes_through_the_mount(served):
    f = served.mnt / "sparse"
    subprocess.run(["fallocate", "-l", "8M", str(f)], check=True, timeout=60)
    assert os.stat(f).st_size == 8 << 20
    assert os.stat(served.src / "sparse").st_blocks * 512 >= 8 << 20
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"D" * 4096, 1 << 20)            # data at 1 MiB, hole before
        os.ftruncate(fd, 4 << 20)                       # hole after
        assert os.lseek(fd, 0, SEEK_DATA) == 1 << 20
        assert os.lseek(fd, 1 << 20, SEEK_HOLE) == (1 << 20) + 4096
        with pytest.raises(OSError) as e:
            os.lseek(fd, (1 << 20) + 4096, SEEK_DATA)
        assert e.value.errno == errno.ENXIO
        subprocess.run(["fallocate", "-p", "-o", str(1 << 20), "-l", "4096", str(f)],
                       check=True, timeout=60)
        assert os.lseek(fd, 0, SEEK_HOLE) == 0
        assert os.pread(fd, 4096, 1 << 20) == b"\0" * 4096
    finally:
        os.close(fd)


def test_copy_file_range_through_the_mount(served):
    data = os.urandom(2 * 1024 * 1024 + 5)
    (served.mnt / "a").write_bytes(data)
    src = os.open(served.mnt / "a", os.O_RDONLY)
    dst = os.open(served.mnt / "b", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        done = 0
        while done < len(data):
            n = os.copy_file_range(src, dst, len(data) - done, done, done)
            assert n > 0
            done += n
    finally:
        os.close(src)
        os.close(dst)
    assert (served.mnt / "b").read_bytes() == data
    assert (served.src / "b").read_bytes() == data


@pytest.mark.parametrize("passthrough", ["on", "off"])
def test_mmap_shared_write_reaches_the_file(daemon, passthrough):
    """In a daemon of its own: a page fault on a FUSE mapping holds the GIL of the faulting
    process, so the in-process fixture cannot serve it."""
    import mmap
    _, src, mnt = daemon(f"passthrough={passthrough}")
    (mnt / "m").write_bytes(b"\0" * 8192)
    with open(mnt / "m", "r+b") as f, mmap.mmap(f.fileno(), 8192) as mm:
        mm[100:105] = b"hello"
        mm.flush()
    assert (src / "m").read_bytes()[100:105] == b"hello"
    with open(mnt / "m", "rb") as f, mmap.mmap(f.fileno(), 8192, prot=mmap.PROT_READ) as mm:
        assert mm[100:105] == b"hello"


def test_errors_come_back_as_errno(served):
    with pytest.raises(FileNotFoundError):
        os.stat(served.mnt / "missing")
    (served.mnt / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        os.listdir(served.mnt / "f")
    with pytest.raises(FileExistsError):
        os.mkdir(served.mnt / "f")
    with pytest.raises(OSError) as e:
        os.getxattr(served.mnt / "f", "user.none")
    assert e.value.errno == errno.ENODATA


def test_readdirplus_counts_no_lookup_for_dot_entries(serve_with):
    """The kernel takes a reference for every readdirplus entry but "." and "..": counting
    those too kept dead inodes alive in the union (EEXIST under mkdir/rmdir churn)."""
    from unionfs import fsapi
    s = serve_with()
    (s.src / "d").mkdir()
    (s.src / "d" / "x").write_text("x")
    plain_readdir = s.fs.readdir
    counted: list[int] = []
    plain_count = s.fs.count_lookup

    def readdir(fh, offset, plus):
        for d in plain_readdir(fh, offset, plus):
            if plus and d.name in (b".", b".."):
                d.entry = fsapi.Entry(s.fs.getattr(d.ino, None, fsapi.Ctx()), 0, 1.0, 1.0)
            yield d

    def count_lookup(ino):
        counted.append(ino)
        plain_count(ino)

    s.fs.readdir = readdir
    s.fs.count_lookup = count_lookup
    assert os.listdir(s.mnt / "d") == ["x"]
    assert counted == [os.stat(s.src / "d" / "x").st_ino]


def test_listing_then_lstat_of_a_big_directory_needs_no_lookup_per_name(serve_with):
    """The attributes of a whole listing come with it (readdirplus on every batch). With
    READDIRPLUS_AUTO the kernel sent the batches after the first bare and then one LOOKUP per
    name for the lstat that follows (`ls -l`, bench's list-dir: 2.7x slower than pyfuse3)."""
    s = serve_with()
    for i in range(1500):
        (s.src / f"name-{i:04d}").write_text("z")
    plain_lookup = s.fs.lookup
    looked: list[bytes] = []

    def lookup(parent, name, ctx):
        looked.append(name)
        return plain_lookup(parent, name, ctx)

    s.fs.lookup = lookup
    names = os.listdir(s.mnt)
    assert len(names) == 1500
    for n in names:
        os.lstat(s.mnt / n)
    assert len(looked) == 0


def test_statx_for_more_than_the_basic_stats(serve_with):
    """statx asking for the birth time makes the kernel send FUSE_STATX (6.6+); the reply
    carries the basic stats, without a birth time."""
    from unionfs.transport import proto
    s = serve_with()
    (s.src / "f").write_bytes(b"12345")
    sent: list[int] = []
    plain = s.session.handlers[proto.STATX]

    def statx(*args):
        sent.append(1)
        return plain(*args)

    s.session.handlers[proto.STATX] = statx
    out = subprocess.run(["stat", "-c", "%w|%s|%i|%a", str(s.mnt / "f")], capture_output=True,
                         text=True, check=True, timeout=30).stdout.strip()
    st = os.stat(s.src / "f")
    assert out == f"-|5|{st.st_ino}|{stat.S_IMODE(st.st_mode):o}"
    assert sent, "the kernel sent no FUSE_STATX"
