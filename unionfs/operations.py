"""pyfuse3 serving an `fsapi.Filesystem`: translation only.

pyfuse3's callbacks become calls on the filesystem (bytes names, fsapi.Ctx with the umask
applied to creating modes), its answers become EntryAttributes, FileInfo and readdir replies,
OSError becomes FUSEError. pyfuse3's invalidate calls are the filesystem's Notifier. What
pyfuse3 cannot deliver (fallocate, lseek, copy_file_range) is simply not wired here.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from unionfs import fsapi

log = logging.getLogger("pyunion")
CONVERTED_ENTRIES = 200_000     # bound on readdirplus replies kept converted


def _translate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """OSError -> FUSEError with the same errno; anything else is a bug that costs one
    request (EIO), never the mount."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return await fn(*args, **kw)
        except FUSEError:
            raise
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


def _ctx(ctx: Any) -> fsapi.Ctx:
    if ctx is None:
        return fsapi.Ctx()
    return fsapi.Ctx(ctx.uid, ctx.gid, ctx.pid, getattr(ctx, "umask", 0o022))


def _attrs(a: fsapi.Attr, generation: int = 0, entry_timeout: float = 0.0,
           attr_timeout: float = 0.0) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino
    e.generation = generation
    e.entry_timeout = entry_timeout
    e.attr_timeout = attr_timeout
    e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_rdev = a.mode, a.nlink, a.uid, a.gid, a.rdev
    e.st_size, e.st_blksize, e.st_blocks = a.size, a.blksize, a.blocks
    e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = a.atime_ns, a.mtime_ns, a.ctime_ns
    return e


def _entry(e: fsapi.Entry) -> pyfuse3.EntryAttributes:
    return _attrs(e.attr, e.generation, e.entry_timeout, e.attr_timeout)


def _file_info(o: fsapi.Opened) -> pyfuse3.FileInfo:
    return pyfuse3.FileInfo(fh=o.fh, keep_cache=o.keep_cache, direct_io=o.direct_io)


class PyfuseNotifier:
    """fsapi.Notifier through pyfuse3. invalidate_inode may block on the kernel, so it runs
    on a short-lived thread; invalidate_entry_async queues by itself."""

    def inval_entry(self, parent: int, name: bytes) -> None:
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)

    def inval_inode(self, ino: int, offset: int = 0, length: int = 0) -> None:
        def run() -> None:
            try:
                pyfuse3.invalidate_inode(ino, attr_only=offset < 0)
            except (OSError, FUSEError):
                pass  # the kernel no longer knows it: nothing to invalidate
        threading.Thread(target=run, daemon=True).start()


class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: fsapi.Filesystem):
        super().__init__()
        self.fs = fs
        # EntryAttributes built for readdirplus entries, by the Entry they came from: a core
        # that keeps listings hands out the same Entry objects again (a warm walk).
        # Keyed by id(); the Entry is kept with the value, so no id is reused while cached.
        self._converted: dict[int, tuple[fsapi.Entry, pyfuse3.EntryAttributes]] = {}

    def _dir_entry(self, e: fsapi.Entry) -> pyfuse3.EntryAttributes:
        hit = self._converted.get(id(e))
        if hit is not None and hit[0] is e:
            return hit[1]
        if len(self._converted) >= CONVERTED_ENTRIES:
            self._converted.clear()
        attrs = _entry(e)
        self._converted[id(e)] = (e, attrs)
        return attrs

    def init(self) -> None:
        self.fs.init(PyfuseNotifier())

    # -- names and attributes
    @_translate
    async def lookup(self, parent_inode, name, ctx=None):
        return _entry(self.fs.lookup(parent_inode, name, _ctx(ctx)))

    async def forget(self, inode_list):
        for ino, n in inode_list:
            self.fs.forget(ino, n)

    @_translate
    async def getattr(self, inode, ctx=None):
        return _attrs(self.fs.getattr(inode, None, _ctx(ctx)), attr_timeout=self.fs.attr_timeout)

    @_translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        change = fsapi.SetAttr(
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh)
        return _attrs(self.fs.setattr(inode, change, _ctx(ctx)),
                      attr_timeout=self.fs.attr_timeout)

    @_translate
    async def readlink(self, inode, ctx):
        return self.fs.readlink(inode, _ctx(ctx))

    # -- creating and removing names
    @_translate
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return _entry(self.fs.mknod(parent_inode, name, mode & ~ctx.umask, rdev, _ctx(ctx)))

    @_translate
    async def mkdir(self, parent_inode, name, mode, ctx):
        return _entry(self.fs.mkdir(parent_inode, name, mode & ~ctx.umask, _ctx(ctx)))

    @_translate
    async def symlink(self, parent_inode, name, target, ctx):
        return _entry(self.fs.symlink(parent_inode, name, target, _ctx(ctx)))

    @_translate
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return _entry(self.fs.link(inode, new_parent_inode, new_name, _ctx(ctx)))

    @_translate
    async def unlink(self, parent_inode, name, ctx):
        self.fs.unlink(parent_inode, name, _ctx(ctx))

    @_translate
    async def rmdir(self, parent_inode, name, ctx):
        self.fs.rmdir(parent_inode, name, _ctx(ctx))

    @_translate
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, _ctx(ctx))

    # -- files
    @_translate
    async def open(self, inode, flags, ctx):
        return _file_info(self.fs.open(inode, flags, _ctx(ctx)))

    @_translate
    async def create(self, parent_inode, name, mode, flags, ctx):
        entry, opened = self.fs.create(parent_inode, name, mode & ~ctx.umask, flags, _ctx(ctx))
        return _file_info(opened), _entry(entry)

    @_translate
    async def read(self, fh, off, size):
        return self.fs.read(fh, off, size)

    @_translate
    async def write(self, fh, off, buf):
        return self.fs.write(fh, off, buf, fsapi.Ctx())

    # No flush: writes go straight to the layer's file, so close has nothing to report, and the
    # ENOSYS that pyfuse3 answers for us makes the kernel stop sending FLUSH (one request less
    # per close).

    @_translate
    async def release(self, fh):
        self.fs.release(fh)

    @_translate
    async def fsync(self, fh, datasync):
        self.fs.fsync(fh, bool(datasync))

    # -- directories
    @_translate
    async def opendir(self, inode, ctx):
        return self.fs.opendir(inode, _ctx(ctx)).fh

    @_translate
    async def readdir(self, fh, start_id, token):
        for de in self.fs.readdir(fh, start_id, True):
            assert de.entry is not None
            if not pyfuse3.readdir_reply(token, de.name, self._dir_entry(de.entry), de.offset):
                break
            if de.name not in (b".", b".."):
                self.fs.count_lookup(de.ino)  # readdirplus entries count as lookups

    @_translate
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    @_translate
    async def fsyncdir(self, fh, datasync):
        self.fs.fsyncdir(fh, bool(datasync))

    # -- misc
    @_translate
    async def statfs(self, ctx):
        sf = self.fs.statfs(pyfuse3.ROOT_INODE, _ctx(ctx))
        s = pyfuse3.StatvfsData()
        s.f_bsize, s.f_frsize, s.f_blocks = sf.bsize, sf.frsize, sf.blocks
        s.f_bfree, s.f_bavail, s.f_files = sf.bfree, sf.bavail, sf.files
        s.f_ffree, s.f_favail, s.f_namemax = sf.ffree, sf.ffree, sf.namemax
        return s

    @_translate
    async def getxattr(self, inode, name, ctx):
        return self.fs.getxattr(inode, name, _ctx(ctx))

    @_translate
    async def listxattr(self, inode, ctx):
        return self.fs.listxattr(inode, _ctx(ctx))

    @_translate
    async def setxattr(self, inode, name, value, ctx):
        self.fs.setxattr(inode, name, value, 0, _ctx(ctx))

    @_translate
    async def removexattr(self, inode, name, ctx):
        self.fs.removexattr(inode, name, _ctx(ctx))

    async def access(self, inode, mode, ctx):
        return True  # the kernel checks permissions itself (default_permissions)


__all__ = ["FuseOperations", "PyfuseNotifier"]
