"""Ownership an unprivileged user cannot give a file, recorded in an xattr (pure).

The format is the one podman, buildah and fuse-overlayfs share, so stores can be shared with
them: `user.containers.override_stat` = `uid:gid:mode:type`, mode in octal (e.g. `0755`), type
one of file, dir, symlink, pipe, socket, `block-MAJOR-MINOR`, `char-MAJOR-MINOR`.
fuse-overlayfs's older name `user.fuseoverlayfs.override_stat` is read too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

OVERRIDE_XATTR = "user.containers.override_stat"
OVERRIDE_XATTRS = (OVERRIDE_XATTR, "user.fuseoverlayfs.override_stat")

_TYPES = {
    "file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
    "pipe": stat.S_IFIFO, "socket": stat.S_IFSOCK,
}
_NAMES = {v: k for k, v in _TYPES.items()}


@dataclass(frozen=True)
class Override:
    uid: int
    gid: int
    mode: int          # full st_mode: file type bits and permission bits
    rdev: int = 0

    def encode(self) -> bytes:
        return format_override(self).encode()


def format_override(o: Override) -> str:
    kind = stat.S_IFMT(o.mode)
    if kind == stat.S_IFBLK:
        t = f"block-{os.major(o.rdev)}-{os.minor(o.rdev)}"
    elif kind == stat.S_IFCHR:
        t = f"char-{os.major(o.rdev)}-{os.minor(o.rdev)}"
    else:
        t = _NAMES.get(kind, "file")
    return f"{o.uid}:{o.gid}:{stat.S_IMODE(o.mode):04o}:{t}"


def parse_override(value: bytes | str, real_mode: int = stat.S_IFREG) -> Override | None:
    """Parse the xattr's value; without a type the real object's type stands. None if malformed."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    parts = value.strip("\0").strip().split(":")
    if len(parts) < 3:
        return None
    try:
        uid, gid, perm = int(parts[0]), int(parts[1]), int(parts[2], 8)
    except ValueError:
        return None
    kind, rdev = stat.S_IFMT(real_mode), 0
    if len(parts) > 3 and parts[3]:
        t = parts[3]
        if t.startswith(("block-", "char-")):
            try:
                name, major, minor = t.split("-")
                rdev = os.makedev(int(major), int(minor))
            except ValueError:
                return None
            kind = stat.S_IFBLK if name == "block" else stat.S_IFCHR
        elif t in _TYPES:
            kind = _TYPES[t]
        else:
            return None
    return Override(uid, gid, kind | (perm & 0o7777), rdev)


def read_override(path: str, real_mode: int) -> Override | None:
    for name in OVERRIDE_XATTRS:
        try:
            v = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        return parse_override(v, real_mode)
    return None


def write_override(path: str, o: Override) -> None:
    os.setxattr(path, OVERRIDE_XATTR, o.encode(), follow_symlinks=False)


MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class IdMap:
    """fuse-overlayfs's uidmapping=/gidmapping=: CONTAINER:HOST:COUNT[:CONTAINER:HOST:COUNT...].

    Ids on disk are the container's; the kernel (and so the caller) sees the host's. Ids outside
    every range pass through unchanged.
    """

    ranges: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> IdMap:
        nums = [p for p in text.split(":") if p != ""]  # podman writes a leading ':'
        if len(nums) % 3 or not nums or not all(x.isdigit() for x in nums):
            raise ValueError(f"id mapping {text!r} is not CONTAINER:HOST:COUNT[:...] "
                             "(non-negative numbers)")
        vals = [int(x) for x in nums]
        ranges = tuple((vals[i], vals[i + 1], vals[i + 2]) for i in range(0, len(vals), 3))
        for cont, host, count in ranges:
            # Valid ids are 0 .. 2^32-2: (uid_t)-1 means "no change" to chown, as the kernel's
            # uid_map refuses it too.
            if count < 1 or cont + count > MAX_ID + 1 or host + count > MAX_ID + 1:
                raise ValueError(f"id mapping {text!r}: range {cont}:{host}:{count} is empty "
                                 f"or goes past the largest id {MAX_ID}")
        return cls(ranges)

    def to_host(self, disk_id: int) -> int:
        for cont, host, count in self.ranges:
            if cont <= disk_id < cont + count:
                return host + disk_id - cont
        return disk_id

    def to_disk(self, host_id: int) -> int:
        for cont, host, count in self.ranges:
            if host <= host_id < host + count:
                return cont + host_id - host
        return host_id
