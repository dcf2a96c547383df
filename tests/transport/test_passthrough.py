"""FUSE passthrough: data skips the daemon when negotiated, and every open still succeeds when
an inode cannot share one backing file (the kernel would fail such an open with EIO)."""

from __future__ import annotations

import os
import time

import pytest

from unionfs.transport import proto
from unionfs.transport.backing import BUSY, CACHED, DIRECT, PASSTHROUGH, BackingTable


def released(session, timeout: float = 10.0) -> bool:
    """RELEASE reaches the daemon after close() returns (the kernel sends it in the
    background): wait for the backing table to empty."""
    deadline = time.monotonic() + timeout
    while len(session.backing) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(session.backing) == 0


def test_reads_and_writes_skip_the_daemon_with_passthrough(serve_with):
    s = serve_with(passthrough=True)
    assert s.session.passthrough, "kernel 6.9+ as root offers passthrough"
    data = os.urandom(4 << 20)
    (s.mnt / "f").write_bytes(data)
    assert (s.mnt / "f").read_bytes() == data
    assert s.fs.calls["read"] == 0 and s.fs.calls["write"] == 0
    assert released(s.session), "backing ids are dropped with the last handle"


def test_without_passthrough_data_goes_through_the_daemon(serve_with):
    s = serve_with(passthrough=False)
    assert not s.session.passthrough
    (s.mnt / "f").write_bytes(b"x" * 100_000)
    assert (s.mnt / "f").read_bytes() == b"x" * 100_000
    assert s.fs.calls["write"] > 0


def test_kernel_without_passthrough_degrades_to_plain_requests(serve_with):
    """What an older kernel (or one built without CONFIG_FUSE_PASSTHROUGH) gives: the flag is
    not offered, so data flows through the daemon and nothing else changes."""
    s = serve_with(passthrough=True, refuse=proto.PASSTHROUGH | proto.DIRECT_IO_ALLOW_MMAP)
    assert not s.session.passthrough
    assert not s.session.flags & proto.PASSTHROUGH
    (s.mnt / "f").write_bytes(b"y" * 10_000)
    assert (s.mnt / "f").read_bytes() == b"y" * 10_000
    assert s.fs.calls["write"] > 0


def test_kernel_without_readdirplus_or_cache_flags_still_lists(serve_with):
    s = serve_with(refuse=proto.DO_READDIRPLUS | proto.READDIRPLUS_AUTO | proto.MAX_PAGES
                   | proto.CACHE_SYMLINKS | proto.PARALLEL_DIROPS | proto.INIT_EXT)
    assert not s.session.flags & proto.DO_READDIRPLUS and not s.session.passthrough
    for i in range(500):
        (s.src / f"n{i}").write_text("z")
    assert len(os.listdir(s.mnt)) == 500
    os.symlink("n1", s.mnt / "l")
    assert os.readlink(s.mnt / "l") == "n1"


def test_two_opens_of_one_file_share_its_backing_id(serve_with):
    s = serve_with(passthrough=True)
    (s.src / "f").write_bytes(b"abc" * 1000)
    with open(s.mnt / "f", "rb") as a, open(s.mnt / "f", "r+b") as b:
        assert len(s.session.backing) == 1
        b.write(b"XYZ")
        b.flush()
        assert a.read(6) == b"XYZabc"
    assert s.fs.calls["read"] == 0 and s.fs.calls["write"] == 0
    assert released(s.session)


def test_open_that_cannot_share_the_backing_file_gets_an_inode_of_its_own(serve_with):
    """The kernel binds an inode to one backing file while a passthrough handle is open (an
    open served from another file, or from none, would fail with EIO). We answer such an open
    ESTALE and give the file a new kernel node id: the kernel retries the walk once with
    LOOKUP_REVAL, drops the stale dentry and opens a fresh inode, so the open succeeds."""
    s = serve_with(passthrough=True)
    (s.src / "f").write_bytes(b"hello")
    plain_open = type(s.fs).open

    def open_without_backing(ino, flags, ctx):
        op = plain_open(s.fs, ino, flags, ctx)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            op.backing_fd = None
        return op

    s.fs.open = open_without_backing
    with open(s.mnt / "f", "rb") as reader:
        ino = os.fstat(reader.fileno()).st_ino
        with open(s.mnt / "f", "r+b") as writer:   # a new inode, cached: through the daemon
            writer.write(b"J")
            writer.flush()
            assert os.fstat(writer.fileno()).st_ino == ino      # st_ino is the file's
        assert s.fs.calls["write"] == 1
        assert reader.read() == b"Jello"       # the same file underneath
        with open(s.mnt / "f", "rb") as late:  # the path leads to the new inode now
            assert late.read() == b"Jello"
        assert os.stat(s.mnt / "f").st_ino == ino
    assert released(s.session)
    os.link(s.mnt / "f", s.mnt / "g")          # requests on the new node id reach the file
    os.chmod(s.mnt / "g", 0o600)
    assert os.stat(s.mnt / "f").st_mode & 0o777 == 0o600
    os.unlink(s.mnt / "g")
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")                           # the kernel forgets every inode it can
    deadline = time.monotonic() + 10
    while len(s.fs._inodes) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(s.fs._inodes) == 1              # lookups of both node ids were forgotten
    assert len(s.session._ino_of) <= 1         # only the newest alias is kept


# -- the bookkeeping alone, with fake registrations


class Fakes:
    def __init__(self):
        self.next = 1
        self.live: set[int] = set()

    def register(self, fd):
        self.next += 1
        self.live.add(self.next)
        return self.next

    def unregister(self, backing_id):
        self.live.remove(backing_id)


@pytest.fixture
def files(tmp_path):
    fds = []

    def make(name):
        fd = os.open(tmp_path / name, os.O_RDWR | os.O_CREAT, 0o644)
        fds.append(fd)
        return fd

    yield make
    for fd in fds:
        os.close(fd)


def test_backing_table_modes(files):
    f = Fakes()
    t = BackingTable(f.register, f.unregister)
    a1, a2, b = files("a"), files("a"), files("b")
    mode, bid = t.open(10, 100, a1, False)
    assert mode == PASSTHROUGH and f.live == {bid}
    assert t.open(10, 101, a2, False) == (PASSTHROUGH, bid)       # same file: same id
    assert t.open(10, 102, b, False) == (BUSY, 0)                  # another file (copy-up)
    assert t.open(10, 103, None, False) == (BUSY, 0)               # no backing file
    assert t.open(10, 104, a1, True) == (BUSY, 0)                  # asked for direct io
    assert t.open(12, 105, a1, True) == (DIRECT, 0)                # direct io, free inode
    t.release(100)
    assert f.live == {bid}
    t.release(101)
    assert f.live == set() and len(t) == 0
    assert t.open(11, 200, None, False) == (CACHED, 0)             # cached mode first ...
    assert t.open(11, 201, a1, False) == (CACHED, 0)               # ... stays cached
    t.release(200)
    t.release(201)
    assert len(t) == 0


def test_backing_table_falls_back_when_the_kernel_refuses(files):
    def refuse(fd):
        raise OSError(40, "too deep")

    t = BackingTable(refuse, lambda i: None)
    assert t.open(5, 1, files("a"), False) == (CACHED, 0)
    t.release(1)
    assert len(t) == 0
