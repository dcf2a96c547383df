"""The libc calls Python 3.11's os lacks, through ctypes, loaded once."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    """find_library runs ldconfig: once per process, not per call."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc


def renameat2(src: str, dst: str, flags: int) -> None:
    if _libc().renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Start writing a range to disk without waiting, so a later fsync has less left to do.
    Only a hint: failures are left for that fsync to report."""
    _libc().sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode flags (os.posix_fallocate has none: no punch hole)."""
    if _libc().fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
