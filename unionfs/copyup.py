"""Copying objects between layers, kernel-side where it can be.

Everything is staged in the work directory (on the upper's filesystem) and renamed into place,
so a crash or kill -9 never leaves a partial object visible in the upper.
"""

from __future__ import annotations

import errno
import os
import stat

from unionfs.layers import is_private_xattr
from unionfs.libc import start_writeback

ORIGIN_XATTRS = ("trusted.pyunion.origin", "user.pyunion.origin")
CHUNK = 1 << 30
SYNC_CHUNK = 8 << 20     # copy-then-start-writeback step when the copy will be fsynced


def copy_data(src_fd: int, dst_fd: int, size: int, sync: bool = False) -> None:
    """Copy a file's data in the kernel, keeping holes (SEEK_DATA/SEEK_HOLE).

    With `sync` (an fsync follows), each chunk's writeback starts as soon as it is copied, so
    the disk works while the copy goes on and the fsync waits for less."""
    off = 0
    while off < size:
        try:
            data = os.lseek(src_fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                break
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                data = off
            else:
                raise
        try:
            hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        except OSError:
            hole = size
        _copy_range(src_fd, dst_fd, data, min(hole, size) - data, sync)
        off = hole
    os.ftruncate(dst_fd, size)


def _copy_range(src_fd: int, dst_fd: int, off: int, count: int, sync: bool) -> None:
    chunk = SYNC_CHUNK if sync else CHUNK
    while count > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(count, chunk), off, off)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.lseek(dst_fd, off, os.SEEK_SET)
            n = os.sendfile(dst_fd, src_fd, off, min(count, chunk))
        if n == 0:
            break
        if sync:
            start_writeback(dst_fd, off, n)
        off += n
        count -= n


def copy_xattrs(src: str, dst: str, skip=is_private_xattr) -> None:
    """Copy user/security/trusted attributes, never the layer machinery's own."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        if skip(name):
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as e:
            # An upper that cannot hold a namespace (e.g. trusted.* unprivileged) loses it, as
            # fuse-overlayfs does, rather than failing the write that needed the copy.
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
                raise


def set_origin(path: str, dev: int, ino: int) -> None:
    value = f"{dev}:{ino}".encode()
    for name in ORIGIN_XATTRS:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
            return
        except OSError:
            continue


def get_origin(path: str) -> tuple[int, int] | None:
    # One listxattr for the usual object without an origin (created in the upper), instead
    # of a failing getxattr per name.
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    for name in ORIGIN_XATTRS:
        if name not in names:
            continue
        try:
            v = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        try:
            dev, ino = v.decode().split(":")
            return int(dev), int(ino)
        except ValueError:
            return None
    return None


def set_owner_mode(path: str, st: os.stat_result) -> None:
    """Owner before mode: chown clears setuid/setgid (and file capabilities)."""
    try:
        os.lchown(path, st.st_uid, st.st_gid)
    except OSError as e:  # unprivileged: the caller records the owner instead
        if e.errno not in (errno.EPERM, errno.EINVAL):
            raise
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))


def set_times(path: str, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def stage_copy(src: str, st: os.stat_result, tmp: str, data: bool = True,
               sync: bool = True, origin: tuple[int, int] | None = None,
               skip=is_private_xattr) -> None:
    """Make at `tmp` a copy of `src` (not its children): data, owner, mode, times, xattrs.

    `origin` is the object the copy stands for (default: `src` itself); it decides st_ino.
    """
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(tmp, 0o700)
    elif stat.S_ISREG(mode):
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW) if data else -1
        try:
            dfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if data:
                    copy_data(sfd, dfd, st.st_size, sync)
                if sync:
                    os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            if sfd >= 0:
                os.close(sfd)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), tmp)
    else:
        os.mknod(tmp, mode, st.st_rdev)
    set_owner_mode(tmp, st)
    copy_xattrs(src, tmp, skip)
    set_origin(tmp, *(origin or (st.st_dev, st.st_ino)))
    set_times(tmp, st)
