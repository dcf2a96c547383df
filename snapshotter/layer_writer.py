"""Turn an upper directory (an OCI changeset) into a layer tar, deterministically.

Same tree, same bytes: entries are written parents first, each directory's children in a fixed
order (opaque marker, then whiteouts, then the rest by byte order), PAX format, numeric owners only
(no uname/gname), whole-second mtimes, whiteouts as empty files with mode 0, owner 0 and mtime 0
(as containerd >= 2 writes them), and gzip with mtime 0 and no file name. Kernel-overlay markers
(a 0/0 character device, an `overlay.opaque` xattr) are converted to their OCI form, and the
union filesystem's private xattrs are never written. Hardlinks inside the upper stay hardlinks.
"""

from __future__ import annotations

import os
import stat
import struct
import tarfile
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from snapshotter.applier import REFUSED_XATTR_PREFIXES
from snapshotter.digest import HashingWriter

WH_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
GZIP_LEVEL = 6
COMPRESSIONS = ("gzip", "none")


GZ_CHUNK = 1 << 20          # fixed, so the output never depends on the number of threads
GZ_WINDOW = 32 << 10


def _incompressible(chunk: bytes) -> bool:
    """True when samples across CHUNK do not shrink at all (already compressed or random data):
    deflate at level 6 costs much and gains nothing there, so such a chunk is stored."""
    if len(chunk) < 4 * 8192:
        return False
    step = len(chunk) // 4
    for i in range(4):
        sample = chunk[i * step:i * step + 8192]
        if len(zlib.compress(sample, 1)) < len(sample) * 0.98:
            return False
    return True


def _deflate(chunk: bytes, zdict: bytes, final: bool) -> bytes:
    level = 0 if _incompressible(chunk) else GZIP_LEVEL
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                         *((zdict,) if zdict else ()))
    return c.compress(chunk) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


class ParallelGzipWriter:
    """gzip on every core, pigz-style, with deterministic output.

    The stream is cut into fixed 1 MiB chunks; each is deflated on a worker thread (zlib releases
    the GIL) primed with the previous 32 KiB as dictionary and ended with a sync flush, so the
    concatenation is one valid deflate stream in one gzip member (mtime 0, no name). Layer
    commits are dominated by deflate, so this is where the cores help. Chunks that do not
    compress are stored. Every choice depends on the bytes only, so output is deterministic.
    """

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

    def __init__(self, raw, workers: int | None = None):
        self.raw = raw
        self.workers = workers or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max_workers=self.workers)
        self.pending: deque[Future] = deque()
        self.buf = bytearray()
        self.prev_tail = b""
        self.crc = 0
        self.size = 0
        self.raw.write(self.HEADER)

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.buf += data
        while len(self.buf) > GZ_CHUNK:       # keep the last chunk back: it may be the final one
            self._submit(bytes(self.buf[:GZ_CHUNK]), final=False)
            del self.buf[:GZ_CHUNK]
        return len(data)

    def _submit(self, chunk: bytes, final: bool) -> None:
        self.pending.append(self.pool.submit(_deflate, chunk, self.prev_tail, final))
        self.prev_tail = chunk[-GZ_WINDOW:]
        limit = 2 * self.workers
        while len(self.pending) > limit or (final and self.pending):
            self.raw.write(self.pending.popleft().result())

    def flush(self) -> None:
        pass

    def close(self) -> None:
        try:
            self._submit(bytes(self.buf), final=True)
            self.raw.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        finally:
            self.abort()

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class LayerResult:
    diff_id: str          # sha256 of the uncompressed tar
    digest: str           # sha256 of the blob as written (== diff_id when uncompressed)
    size: int             # blob size
    uncompressed_size: int
    entries: int


def _whiteout_info(rel: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(rel)
    ti.mode = 0
    ti.mtime = 0
    ti.uname = ti.gname = ""
    return ti


def _is_opaque_by_xattr(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            v = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        if v.strip(b"\0").lower() == b"y":
            return True
    return False


def _xattrs(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in sorted(names):
        if name.startswith(REFUSED_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return out


class _Writer:
    def __init__(self, root: Path, tf: tarfile.TarFile, mtime_clamp: int | None):
        self.root = str(root)
        self.tf = tf
        self.clamp = mtime_clamp
        self.links: dict[tuple[int, int], str] = {}
        self.count = 0

    def add(self, ti: tarfile.TarInfo, path: str | None = None) -> None:
        if path is not None and ti.isreg() and ti.size:
            with open(path, "rb") as f:
                self.tf.addfile(ti, f)
        else:
            self.tf.addfile(ti)
        self.count += 1

    def info(self, rel: str, st: os.stat_result, path: str) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(rel)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        mtime = int(st.st_mtime)
        ti.mtime = min(mtime, self.clamp) if self.clamp is not None else mtime
        ti.pax_headers = _xattrs(path)
        return ti

    def walk_dir(self, path: str, rel: str) -> None:
        names = sorted(os.listdir(path), key=os.fsencode)
        opaque = OPAQUE_MARKER in names or (rel != "" and _is_opaque_by_xattr(path))
        whiteouts: set[str] = set()
        others: list[tuple[str, os.stat_result]] = []
        for n in names:
            p = os.path.join(path, n)
            st = os.lstat(p)
            if n == OPAQUE_MARKER:
                continue
            if n.startswith(WH_PREFIX):
                if n.startswith(".wh..wh."):
                    continue            # aufs metadata is never exported
                whiteouts.add(n)
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                whiteouts.add(WH_PREFIX + n)     # kernel overlay whiteout -> OCI form
            else:
                others.append((n, st))
        prefix = rel + "/" if rel else ""
        if opaque:
            self.add(_whiteout_info(prefix + OPAQUE_MARKER))
        for w in sorted(whiteouts, key=os.fsencode):
            self.add(_whiteout_info(prefix + w))
        for n, st in others:
            self.entry(os.path.join(path, n), prefix + n, st)

    def entry(self, path: str, rel: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return                      # sockets cannot be archived (as containerd)
        ti = self.info(rel, st, path)
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            self.add(ti)
            self.walk_dir(path, rel)
            return
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                ti.type = tarfile.LNKTYPE
                ti.linkname = first
                self.add(ti)
                return
            self.links[key] = rel
        if stat.S_ISREG(mode):
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
            self.add(ti, path)
        elif stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(path)
            self.add(ti)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            self.add(ti)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.add(ti)


def write_layer(upper: str | Path, out: BinaryIO, compression: str = "gzip",
                mtime_clamp: int | None = None) -> LayerResult:
    """Write the changeset in UPPER to OUT as a (gzip-compressed) layer tar.

    MTIME_CLAMP (e.g. SOURCE_DATE_EPOCH) caps every mtime for reproducible builds.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unsupported compression {compression!r}")
    outer = HashingWriter(out)
    gz = None
    if compression == "gzip":
        gz = ParallelGzipWriter(outer)
        inner = HashingWriter(gz)  # type: ignore[arg-type]
    else:
        inner = outer
    try:
        with tarfile.open(fileobj=inner, mode="w|",  # type: ignore[arg-type]
                          format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tf:
            tf.copybufsize = 1 << 20
            w = _Writer(Path(upper), tf, mtime_clamp)
            w.walk_dir(str(upper), "")
    except BaseException:
        if gz is not None:
            gz.abort()
        raise
    if gz is not None:
        gz.close()
    out.flush()
    return LayerResult(inner.digest(), outer.digest(), outer.count, inner.count, w.count)
