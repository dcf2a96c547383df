"""Upper dir -> layer tar: deterministic bytes, OCI whiteouts, hardlinks, round trip via applier."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from snapshotter.applier import apply_tar
from snapshotter.layer_writer import write_layer
from tests.imagebuild import tree_snapshot

root_only = pytest.mark.root   # mknod, trusted xattrs


def make_upper(d: Path, order: int = 0) -> Path:
    """The same changes, created in a different order (ORDER) so inode/readdir order differs."""
    d.mkdir()
    dirs = [lambda: (d / "etc").mkdir(), lambda: (d / "opt/dir").mkdir(parents=True)]
    files = [
        lambda: (d / "etc/.wh.gone").write_bytes(b""),
        lambda: (d / "opt/dir/.wh..wh..opq").write_bytes(b""),
        lambda: (d / "opt/dir/f").write_text("f\n"),
        lambda: os.symlink("new", d / "etc/link"),
        lambda: (d / "etc/new").write_text("new\n"),
    ]
    for s in dirs + (files if not order else list(reversed(files))):
        s()
    os.link(d / "etc/new", d / "etc/hard")
    for p in (d / "etc", d / "opt", d / "opt/dir", d / "etc/new", d / "opt/dir/f"):
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    os.utime(d / "etc/link", (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    return d


def members(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        return tf.getmembers()


def test_same_changes_give_same_digest(tmp_path):
    a, b = make_upper(tmp_path / "a"), make_upper(tmp_path / "b", order=1)
    out_a, out_b = io.BytesIO(), io.BytesIO()
    ra, rb = write_layer(a, out_a), write_layer(b, out_b)
    assert ra.digest == rb.digest and ra.diff_id == rb.diff_id
    assert out_a.getvalue() == out_b.getvalue()
    assert ra.size == len(out_a.getvalue())
    assert gzip.decompress(out_a.getvalue())[:100] == gzip.decompress(out_b.getvalue())[:100]


def test_a_change_changes_the_digest(tmp_path):
    a = make_upper(tmp_path / "a")
    r1 = write_layer(a, io.BytesIO())
    (a / "etc/new").write_text("other\n")
    os.utime(a / "etc/new", (1_600_000_000, 1_600_000_000))
    assert write_layer(a, io.BytesIO()).diff_id != r1.diff_id


def test_entries_whiteouts_and_hardlinks(tmp_path):
    out = io.BytesIO()
    write_layer(make_upper(tmp_path / "u"), out)
    ms = {t.name: t for t in members(out.getvalue())}
    names = [t.name for t in members(out.getvalue())]
    assert names.index("etc") < names.index("etc/.wh.gone") < names.index("etc/hard")
    assert names.index("opt/dir/.wh..wh..opq") < names.index("opt/dir/f")
    wh = ms["etc/.wh.gone"]
    assert (wh.mode, wh.mtime, wh.uid, wh.size) == (0, 0, 0, 0)
    assert ms["opt/dir/.wh..wh..opq"].mtime == 0
    assert ms["etc/link"].issym() and ms["etc/link"].linkname == "new"
    # hardlink kept: first name in order is the file, the other a link to it
    assert ms["etc/hard"].isreg() and ms["etc/new"].islnk()
    assert ms["etc/new"].linkname == "etc/hard"
    assert all(t.uname == "" and t.gname == "" for t in ms.values())


def test_gzip_header_is_fixed(tmp_path):
    out = io.BytesIO()
    write_layer(make_upper(tmp_path / "u"), out)
    raw = out.getvalue()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\0\0\0\0", "gzip mtime must be 0"
    assert raw[3] & 0x08 == 0, "no file name in the gzip header"


def test_uncompressed_layer_digest_equals_diff_id(tmp_path):
    out = io.BytesIO()
    r = write_layer(make_upper(tmp_path / "u"), out, compression="none")
    assert r.digest == r.diff_id and r.size == r.uncompressed_size == len(out.getvalue())


def test_round_trip_through_applier(tmp_path):
    u = make_upper(tmp_path / "u")
    out = io.BytesIO()
    r = write_layer(u, out)
    dest = tmp_path / "d"
    dest.mkdir()
    res = apply_tar(io.BytesIO(gzip.decompress(out.getvalue())), dest)
    assert res.diff_id == r.diff_id
    assert tree_snapshot(dest) == tree_snapshot(u)


@root_only
def test_kernel_overlay_markers_become_oci(tmp_path):
    u = tmp_path / "u"
    (u / "etc").mkdir(parents=True)
    os.mknod(u / "etc/gone", 0o600 | 0o020000, os.makedev(0, 0))
    (u / "opq").mkdir()
    os.setxattr(u / "opq", "trusted.overlay.opaque", b"y")
    (u / "opq/f").write_text("x")
    os.setxattr(u / "opq/f", "user.keep", b"1")
    os.setxattr(u / "opq/f", "trusted.overlay.origin", b"junk")
    out = io.BytesIO()
    write_layer(u, out)
    ms = {t.name: t for t in members(out.getvalue())}
    assert "etc/.wh.gone" in ms and "etc/gone" not in ms
    assert "opq/.wh..wh..opq" in ms
    px = ms["opq/f"].pax_headers
    assert px.get("SCHILY.xattr.user.keep") == "1"
    assert not any("trusted" in k or "overlay" in k for t in ms.values() for k in t.pax_headers)


def test_mtime_clamp(tmp_path):
    u = make_upper(tmp_path / "u")
    out = io.BytesIO()
    write_layer(u, out, mtime_clamp=1_000)
    assert all(t.mtime <= 1_000 for t in members(out.getvalue()))


@root_only
def test_devices_fifos_and_setuid_kept(tmp_path):
    u = tmp_path / "u"
    u.mkdir()
    os.mknod(u / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mkfifo(u / "fifo")
    (u / "suid").write_text("x")
    os.chown(u / "suid", 1000, 1000)
    os.chmod(u / "suid", 0o4755)
    out = io.BytesIO()
    write_layer(u, out)
    ms = {t.name: t for t in members(out.getvalue())}
    assert ms["null"].ischr() and (ms["null"].devmajor, ms["null"].devminor) == (1, 3)
    assert ms["fifo"].isfifo()
    assert ms["suid"].mode == 0o4755 and (ms["suid"].uid, ms["suid"].gid) == (1000, 1000)


def test_parallel_gzip_is_valid_and_independent_of_threads(tmp_path):
    import random
    import subprocess

    from snapshotter.layer_writer import GZ_CHUNK, ParallelGzipWriter
    rng = random.Random(5)
    data = b"".join(rng.randbytes(1000) + b"abc" * 3000 for _ in range(600))  # ~6 MiB
    data += rng.randbytes(3 * GZ_CHUNK)      # incompressible chunks are stored
    assert len(data) > 6 * GZ_CHUNK
    outs = []
    for workers in (1, 3):
        out = io.BytesIO()
        gz = ParallelGzipWriter(out, workers=workers)
        for i in range(0, len(data), 70_001):            # odd write sizes
            gz.write(data[i:i + 70_001])
        gz.close()
        outs.append(out.getvalue())
    assert outs[0] == outs[1]
    assert gzip.decompress(outs[0]) == data
    (tmp_path / "x.gz").write_bytes(outs[0])
    subprocess.run(["gzip", "-t", str(tmp_path / "x.gz")], check=True, timeout=60)
    empty = io.BytesIO()
    ParallelGzipWriter(empty).close()
    assert gzip.decompress(empty.getvalue()) == b""
