"""Unpack one uncompressed layer tar into an empty directory, as a changeset.

Why our own applier: `tarfile.extractall` either trusts the archive (no filter) or drops devices
and setuid bits (`data` filter); a layer needs both the full metadata and containment. Rules follow
containerd's `pkg/archive/tar.go`:

* Names are cleaned and clamped to the layer root (`../x` and `/x` land at `x`: NEUTRALISED).
  Parent directories are resolved following symlinks clamped to the root (continuity RootPath), so
  an entry below a symlink never leaves the layer (NEUTRALISED). An entry naming the root is skipped.
* Hardlink targets are resolved the same way (parent clamped, base not followed); a target that is
  missing from this layer or is a directory is REFUSED.
* A later entry for an existing path replaces it unless both are directories (duplicates:
  NEUTRALISED, the last one wins, as containerd does).
* Whiteouts `.wh.NAME` and the opaque marker `.wh..wh..opq` are kept as empty files: the union
  filesystem reads them directly. A `.wh.` name that names nothing, `.` or `..`, and an entry
  below a `.wh.` name, are REFUSED; other `.wh..wh.*` names (aufs metadata) and what lies below
  them are skipped.
* xattrs come from PAX `SCHILY.xattr.*`; `trusted.*` and the union filesystem's private attributes
  (`*.overlay.*`, `*.pyunion.*`, ...), which could forge whiteouts or opaque dirs, are REFUSED.
  A character device 0/0 (the kernel-overlay whiteout form) is REFUSED for the same reason.
* Devices are created only as root outside a user namespace (skipped otherwise, as containerd).
* Metadata per entry: lchown, xattrs, chmod after chown (chown clears setuid), times without
  following symlinks; directory times are set last.

Rootless mode (an ordinary user; see README, Rootless): nothing is chowned. The user's own
uid/gid stand for 0 (root) in the image, as in a rootless container's user namespace; where the
entry's owner, mode or type differs from what the file on disk then implies (another owner, a
setuid bit, a mode without u+rw, a device node), the intended values go into the
`user.containers.override_stat` xattr (unionfs/ownership.py, the podman/fuse-overlayfs format).
Devices become empty regular files carrying `char-M-m`/`block-M-m`. On disk a file keeps its
permission bits plus u+rw (directories u+rwx) and never a setuid/setgid/sticky bit. user.* xattrs
cannot be set on symlinks, so a symlink owned by another non-root id is stored as root's.
Override xattrs inside a layer's own PAX headers are dropped: the tar header is the truth.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import BinaryIO

from snapshotter.digest import CHUNK, HashingReader
from snapshotter.errors import ImageError
from unionfs.layers import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    PRIVATE_XATTR_PREFIXES,
    WH_PREFIX,
    XWHITEOUT_XATTRS,
)
from unionfs.ownership import OVERRIDE_XATTR, OVERRIDE_XATTRS, Override

WH_META_PREFIX = ".wh..wh."
MAX_SYMLINKS = 255

# The layer rules' (unionfs/layers.py) opaque and whiteout xattrs, in both namespaces, would
# forge whiteouts or opaque directories in the union: refused along with the union's own.
REFUSED_XATTR_PREFIXES = tuple(sorted({"trusted.", "user.pyunion.", *PRIVATE_XATTR_PREFIXES,
                                       *OPAQUE_XATTRS, *XWHITEOUT_XATTRS}))


@dataclass(frozen=True)
class RootlessIds:
    """The store user's own ids, which stand for 0 (root) inside images, as a rootless
    container's user namespace maps them (podman, `pyunion run`)."""
    uid: int
    gid: int

    def implied(self, st_uid: int, st_gid: int) -> tuple[int, int]:
        """The image owner a file owned by ST_UID:ST_GID on disk stands for, without xattr."""
        return (0 if st_uid == self.uid else st_uid, 0 if st_gid == self.gid else st_gid)


def rootless_ids(rootless: bool | None = None) -> RootlessIds | None:
    """The ids of the current user when working rootless (default: euid != 0), else None."""
    if rootless is None:
        rootless = os.geteuid() != 0
    return RootlessIds(os.geteuid(), os.getegid()) if rootless else None


def disk_mode(mode: int) -> int:
    """Permission bits a rootless store gives a file or directory of full mode MODE (pure): no
    setuid/setgid/sticky, always u+rw (u+rwx for directories) so the user can read, copy up and
    remove it; the real mode lives in the override xattr."""
    perm = stat.S_IMODE(mode) & 0o777
    return perm | (0o700 if stat.S_ISDIR(mode) else 0o600)


def needs_override(want: Override, ids: RootlessIds, st: os.stat_result) -> bool:
    """True when the file on disk (ST) does not by itself say what WANT says (pure)."""
    uid, gid = ids.implied(st.st_uid, st.st_gid)
    if (uid, gid) != (want.uid, want.gid) or st.st_mode != want.mode:
        return True
    return stat.S_ISCHR(want.mode) or stat.S_ISBLK(want.mode)


def entry_override(m: tarfile.TarInfo) -> Override:
    """The owner, full mode and device number tar entry M asks for (pure)."""
    if m.isdir():
        kind = stat.S_IFDIR
    elif m.issym():
        kind = stat.S_IFLNK
    elif m.isfifo():
        kind = stat.S_IFIFO
    elif m.ischr():
        kind = stat.S_IFCHR
    elif m.isblk():
        kind = stat.S_IFBLK
    else:
        kind = stat.S_IFREG
    rdev = os.makedev(m.devmajor, m.devminor) if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
    return Override(m.uid, m.gid, kind | (m.mode & 0o7777), rdev)


@dataclass
class ApplyResult:
    diff_id: str                  # sha256 of the whole uncompressed stream
    size: int                     # uncompressed bytes read
    entries: int                  # tar entries processed
    notes: list[str] = field(default_factory=list)   # what was neutralised or skipped


def in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            parts = f.read().split()
    except OSError:
        return False
    return parts[:3] != ["0", "0", "4294967295"]


def refused_xattr(name: str) -> bool:
    return name.startswith(REFUSED_XATTR_PREFIXES)


def clean_name(name: str) -> tuple[list[str], bool]:
    """Split a tar name into path components below the root; the flag says it had to be clamped
    (absolute, or `..` climbing above the root)."""
    plain = posixpath.normpath(name) if name else "."
    escaped = plain.startswith(("/", "../")) or plain == ".."
    clamped = posixpath.normpath("/" + name)
    parts = [p for p in clamped.split("/") if p]
    return parts, escaped


def resolve_in_root(root: str, parts: list[str]) -> str:
    """Resolve PARTS under ROOT following symlinks as if ROOT were `/` (never above it).

    Components that do not exist are taken literally; the result always lies inside ROOT.
    """
    todo = deque(parts)
    done: list[str] = []
    links = 0
    while todo:
        p = todo.popleft()
        if p in ("", "."):
            continue
        if p == "..":
            if done:
                done.pop()
            continue
        cur = os.path.join(root, *done, p)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            done.append(p)
            continue
        except NotADirectoryError as e:
            raise ImageError(f"path {'/'.join(done + [p])!r} is below a non-directory") from e
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise ImageError(f"too many symlinks resolving {'/'.join(parts)!r}")
            target = os.readlink(cur)
            if target.startswith("/"):
                done = []
            todo.extendleft(reversed(target.split("/")))
            continue
        done.append(p)
    return os.path.join(root, *done)


class _Applier:
    def __init__(self, root: Path, devices: bool | None, rootless: bool | None = None):
        self.root = os.path.realpath(root)
        self.notes: list[str] = []
        self.dir_times: list[tuple[str, int, int]] = []
        self.ids = rootless_ids(rootless)
        self.devices = (os.geteuid() == 0 and not in_user_namespace()) if devices is None \
            else devices
        if self.ids is not None:
            self.devices = False          # recorded in the override xattr instead
        self.lost_symlink_owners = 0

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    # -- paths -------------------------------------------------------------------------------
    def _mkparents(self, path: str) -> None:
        rel = os.path.relpath(path, self.root)
        cur = self.root
        if rel == ".":
            return
        for p in rel.split("/"):
            cur = os.path.join(cur, p)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ImageError(f"{rel!r} is below a non-directory in the layer")

    def target_path(self, name: str) -> tuple[str, str] | None:
        parts, escaped = clean_name(name)
        if not parts:
            if escaped:
                self.note(f"skipped {name!r}: names the layer root")
            return None
        if escaped:
            self.note(f"neutralised {name!r}: clamped to {'/'.join(parts)!r} inside the layer")
        parent = resolve_in_root(self.root, parts[:-1])
        lexical = os.path.join(self.root, *parts[:-1])
        if parent != lexical:
            self.note(f"neutralised {name!r}: parent resolved through a symlink inside the layer"
                      f" to {os.path.relpath(parent, self.root)!r}")
        self._mkparents(parent)
        return parent, parts[-1]

    def hardlink_source(self, entry_name: str, linkname: str) -> str:
        parts, escaped = clean_name(linkname)
        if not parts:
            raise ImageError(f"hardlink {entry_name!r} points at the layer root")
        if escaped:
            self.note(f"neutralised hardlink {entry_name!r}: target {linkname!r} clamped into "
                      "the layer")
        src = os.path.join(resolve_in_root(self.root, parts[:-1]), parts[-1])
        try:
            st = os.lstat(src)
        except OSError:
            raise ImageError(f"hardlink {entry_name!r}: target {linkname!r} is not in this "
                             "layer") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"hardlink {entry_name!r}: target {linkname!r} is a directory")
        return src

    def clear(self, path: str, name: str, new_is_dir: bool) -> bool:
        """Make room for a new entry; True when an existing directory is kept (dir over dir)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode) and new_is_dir:
            return True
        self.note(f"duplicate entry {name!r}: the later one replaces the earlier")
        if stat.S_ISDIR(st.st_mode):
            _rmtree(path)
        else:
            os.unlink(path)
        return False

    # -- entries -----------------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = m.name
        parts, _ = clean_name(name)
        base = parts[-1] if parts else ""
        whiteout = False
        for comp in parts[:-1]:
            if comp.startswith(WH_META_PREFIX):
                self.note(f"skipped aufs metadata entry {name!r}")
                return
            if comp.startswith(WH_PREFIX):
                raise ImageError(f"refused {name!r}: an entry below a whiteout name")
        if base.startswith(WH_PREFIX):
            if base != OPAQUE_MARKER and base.startswith(WH_META_PREFIX):
                self.note(f"skipped aufs metadata entry {name!r}")
                return
            hidden = base[len(WH_PREFIX):]
            if base != OPAQUE_MARKER and hidden in ("", ".", ".."):
                raise ImageError(f"invalid whiteout {name!r}: it escapes its directory")
            whiteout = True
        if m.ischr() and m.devmajor == 0 and m.devminor == 0 and not whiteout:
            raise ImageError(f"refused {name!r}: a 0/0 character device would forge an overlay "
                             "whiteout")
        self._check_xattrs(m)
        if (m.ischr() or m.isblk()) and not whiteout and not self.devices and self.ids is None:
            self.note(f"skipped device {name!r}: not root or in a user namespace")
            return
        if m.type not in _KNOWN_TYPES:
            raise ImageError(f"entry {name!r}: unsupported tar type {m.type!r}")
        where = self.target_path(name)
        if where is None:
            return
        parent, base = where
        path = os.path.join(parent, base)
        if whiteout:
            if not (m.isreg() and m.size == 0):
                self.note(f"normalised whiteout {name!r} to an empty file")
            self.clear(path, name, False)
            self._write_file(path, None, m)
            if self.ids is None:
                self._meta(path, m)
            return
        if m.islnk():
            src = self.hardlink_source(name, m.linkname)
            if src == path:
                self.note(f"skipped hardlink {name!r}: it points at itself")
                return
            self.clear(path, name, False)
            os.link(src, path, follow_symlinks=False)
            return
        keep_dir = self.clear(path, name, m.isdir())
        if m.isdir():
            if not keep_dir:
                os.mkdir(path, 0o700)
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.isfifo():
            os.mkfifo(path, 0o600)
        elif m.ischr() or m.isblk():
            if m.devmajor > 0xFFFFFFFF or m.devminor > 0xFFFFFFFF:
                raise ImageError(f"entry {name!r}: device number out of range")
            if self.ids is not None:
                self._write_file(path, None, m)       # stand-in; the xattr holds the device
            else:
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        else:
            self._write_file(path, tf.extractfile(m), m)
        if self.ids is not None:
            self._meta_rootless(path, m)
        else:
            self._meta(path, m)

    def _check_xattrs(self, m: tarfile.TarInfo) -> None:
        for key in m.pax_headers:
            if key.startswith("SCHILY.xattr."):
                xname = key[len("SCHILY.xattr."):]
                if xname in OVERRIDE_XATTRS:
                    continue            # dropped in _set_xattrs: the header is the truth
                if refused_xattr(xname):
                    raise ImageError(f"refused xattr {xname!r} on {m.name!r}: trusted and union "
                                     "filesystem attributes could forge whiteouts or opaque dirs")

    def _write_file(self, path: str, src: BinaryIO | None, m: tarfile.TarInfo) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb", buffering=0) as out:
            if src is None:
                return
            remaining = m.size
            while remaining > 0:
                chunk = src.read(min(CHUNK, remaining))
                if not chunk:
                    raise ImageError(f"entry {m.name!r}: unexpected end of data")
                out.write(chunk)
                remaining -= len(chunk)

    def _set_xattrs(self, path: str, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                xname = key[len("SCHILY.xattr."):]
                if xname in OVERRIDE_XATTRS:
                    self.note(f"dropped xattr {xname!r} on {m.name!r}: the tar header gives "
                              "the owner and mode")
                    continue
                raw = value.encode("utf-8", "surrogateescape")
                try:
                    os.setxattr(path, xname, raw, follow_symlinks=False)
                except OSError as e:
                    if e.errno in (errno.ENOTSUP, errno.EPERM):
                        self.note(f"ignored xattr {xname!r} on {m.name!r}: {e.strerror}")
                    else:
                        raise

    def _meta(self, path: str, m: tarfile.TarInfo) -> None:
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        self._set_xattrs(path, m)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)
        self._times(path, m)

    def _meta_rootless(self, path: str, m: tarfile.TarInfo) -> None:
        """No chown: keep the file usable by the user and record what differs in the xattr."""
        assert self.ids is not None
        want = entry_override(m)
        self._set_xattrs(path, m)
        if m.issym():
            if self.ids.implied(*_owner(path)) != (want.uid, want.gid):
                self.lost_symlink_owners += 1
        else:
            os.chmod(path, disk_mode(want.mode))
            if needs_override(want, self.ids, os.lstat(path)):
                try:
                    os.setxattr(path, OVERRIDE_XATTR, want.encode(), follow_symlinks=False)
                except OSError as e:
                    raise ImageError(f"cannot record the owner and mode of {m.name!r} in "
                                     f"{OVERRIDE_XATTR}: {e.strerror} (the store needs a "
                                     "filesystem with user xattrs)") from None
            elif m.isdir():             # a directory entry repeated: drop the earlier record
                for name in OVERRIDE_XATTRS:
                    with contextlib.suppress(OSError):
                        os.removexattr(path, name, follow_symlinks=False)
        self._times(path, m)

    def _times(self, path: str, m: tarfile.TarInfo) -> None:
        mtime_ns = _ns(m.pax_headers.get("mtime"), m.mtime)
        atime_ns = _ns(m.pax_headers.get("atime"), None) or mtime_ns
        if m.isdir():
            self.dir_times.append((path, atime_ns, mtime_ns))
        else:
            os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        for path, atime_ns, mtime_ns in reversed(self.dir_times):
            os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
        if self.lost_symlink_owners:
            self.note(f"{self.lost_symlink_owners} symlink(s) owned by another user are stored "
                      "as root's: user xattrs cannot be set on symlinks")


def _owner(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _ns(pax: str | None, fallback: float | None) -> int:
    """Exact nanoseconds from a PAX time record ("1234.5678"), else from the header's time."""
    if pax:
        try:
            return int(Decimal(pax) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            pass
    return int((fallback or 0) * 1_000_000_000) if fallback is not None else 0


_KNOWN_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE,
                tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                tarfile.BLKTYPE, tarfile.GNUTYPE_SPARSE}


def _rmtree(path: str) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            os.unlink(os.path.join(dirpath, n))
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.rmdir(p)
    os.rmdir(path)


def apply_tar(stream: BinaryIO, dest: str | Path, *, devices: bool | None = None,
              rootless: bool | None = None, on_bytes=None) -> ApplyResult:
    """Unpack the uncompressed tar STREAM into the directory DEST (normally empty).

    ROOTLESS (default: euid != 0) records owners, special modes and devices in override xattrs
    instead of chowning and creating them (see the module docstring).

    Returns the DiffID of the whole stream (read to its end) and the list of neutralised entries.
    Raises ImageError for a refused or malformed layer; DEST may then hold a partial tree, which
    the caller discards with the snapshot it belongs to.
    """
    hr = HashingReader(stream, on_bytes)
    ap = _Applier(Path(dest), devices, rootless)
    count = 0
    current = ""
    try:
        with tarfile.open(fileobj=hr, mode="r|", bufsize=CHUNK) as tf:
            for m in tf:
                current = m.name
                ap.entry(tf, m)
                count += 1
        hr.drain()
        ap.finish()
    except ImageError:
        raise
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ImageError(f"malformed layer tar near {current!r}: {e}") from None
    except (OSError, ValueError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ImageError(f"cannot unpack {current!r}: {msg}") from None
    return ApplyResult(hr.digest(), hr.count, count, ap.notes)
