"""Attach a /dev/fuse connection to a directory, and detach it, without libfuse.

As root: open /dev/fuse and call mount(2) with `fd=N,rootmode=...,user_id=,group_id=`.
As an ordinary user: run `fusermount3` (setuid root) with `_FUSE_COMMFD` naming one end of a
socket pair; it mounts and sends the /dev/fuse descriptor back over the socket (SCM_RIGHTS).
This is what libfuse's lib/mount.c does; options are split the same way between mount flags
(nosuid, ro, noatime, ...) and the filesystem's own data string.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
from dataclasses import dataclass

from unionfs import libc, mountinfo

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS = 1, 2, 4, 8, 16
MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME, MNT_DETACH = 128, 1024, 2048, 2
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24

# option -> (flag, set?)  as libfuse's mount_flags table
FLAG_OPTIONS = {
    "rw": (MS_RDONLY, False), "ro": (MS_RDONLY, True), "suid": (MS_NOSUID, False),
    "nosuid": (MS_NOSUID, True), "dev": (MS_NODEV, False), "nodev": (MS_NODEV, True),
    "exec": (MS_NOEXEC, False), "noexec": (MS_NOEXEC, True), "async": (MS_SYNCHRONOUS, False),
    "sync": (MS_SYNCHRONOUS, True), "atime": (MS_NOATIME, False), "noatime": (MS_NOATIME, True),
    "nodiratime": (MS_NODIRATIME, True), "dirsync": (MS_DIRSYNC, True),
    "relatime": (MS_RELATIME, True), "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
}
DATA_OPTIONS = frozenset({"allow_other", "default_permissions", "max_read", "blksize"})


class MountFailed(OSError):
    pass


@dataclass
class Mounted:
    """A live connection: the /dev/fuse descriptor and where it is mounted."""

    fd: int
    target: str
    privileged: bool          # mounted by mount(2) ourselves (else through fusermount3)


def split_options(options: set[str] | list[str]) -> tuple[int, list[str], str, str]:
    """(mount flags, data options, fsname, subtype) from libfuse-style option names (pure).

    nosuid and nodev are on unless `suid`/`dev` ask otherwise, as libfuse does."""
    flags = MS_NOSUID | MS_NODEV
    data: list[str] = []
    fsname, subtype = "pyunion", "pyunion"
    for opt in sorted(options):
        key, _, value = opt.partition("=")
        if key in FLAG_OPTIONS:
            bit, on = FLAG_OPTIONS[key]
            flags = (flags | bit) if on else (flags & ~bit)
        elif key == "fsname":
            fsname = value
        elif key == "subtype":
            subtype = value
        elif key in DATA_OPTIONS:
            data.append(opt)
        # anything else (auto_unmount, ...) is libfuse's own business: not the kernel's
    return flags, data, fsname, subtype


def mount(target: str, options: set[str] | list[str], rootmode: int | None = None) -> Mounted:
    """Mount a new FUSE connection on `target`: mount(2) as root, fusermount3 otherwise."""
    if rootmode is None:
        rootmode = stat.S_IFMT(os.stat(target).st_mode) or stat.S_IFDIR
    if os.geteuid() == 0:
        return _mount_root(target, options, rootmode)
    return _mount_fusermount(target, options)


def _mount_root(target: str, options, rootmode: int) -> Mounted:
    flags, data, fsname, subtype = split_options(options)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = ",".join([f"fd={fd}", f"rootmode={rootmode:o}", f"user_id={os.getuid()}",
                     f"group_id={os.getgid()}", *data])
    if libc.handle().mount(fsname.encode(), os.fsencode(target), f"fuse.{subtype}".encode(), flags,
                  opts.encode()) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise MountFailed(err, f"mount {target}: {os.strerror(err)}")
    return Mounted(fd, target, True)


def _mount_fusermount(target: str, options) -> Mounted:
    flags, data, fsname, subtype = split_options(options)
    names = [name for name, (bit, on) in FLAG_OPTIONS.items() if on and flags & bit]
    opts = ",".join([*names, *data, f"fsname={fsname}", f"subtype={subtype}"])
    import subprocess  # not on the root path (mount(2)): fusermount3 is for users
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        r = subprocess.run(["fusermount3", "-o", opts, "--", target], env=env,
                           pass_fds=(theirs.fileno(),), capture_output=True, text=True,
                           timeout=60, check=False)
        theirs.close()
        fds: list[int] = []
        if r.returncode == 0:
            with contextlib.suppress(OSError):
                _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        if r.returncode != 0 or not fds:
            reason = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else \
                "fusermount3 sent no descriptor"
            raise MountFailed(0, reason.removeprefix("fusermount3: "))
        os.set_inheritable(fds[0], False)
        return Mounted(fds[0], target, False)
    finally:
        theirs.close()
        ours.close()


def set_readahead(m: Mounted, kib: int) -> bool:
    """Raise the readahead of the mount's backing device info (/sys/class/bdi/0:N, root only).

    The kernel starts a FUSE mount at the default 128 KiB, so a sequential reader served by the
    daemon costs one READ per 128 KiB; INIT can only lower that. Call it before INIT is
    answered: the kernel keeps min(this, the INIT reply's max_readahead). False if refused."""
    entry = mountinfo.top_mount(mountinfo.mount_point_path(m.target))
    if entry is None or not entry.fstype.startswith("fuse"):
        return False
    try:
        with open(f"/sys/class/bdi/{entry.dev[0]}:{entry.dev[1]}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError:
        return False
    return True


def unmount(m: Mounted, lazy: bool = True) -> None:
    """Detach the mount (lazily: open files keep working until closed); idempotent."""
    if m.privileged:
        if libc.handle().umount2(os.fsencode(m.target), MNT_DETACH if lazy else 0) != 0:
            err = ctypes.get_errno()
            if err not in (22, 2):      # EINVAL/ENOENT: already gone
                raise MountFailed(err, f"umount {m.target}: {os.strerror(err)}")
        return
    import subprocess
    subprocess.run(["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + ["--", m.target],
                   capture_output=True, timeout=60, check=False)
