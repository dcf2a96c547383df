"""The C library through ctypes, loaded once (`handle()`), and the calls Python 3.11's os lacks."""

from __future__ import annotations

import ctypes
import functools
import os

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SYNC_FILE_RANGE_WRITE = 2

# openat2 resolve flags (linux/openat2.h)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_OPENAT2 = 437  # the same number on every architecture (new syscall table)


@functools.cache
def handle() -> ctypes.CDLL:
    """The C library, loaded once per process for every ctypes caller (the runtime's raw
    syscalls included). By soname: ctypes.util.find_library runs ldconfig, which costs more
    than a whole CLI call; it is only the fallback for a libc with another soname (musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library  # imports shutil, subprocess, tempfile: fallback only
        libc = ctypes.CDLL(find_library("c"), use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    libc.syscall.restype = ctypes.c_long
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def renameat2(src: str, dst: str, flags: int) -> None:
    if handle().renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Start writing a range to disk without waiting, so a later fsync has less left to do.
    Only a hint: failures are left for that fsync to report."""
    handle().sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode flags (os.posix_fallocate has none: no punch hole)."""
    if handle().fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open PATH relative to DIRFD with RESOLVE_* scoping (e.g. IN_ROOT); the fd
    is close-on-exec. Raises OSError("open PATH: reason") with the path, as os.open does."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    lib = handle()
    ret = lib.syscall(ctypes.c_long(_OPENAT2), ctypes.c_int(dirfd), os.fsencode(path),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"open {path}: {os.strerror(e)}", path)
    return ret


_FSOPEN, _FSCONFIG, _FSMOUNT = 430, 431, 432   # the same on every architecture (5.2+)
_FSCONFIG_CMD_CREATE = 6


def detached_mount(fstype: str) -> int:
    """A new mount of FSTYPE (no source, no options) attached nowhere: a descriptor to reach its
    files with the *at calls (fsopen/fsconfig/fsmount, Linux 5.2, CAP_SYS_ADMIN). No mount
    table changes and no namespace is copied. Raises OSError."""
    lib = handle()

    def check(ret: int, what: str) -> int:
        if ret < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what} {fstype}: {os.strerror(e)}")
        return ret

    fs = check(lib.syscall(ctypes.c_long(_FSOPEN), fstype.encode(), ctypes.c_uint(1)), "fsopen")
    try:
        check(lib.syscall(ctypes.c_long(_FSCONFIG), ctypes.c_int(fs),
                          ctypes.c_uint(_FSCONFIG_CMD_CREATE), None, None, ctypes.c_int(0)),
              "fsconfig")
        return check(lib.syscall(ctypes.c_long(_FSMOUNT), ctypes.c_int(fs), ctypes.c_uint(1),
                                 ctypes.c_uint(0)), "fsmount")
    finally:
        os.close(fs)
