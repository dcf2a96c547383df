"""The Linux system calls Python 3.11's os module lacks, through ctypes, in one place.

Every wrapper raises OSError with errno and a path/what, like the os module does.
"""

from __future__ import annotations

import ctypes
import errno
import os

from unionfs import libc
from unionfs.libc import (  # noqa: F401 - the runtime's modules take them from here
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    openat2,
)

_libc = libc.handle()   # unionfs/libc.py: the one place libc is loaded
_libc.syscall.restype = ctypes.c_long

# clone/unshare flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# prctl options (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# openat2 and its resolve flags: unionfs/libc.py

_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "setns": 308, "unshare": 272, "capset": 126, "capget": 125},
    "aarch64": {"pivot_root": 41, "setns": 268, "unshare": 97, "capset": 91, "capget": 90},
}


def _nr(name: str) -> int:
    arch = os.uname().machine   # platform.machine()'s answer; platform compiles 9 regexes at import
    try:
        return _SYSCALLS[arch][name]
    except KeyError:
        raise OSError(errno.ENOSYS, f"{name}: unsupported architecture {arch}") from None


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def unshare(flags: int) -> None:
    """unshare(2): move this process into new namespaces (pid: only its future children)."""
    _check(_libc.syscall(_nr("unshare"), ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace that `fd` (an open /proc/PID/ns/X or bind mount) refers to."""
    _check(_libc.syscall(_nr("setns"), ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    def b(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)
    ret = _libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data))
    _check(ret, f"mount {source or fstype} on {target}", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    ret = _libc.syscall(_nr("pivot_root"), os.fsencode(new_root), os.fsencode(put_old))
    _check(ret, "pivot_root", new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    return _check(_libc.prctl(ctypes.c_int(option), *args), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for this thread; each set is a bit mask of capability numbers (64 bits)."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_nr("capset"), ctypes.byref(header), data), "capset")


def capget() -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) of this thread as 64-bit masks."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_nr("capget"), ctypes.byref(header), data), "capget")
    eff = data[0].effective | (data[1].effective << 32)
    prm = data[0].permitted | (data[1].permitted << 32)
    inh = data[0].inheritable | (data[1].inheritable << 32)
    return eff, prm, inh


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]


def fstatfs_type(fd: int) -> int:
    """The filesystem magic number of an open fd (e.g. 0x9FA0 for procfs)."""
    buf = _Statfs()
    _check(_libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf)), "fstatfs")
    return buf.f_type


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def link_up(name: str) -> None:
    """Bring a network interface of this network namespace up (as `ip link set NAME up`)."""
    import fcntl
    import socket
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", name.encode(), 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sh14x", name.encode(),
                                                                 flags | _IFF_UP))
