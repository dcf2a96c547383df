"""The mount table (/proc/PID/mountinfo) and the FUSE control files, read without touching
any mount: a path is never stat()ed here, so a stopped or dead FUSE daemon cannot block us."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FUSECTL = "/sys/fs/fuse/connections"


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (proc(5)), its paths unescaped."""
    mount_id: int
    parent_id: int
    dev: tuple[int, int]     # major, minor of the mounted filesystem
    root: str                # the directory of that filesystem mounted here
    mountpoint: str
    fstype: str
    source: str
    options: str = ""        # per-mount options (rw,nosuid,relatime,...)
    super_options: str = ""  # the filesystem's own options

    @property
    def st_dev(self) -> int:
        return os.makedev(*self.dev)


def unescape(s: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes
    (\\040, \\011, \\012, \\134: fs/proc_namespace.c, mangle()); nothing else is escaped."""
    if "\\" not in s:          # nearly every field: no regex call per field of every line
        return s
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def parse(text: str) -> list[MountEntry]:
    """Parse mountinfo text: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE
    SOURCE SUPER_OPTIONS`. Lines that do not have that shape are skipped."""
    out = []
    for line in text.splitlines():
        f = line.split(" ")
        try:
            sep = f.index("-", 6)
            major, minor = f[2].split(":")
            entry = MountEntry(int(f[0]), int(f[1]), (int(major), int(minor)), unescape(f[3]),
                               unescape(f[4]), f[sep + 1], unescape(f[sep + 2]), f[5],
                               f[sep + 3] if len(f) > sep + 3 else "")
        except (ValueError, IndexError):
            continue
        out.append(entry)
    return out


def mounts(pid: int | str = "self") -> list[MountEntry]:
    """The mount table of PID's mount namespace. Read as bytes: a path that is not UTF-8 comes
    back as os.fsdecode gives it (surrogate escapes), as every os function takes it."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return parse(os.fsdecode(f.read()))


def mount_containing(path: str, pid: int | str = "self") -> str:
    """The mount point (in PID's namespace) that holds PATH, an absolute resolved path."""
    best = "/"
    for m in mounts(pid):
        mp = m.mountpoint
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best = mp
    return best


def top_mount(path: str, pid: int | str = "self") -> MountEntry | None:
    """The topmost mount whose mount point is PATH (an absolute, resolved path), or None."""
    found = None
    for m in mounts(pid):
        if m.mountpoint == path:
            found = m
    return found


def mount_point_path(target: str) -> str:
    """TARGET as the mount table spells it, without stat()ing TARGET itself: its parent is
    resolved, its last component is not (a mount point's attributes come from its daemon)."""
    absolute = os.path.abspath(target)
    parent, base = os.path.split(absolute)
    candidate = os.path.join(os.path.realpath(parent), base) if base else absolute
    if any(m.mountpoint == candidate for m in mounts()):
        return candidate
    return os.path.realpath(absolute)


def fuse_connection(entry: MountEntry) -> str | None:
    """The /sys/fs/fuse/connections directory name of a FUSE mount (its device number)."""
    if not entry.fstype.startswith("fuse"):
        return None
    return str(entry.st_dev)


def namespaces_holding(dev: tuple[int, int]) -> list[tuple[int, str]]:
    """Other mount namespaces with a mount of device DEV: (a pid inside, its mount point).

    One pid per namespace; processes we may not inspect are skipped."""
    try:
        own = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        own = None
    seen: set[int] = set() if own is None else {own}
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            held = [m.mountpoint for m in mounts(entry) if m.dev == dev]
        except (OSError, ValueError):
            continue
        if held:
            out.append((int(entry), held[0]))
    return out
