"""The union core driven directly through fsapi, without a mount: what any transport sees.

Also the calls pyfuse3 cannot deliver (fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range), which
our own transport will.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from unionfs import fsapi
from unionfs.core import UnionFilesystem
from unionfs.union import Union

CTX = fsapi.Ctx(uid=os.geteuid(), gid=os.getegid())
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def inval_entry(self, parent: int, name: bytes) -> None:
        self.calls.append(("entry", parent, name))

    def inval_inode(self, ino: int, offset: int = 0, length: int = 0) -> None:
        self.calls.append(("inode", ino, offset, length))


@pytest.fixture
def fs(tmp_path: Path) -> UnionFilesystem:
    for d in ("up", "low", "work"):
        (tmp_path / d).mkdir()
    (tmp_path / "low/f").write_bytes(b"lower data")
    (tmp_path / "low/d").mkdir()
    (tmp_path / "low/d/x").write_bytes(b"x")
    os.link(tmp_path / "low/d/x", tmp_path / "low/y")
    u = Union(str(tmp_path / "up"), [str(tmp_path / "low")], str(tmp_path / "work"),
              override=os.geteuid() != 0)
    f = UnionFilesystem(u)
    f.init(Recorder())
    yield f
    f.destroy()


def _names(fs: UnionFilesystem, ino: int) -> dict[bytes, fsapi.DirEntry]:
    fh = fs.opendir(ino, CTX).fh
    try:
        out = {}
        for de in fs.readdir(fh, 0, True):
            out[de.name] = de
            if de.name not in (b".", b".."):
                fs.count_lookup(de.ino)
        return out
    finally:
        fs.releasedir(fh)


def test_names_links_and_listing(fs: UnionFilesystem) -> None:
    root = fsapi.ROOT_INO
    e = fs.lookup(root, b"f", CTX)
    assert stat.S_ISREG(e.attr.mode) and e.attr.size == 10
    assert e.generation == 0
    link = fs.link(e.attr.ino, root, b"g", CTX)
    assert link.attr.ino == e.attr.ino and link.attr.nlink == 2
    fs.unlink(root, b"f", CTX)
    assert fs.getattr(e.attr.ino, None, CTX).nlink == 1       # served through "g"
    opened = fs.open(e.attr.ino, os.O_RDONLY, CTX)
    assert fs.read(opened.fh, 0, 100) == b"lower data"
    fs.release(opened.fh)
    listing = _names(fs, root)
    assert set(listing) == {b".", b"..", b"g", b"d", b"y"}
    assert listing[b"g"].entry is not None and listing[b"g"].ino == e.attr.ino
    with pytest.raises(OSError) as err:
        fs.lookup(root, b"n" * 252, CTX)
    assert err.value.errno == errno.ENAMETOOLONG
    assert fs.statfs(root, CTX).namemax == 251


def test_dead_number_reused_gets_a_new_generation(fs: UnionFilesystem) -> None:
    root = fsapi.ROOT_INO
    seen: dict[int, int] = {}
    for i in range(50):
        d = fs.mkdir(root, b"c", 0o755, CTX)
        if d.attr.ino in seen:
            assert d.generation > seen[d.attr.ino]
            break
        seen[d.attr.ino] = d.generation
        fs.rmdir(root, b"c", CTX)       # the kernel still holds it (no forget)
    else:
        pytest.skip("the filesystem never reused a directory's inode number")


def test_calls_pyfuse3_cannot_deliver(fs: UnionFilesystem) -> None:
    root = fsapi.ROOT_INO
    entry, out = fs.create(root, b"big", 0o644, os.O_RDWR, CTX)
    fs.write(out.fh, 0, b"a" * 4096, CTX)
    fs.fallocate(out.fh, 0, 0, 1 << 20)
    assert fs.getattr(entry.attr.ino, None, CTX).size == 1 << 20
    fs.fallocate(out.fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 20)
    fs.write(out.fh, 512 << 10, b"data", CTX)
    data = fs.lseek(out.fh, 0, os.SEEK_DATA)
    assert 0 < data <= 512 << 10
    assert fs.lseek(out.fh, data, os.SEEK_HOLE) > data
    src = fs.open(fs.lookup(root, b"f", CTX).attr.ino, os.O_RDONLY, CTX)
    assert fs.copy_file_range(src.fh, 0, out.fh, 10, 5, 0) == 5
    assert fs.read(out.fh, 10, 5) == b"lower"
    with pytest.raises(OSError) as err:
        fs.copy_file_range(src.fh, 0, out.fh, 0, 5, 1)
    assert err.value.errno == errno.EINVAL
    fs.release(src.fh)
    fs.release(out.fh)


def test_copy_up_of_a_lower_hard_link_tells_the_kernel(fs: UnionFilesystem) -> None:
    """chmod of `y` links its peer `d/x` to the copy: the kernel may hold d's attributes."""
    root = fsapi.ROOT_INO
    d = fs.lookup(root, b"d", CTX)
    y = fs.lookup(root, b"y", CTX)
    fs.setattr(y.attr.ino, fsapi.SetAttr(mode=0o600), CTX)
    x = fs.lookup(d.attr.ino, b"x", CTX)
    assert x.attr.ino == y.attr.ino and stat.S_IMODE(x.attr.mode) == 0o600
    assert ("inode", d.attr.ino, -1, 0) in fs.notifier.calls


def test_the_core_has_every_call_of_the_contract() -> None:
    """Every call of fsapi.Filesystem, with the contract's parameter names (a transport may
    pass them by keyword)."""
    import inspect
    for name, member in vars(fsapi.Filesystem).items():
        if name.startswith("_") or not callable(member):
            continue
        mine = getattr(UnionFilesystem, name, None)
        assert mine is not None, name
        want = list(inspect.signature(member).parameters)
        assert list(inspect.signature(mine).parameters) == want, name
