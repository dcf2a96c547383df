"""unionfs/rootpath.py: a path resolved inside a root, the one walk the layer applier, the
runtime and `pyunion run` share. The applier's hostile corpus (tests/snapshotter/test_hostile.py)
is replayed here on real trees: every name of every case, resolved by our walk, by the kernel
(openat2 RESOLVE_IN_ROOT) and by the creating walk, must agree and stay inside the root."""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

import pytest

from tests.snapshotter.test_hostile import CASES, outside_state
from unionfs import rootpath


def _materialise(root: Path, members) -> None:
    """The case's directories and symlinks, made directly (not through the applier)."""
    for t, _ in members:
        name = t.name.strip("/")
        if not name or name.startswith("..") or "/../" in f"/{name}/":
            continue
        p = root / name
        if t.type == tarfile.DIRTYPE:
            p.mkdir(parents=True, exist_ok=True)
        elif t.type == tarfile.SYMTYPE and not p.parent.is_symlink():
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.is_symlink():
                os.symlink(t.linkname, p)


def _where(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _inside(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + "/")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_corpus_resolves_inside_the_root(tmp_path, case):
    _, members, _expect, _check, _text = case
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/victim").write_text("original\n")
    root = tmp_path / "layer"
    root.mkdir()
    listed = members(tmp_path)
    _materialise(root, listed)
    before = outside_state(tmp_path)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for t, _ in listed:
            for name in {t.name, t.linkname} - {""}:
                try:
                    ours = rootpath.resolve(str(root), name)
                except (NotADirectoryError, OSError) as e:
                    assert isinstance(e, NotADirectoryError) or e.errno == errno.ELOOP, e
                    with pytest.raises(OSError):
                        os.close(rootpath.open_in_root(rootfd, name, create="file"))
                    continue
                assert _inside(ours, root), (name, ours)
                made = rootpath.open_in_root(rootfd, name, create="file")
                try:
                    assert _where(made) == ours, name      # the creating walk
                finally:
                    os.close(made)
                kernel = rootpath.open_in_root(rootfd, name)   # now it exists: openat2 alone
                try:
                    assert _where(kernel) == ours, name
                finally:
                    os.close(kernel)
    finally:
        os.close(rootfd)
    assert outside_state(tmp_path) == before
    assert (tmp_path / "outside/victim").read_text() == "original\n"


def test_walk_rules(tmp_path):
    r = tmp_path / "root"
    (r / "real").mkdir(parents=True)
    os.symlink("/", r / "abs")
    os.symlink("../../..", r / "up")
    os.symlink("real", r / "rel")
    os.symlink("loop", r / "loop")
    (r / "file").write_text("x")
    R = str(r)
    assert rootpath.resolve(R, "abs/etc/passwd") == f"{R}/etc/passwd"
    assert rootpath.resolve(R, "/up/x") == f"{R}/x"
    assert rootpath.resolve(R, "rel/../rel/y") == f"{R}/real/y"
    assert rootpath.resolve(R, "../../..") == R
    with pytest.raises(OSError) as ei:
        rootpath.resolve(R, "loop/z")
    assert ei.value.errno == errno.ELOOP
    with pytest.raises(NotADirectoryError):
        rootpath.resolve(R, "file/below")


def test_open_in_root_creates_dirs_and_files_inside(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    os.symlink("/etc", r / "etc-link")           # absolute: means ROOT/etc, not the host's
    fd = rootpath.open_in_root_path(str(r), "/etc-link/new/dir", create="dir")
    os.close(fd)
    assert (r / "etc/new/dir").is_dir()
    fd = rootpath.open_in_root_path(str(r), "etc-link/conf", create="file")
    os.close(fd)
    assert (r / "etc/conf").is_file() and not Path("/etc/conf").exists()
    with pytest.raises(FileNotFoundError):
        rootpath.open_in_root_path(str(r), "missing")


def test_read_in_root_never_follows_out(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (tmp_path / "secret").write_text("host secret\n")
    os.symlink(str(tmp_path / "secret"), r / "etc/passwd")
    (r / "secret").write_text("image file\n")
    assert rootpath.read_in_root(r, "/etc/passwd") is None     # ROOT/<tmp>/secret: missing
    os.symlink("/secret", r / "etc/group")
    assert rootpath.read_in_root(r, "/etc/group") == "image file\n"
