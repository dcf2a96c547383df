"""A corpus of hostile layers, built here with tarfile. None may write outside the layer dir.

Each case is either NEUTRALISED (applied, with the name clamped inside the layer as containerd
does, and a note saying so) or REFUSED (ImageError naming the entry). Next to the layer dir lies
`outside/` with a `victim` file; after every case the whole outside tree must be unchanged.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from snapshotter.applier import apply_tar
from snapshotter.errors import ImageError

REFUSED = "refused"
NEUTRALISED = "neutralised"


def m(name: str, kind: str = "file", data: bytes = b"pwned\n", link: str = "",
      xattrs: dict | None = None, **kw) -> tuple[tarfile.TarInfo, bytes | None]:
    t = tarfile.TarInfo(name)
    t.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
              "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "odd": b"Z"}[kind]
    t.mode = 0o755 if kind == "dir" else 0o644
    t.linkname = link
    t.mtime = 1_600_000_000
    for k, v in kw.items():
        setattr(t, k, v)
    if xattrs:
        t.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
    if kind in ("file", "odd"):
        t.size = len(data)
        return t, data
    return t, None


def build(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for t, d in members:
            tf.addfile(t, io.BytesIO(d) if d is not None else None)
    return buf.getvalue()


# Each case: (id, members(T) where T is the test's tmp dir, expectation, check(layer, T) or None,
# substring of the note/error).
CASES = [
    ("dotdot", lambda T: [m("../outside/pwned")], NEUTRALISED,
     lambda L, T: (L / "outside/pwned").is_file(), "clamped"),
    ("dotdot-deep", lambda T: [m("a/../../../outside/pwned")], NEUTRALISED,
     lambda L, T: (L / "outside/pwned").is_file(), "clamped"),
    ("absolute", lambda T: [m(f"{T}/outside/pwned")], NEUTRALISED,
     lambda L, T: (L / str(T).lstrip("/") / "outside/pwned").is_file(), "clamped"),
    ("symlink-parent-absolute", lambda T: [m("esc", "sym", link=f"{T}/outside"),
                                           m("esc/pwned")], NEUTRALISED,
     lambda L, T: (L / str(T).lstrip("/") / "outside/pwned").is_file(), "through a symlink"),
    ("symlink-parent-relative", lambda T: [m("esc", "sym", link="../outside"), m("esc/pwned")],
     NEUTRALISED, lambda L, T: (L / "outside/pwned").is_file(), "through a symlink"),
    ("symlink-chain", lambda T: [m("a", "sym", link="b"), m("b", "sym", link="c/../../.."),
                                 m("c", "dir"), m("a/outside/pwned")], NEUTRALISED,
     lambda L, T: (L / "outside/pwned").is_file(), "through a symlink"),
    ("symlink-to-root", lambda T: [m("r", "sym", link="/"), m("r/etc/pwned")], NEUTRALISED,
     lambda L, T: (L / "etc/pwned").is_file(), "through a symlink"),
    ("file-over-symlink", lambda T: [m("f", "sym", link=f"{T}/outside/victim"),
                                     m("f", data=b"overwritten")], NEUTRALISED,
     lambda L, T: (L / "f").read_bytes() == b"overwritten" and not (L / "f").is_symlink(),
     "duplicate"),
    ("hardlink-dotdot", lambda T: [m("h", "hard", link="../outside/victim")], REFUSED, None,
     "not in this layer"),
    ("hardlink-absolute", lambda T: [m("h", "hard", link=f"{T}/outside/victim")], REFUSED, None,
     "not in this layer"),
    ("hardlink-through-symlink", lambda T: [m("s", "sym", link=f"{T}/outside"),
                                            m("h", "hard", link="s/victim")], REFUSED, None,
     "not in this layer"),
    ("hardlink-dotdot-inside", lambda T: [m("outside/victim", data=b"inner"),
                                          m("h", "hard", link="../outside/victim")], NEUTRALISED,
     lambda L, T: os.path.samefile(L / "h", L / "outside/victim"), "clamped into the layer"),
    ("hardlink-to-symlink", lambda T: [m("s", "sym", link=f"{T}/outside/victim"),
                                       m("h", "hard", link="s")], None,
     lambda L, T: (L / "h").is_symlink(), ""),
    ("hardlink-to-dir", lambda T: [m("d", "dir"), m("h", "hard", link="d")], REFUSED, None,
     "is a directory"),
    ("whiteout-dotdot", lambda T: [m(".wh...", data=b"")], REFUSED, None, "invalid whiteout"),
    ("whiteout-dot", lambda T: [m("d/.wh..", data=b"")], REFUSED, None, "invalid whiteout"),
    ("whiteout-bare", lambda T: [m("d/.wh.", data=b"")], REFUSED, None, "invalid whiteout"),
    ("whiteout-escaping-name", lambda T: [m("../.wh.outside", data=b"")], NEUTRALISED,
     lambda L, T: (L / ".wh.outside").is_file(), "clamped"),
    ("below-whiteout", lambda T: [m(".wh.x/y")], REFUSED, None, "below a whiteout"),
    ("duplicate-file", lambda T: [m("f", data=b"one"), m("f", data=b"two")], NEUTRALISED,
     lambda L, T: (L / "f").read_bytes() == b"two", "duplicate"),
    ("duplicate-dir-by-file", lambda T: [m("d", "dir"), m("d/child"), m("d", data=b"file")],
     NEUTRALISED, lambda L, T: (L / "d").read_bytes() == b"file", "duplicate"),
    ("xattr-trusted-opaque", lambda T: [m("d", "dir", xattrs={"trusted.overlay.opaque": "y"})],
     REFUSED, None, "trusted.overlay.opaque"),
    ("xattr-trusted-any", lambda T: [m("f", xattrs={"trusted.foo": "bar"})], REFUSED, None,
     "trusted.foo"),
    ("xattr-user-overlay", lambda T: [m("f", xattrs={"user.overlay.whiteout": "y"})], REFUSED,
     None, "user.overlay.whiteout"),
    ("xattr-fuse-overlayfs", lambda T: [m("d", "dir", xattrs={"user.fuseoverlayfs.opaque": "y"})],
     REFUSED, None, "user.fuseoverlayfs.opaque"),
    ("chardev-0-0", lambda T: [m("etc", "chr", devmajor=0, devminor=0)], REFUSED, None,
     "forge an overlay whiteout"),
    ("below-regular-file", lambda T: [m("f"), m("f/x")], REFUSED, None, "non-directory"),
    ("symlink-loop", lambda T: [m("l", "sym", link="l"), m("l/x")], REFUSED, None,
     "too many symlinks"),
    ("name-is-dotdot", lambda T: [m("..", "dir"), m("ok")], NEUTRALISED,
     lambda L, T: (L / "ok").is_file(), "layer root"),
    ("unknown-type", lambda T: [m("v", "odd")], REFUSED, None, "unsupported tar type"),
]


def outside_state(base: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == base:
            dirnames[:] = [d for d in dirnames if d != "layer"]
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest()
                           if p.is_file() and not p.is_symlink() else "other")
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_layer_stays_inside(tmp_path, case):
    _, members, expect, check, text = case
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/victim").write_text("original\n")
    layer = tmp_path / "layer"
    layer.mkdir()
    before = outside_state(tmp_path)
    before_root = set(os.listdir("/"))
    data = build(members(tmp_path))
    if expect == REFUSED:
        with pytest.raises(ImageError) as ei:
            apply_tar(io.BytesIO(data), layer)
        assert text in str(ei.value)
        assert "\n" not in str(ei.value)
    else:
        res = apply_tar(io.BytesIO(data), layer)
        if expect == NEUTRALISED:
            assert any(text in n for n in res.notes), res.notes
        assert check(layer, tmp_path)
    assert outside_state(tmp_path) == before
    assert (tmp_path / "outside/victim").read_text() == "original\n"
    assert set(os.listdir("/")) == before_root


def test_truncated_layer_refused(tmp_path):
    data = build([m("big", data=b"x" * 100_000)])
    (tmp_path / "layer").mkdir()
    with pytest.raises(ImageError, match="unexpected end of data|malformed"):
        apply_tar(io.BytesIO(data[:30_000]), tmp_path / "layer")

