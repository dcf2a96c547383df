"""Turn an upper directory (an OCI changeset) into a layer tar, deterministically.

Same tree, same bytes: entries are written parents first, each directory's children in a fixed
order (opaque marker, then whiteouts, then the rest by byte order), PAX format, numeric owners only
(no uname/gname), whole-second mtimes, whiteouts as empty files with mode 0, owner 0 and mtime 0
(as containerd >= 2 writes them), and gzip with mtime 0 and no file name. Kernel-overlay markers
(a 0/0 character device, an `overlay.opaque` xattr) are converted to their OCI form, and the
union filesystem's private xattrs are never written. Hardlinks inside the upper stay hardlinks.

Ownership recorded in an override xattr (`user.containers.override_stat`, written by a rootless
import or a rootless mount) is what goes into the tar: its owner, mode and type, so an empty
stand-in file recorded as `char-M-m` becomes a real device entry; the xattr itself never does.
With rootless IDS, a file without that xattr owned by the user's own uid/gid is written as 0
(root), the owner it has inside a rootless container. A store committed rootless thus gives
the same layer as the same tree committed by root.
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

from snapshotter.applier import REFUSED_XATTR_PREFIXES, RootlessIds
from snapshotter.digest import HashingWriter
from unionfs.layers import OPAQUE_MARKER, WH_PREFIX, dir_marks, is_xattr_whiteout
from unionfs.ownership import Override, read_override

OVERRIDE_PREFIX = "user.containers.override_"      # podman/fuse-overlayfs bookkeeping
SKIPPED_XATTR_PREFIXES = (*REFUSED_XATTR_PREFIXES, OVERRIDE_PREFIX)
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


def _xattr_getter(path: str):
    def get(name: str) -> bytes | None:
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None
    return get


def _xattrs(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in sorted(names):
        if name.startswith(SKIPPED_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return out


def recorded_kind(disk_mode: int, size: int, o: Override | None) -> int:
    """The file type to archive (pure): the override's where it names a device, fifo or socket
    stood in for by an empty regular file (a rootless store cannot create those), else the
    type on disk."""
    kind = stat.S_IFMT(disk_mode)
    if o is None or kind != stat.S_IFREG or size != 0:
        return kind
    want = stat.S_IFMT(o.mode)
    if want in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        return want
    return kind


def recorded_owner(st: os.stat_result, o: Override | None, ids: RootlessIds | None
                   ) -> tuple[int, int, int]:
    """uid, gid and permission bits to archive (pure): the override's, else what the file on
    disk stands for (rootless: the user's own ids are root's)."""
    if o is not None:
        return o.uid, o.gid, stat.S_IMODE(o.mode)
    uid, gid = (st.st_uid, st.st_gid) if ids is None else ids.implied(st.st_uid, st.st_gid)
    return uid, gid, stat.S_IMODE(st.st_mode)


def _recorded_whiteout(path: str, st: os.stat_result) -> bool:
    """An empty file whose override xattr says `char-0-0`: a kernel-overlay whiteout made
    where mknod was not allowed."""
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    o = read_override(path, st.st_mode)
    return o is not None and stat.S_ISCHR(o.mode) and o.rdev == 0


class _Writer:
    def __init__(self, root: Path, tf: tarfile.TarFile, mtime_clamp: int | None,
                 ids: RootlessIds | None = None):
        self.root = str(root)
        self.tf = tf
        self.clamp = mtime_clamp
        self.ids = ids
        self.links: dict[tuple[int, int], str] = {}
        self.count = 0

    def add(self, ti: tarfile.TarInfo, path: str | None = None) -> None:
        if path is not None and ti.isreg() and ti.size:
            with open(path, "rb") as f:
                self.tf.addfile(ti, f)
        else:
            self.tf.addfile(ti)
        self.count += 1

    def info(self, rel: str, st: os.stat_result, path: str, o: Override | None
             ) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(rel)
        ti.uid, ti.gid, ti.mode = recorded_owner(st, o, self.ids)
        ti.uname = ti.gname = ""
        mtime = int(st.st_mtime)
        ti.mtime = min(mtime, self.clamp) if self.clamp is not None else mtime
        ti.pax_headers = _xattrs(path)
        return ti

    def walk_dir(self, path: str, rel: str) -> None:
        names = sorted(os.listdir(path), key=os.fsencode)
        marked_opaque, xwhiteouts = dir_marks(_xattr_getter(path))
        opaque = OPAQUE_MARKER in names or (rel != "" and marked_opaque)
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
            elif _recorded_whiteout(p, st):
                whiteouts.add(WH_PREFIX + n)     # the same, recorded by a rootless writer
            elif xwhiteouts and is_xattr_whiteout(st.st_mode, st.st_size, _xattr_getter(p)):
                whiteouts.add(WH_PREFIX + n)     # the same, in its xattr form
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
        o = None if stat.S_ISLNK(st.st_mode) else read_override(path, st.st_mode)
        mode = recorded_kind(st.st_mode, st.st_size, o)
        if stat.S_ISSOCK(mode):
            return                      # sockets cannot be archived (as containerd)
        ti = self.info(rel, st, path, o)
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
            rdev = st.st_rdev if o is None or not o.rdev else o.rdev
            ti.devmajor, ti.devminor = os.major(rdev), os.minor(rdev)
            self.add(ti)


def write_layer(upper: str | Path, out: BinaryIO, compression: str = "gzip",
                mtime_clamp: int | None = None, *, ids: RootlessIds | None = None
                ) -> LayerResult:
    """Write the changeset in UPPER to OUT as a (gzip-compressed) layer tar.

    MTIME_CLAMP (e.g. SOURCE_DATE_EPOCH) caps every mtime for reproducible builds. IDS (from
    `applier.rootless_ids()`) says the upper belongs to a rootless store of that user.
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
            w = _Writer(Path(upper), tf, mtime_clamp, ids)
            w.walk_dir(str(upper), "")
    except BaseException:
        if gz is not None:
            gz.abort()
        raise
    if gz is not None:
        gz.close()
    out.flush()
    return LayerResult(inner.digest(), outer.digest(), outer.count, inner.count, w.count)
