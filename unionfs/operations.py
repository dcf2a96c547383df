"""pyfuse3 callbacks: translation only. Names, errors and attributes in; Union calls out."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from unionfs.inodes import ROOT, Node
from unionfs.union import Union

log = logging.getLogger("pyunion")
LISTING_CACHE_ENTRIES = 500_000   # bound on names held by the listing cache


def _translate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """OSError -> FUSEError with the same errno, so callers see what overlayfs would give."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return await fn(*args, **kw)
        except FUSEError:
            raise
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None
        except KeyError:
            raise FUSEError(errno.ENOENT) from None
        except Exception:
            # A bug must cost one request, never the mount.
            log.exception("internal error in %s", fn.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


def _name(b: bytes) -> str:
    return os.fsdecode(b)


class UnionOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, union: Union, timeout: float = 300.0):
        super().__init__()
        self.u = union
        self.timeout = timeout
        self._listing_cache: dict[int, tuple[int, list, list]] = {}
        self._cached_entries = 0

    # -- helpers
    def _node(self, ino: int) -> Node:
        node = self.u.table.get(ino)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.timeout
        a.attr_timeout = self.timeout
        a.st_uid, a.st_gid, a.st_mode, a.st_rdev = self.u.present(node, st)
        a.st_nlink = self.u.nlink(node, st)
        a.st_size = st.st_size
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        return a

    # -- lookups and attributes
    @_translate
    async def lookup(self, parent_inode, name, ctx=None):
        node, st = self.u.lookup(self._node(parent_inode), _name(name))
        return self._attrs(node, st)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            self.u.table.forget(ino, n)

    @_translate
    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        return self._attrs(node, self.u.stat(node))

    @_translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        fd = None
        if fh is not None and fh in self.u.handles:
            fd = self.u.handles[fh].fd
        st = self.u.setattr(
            node,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fd=fd,
        )
        return self._attrs(node, st)

    @_translate
    async def readlink(self, inode, ctx):
        return os.fsencode(self.u.readlink(self._node(inode)))

    # -- creating and removing names
    @_translate
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        node, st = self.u.mknod(self._node(parent_inode), _name(name), mode & ~ctx.umask, rdev,
                                ctx.uid, ctx.gid)
        return self._attrs(node, st)

    @_translate
    async def mkdir(self, parent_inode, name, mode, ctx):
        node, st = self.u.mkdir(self._node(parent_inode), _name(name), mode & ~ctx.umask,
                                ctx.uid, ctx.gid)
        return self._attrs(node, st)

    @_translate
    async def symlink(self, parent_inode, name, target, ctx):
        node, st = self.u.symlink(self._node(parent_inode), _name(name), os.fsdecode(target),
                                  ctx.uid, ctx.gid)
        return self._attrs(node, st)

    @_translate
    async def link(self, inode, new_parent_inode, new_name, ctx):
        node, st = self.u.link(self._node(inode), self._node(new_parent_inode), _name(new_name))
        return self._attrs(node, st)

    @_translate
    async def unlink(self, parent_inode, name, ctx):
        self.u.unlink(self._node(parent_inode), _name(name))

    @_translate
    async def rmdir(self, parent_inode, name, ctx):
        self.u.rmdir(self._node(parent_inode), _name(name))

    @_translate
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.u.rename(self._node(parent_inode_old), _name(name_old),
                      self._node(parent_inode_new), _name(name_new), flags)

    # -- files
    @_translate
    async def open(self, inode, flags, ctx):
        fd = self.u.open(self._node(inode), flags)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @_translate
    async def create(self, parent_inode, name, mode, flags, ctx):
        node, st, fd = self.u.create(self._node(parent_inode), _name(name), mode & ~ctx.umask,
                                     flags, ctx.uid, ctx.gid)
        self.u.register(fd, node)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._attrs(node, st)

    @_translate
    async def read(self, fh, off, size):
        return os.pread(self.u.fd_for_read(fh), size, off)

    @_translate
    async def write(self, fh, off, buf):
        self.u.mutations += 1  # sizes and times change: cached listings age
        return os.pwrite(self.u.handles[fh].fd, buf, off)

    # No flush: writes go straight to the layer's file, so close has nothing to report, and the
    # ENOSYS that pyfuse3 answers for us makes the kernel stop sending FLUSH (one request less
    # per close).

    @_translate
    async def release(self, fh):
        self.u.release(fh)

    @_translate
    async def fsync(self, fh, datasync):
        if self.u.fsync:
            (os.fdatasync if datasync else os.fsync)(self.u.handles[fh].fd)

    # -- directories
    @_translate
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        m = self.u.mutations
        cached = self._listing_cache.get(node.ino)
        if cached is not None and cached[0] == m:
            names, replies = cached[1], cached[2]
        else:
            names, replies = [e for e in self.u.list_dir(node)], []
        return self.dirs.open(node, names, replies, m)

    @_translate
    async def readdir(self, fh, start_id, token):
        d = self.dirs.get(fh)
        node = d.node
        fresh = d.mutations == self.u.mutations  # nothing changed since opendir
        total = len(d.entries) + 2
        ppath = node.path() if fresh else None
        i = start_id
        while i < total:
            if i < 2:
                target = node if i == 0 else (node.parent or node)
                try:
                    attrs = self._attrs(target, self.u.stat(target))
                except OSError:
                    i += 1
                    continue
                if not pyfuse3.readdir_reply(token, b"." if i == 0 else b"..", attrs, i + 1):
                    break
                i += 1
                continue
            k = i - 2
            if fresh and k < len(d.replies):
                reply = d.replies[k]
            else:
                reply = self._entry_reply(node, d.entries[k], fresh, ppath)
                if fresh and k == len(d.replies):
                    d.replies.append(reply)
            if reply is not None:
                name_b, child, attrs = reply
                if not pyfuse3.readdir_reply(token, name_b, attrs, i + 1):
                    break
                self.u.ref(child)  # readdirplus entries count as lookups
            i += 1
        if fresh and len(d.replies) == len(d.entries) and d.mutations == self.u.mutations:
            self._remember_listing(node.ino, d)

    def _entry_reply(self, node: Node, entry, fresh: bool, ppath: str | None = None):
        """(name, node, attributes) for one listed name, or None if it is gone."""
        try:
            if fresh:
                child, st = self.u.lookup_entry(node, entry, ppath)
            else:  # something changed since opendir: ask every layer
                child, st = self.u.lookup(node, entry.name, count=False)
        except OSError:
            return None
        return os.fsencode(entry.name), child, self._attrs(child, st)

    def _remember_listing(self, ino: int, d) -> None:
        """Keep a complete listing with its replies until anything changes (the mutation
        count): a warm walk then costs no layer I/O and no attribute building."""
        cache = self._listing_cache
        if ino not in cache:
            self._cached_entries += len(d.entries)
            if self._cached_entries > LISTING_CACHE_ENTRIES:
                cache.clear()
                self._cached_entries = len(d.entries)
        cache[ino] = (d.mutations, d.entries, d.replies)

    async def releasedir(self, fh):
        node = self.dirs.close(fh)
        if node is not None:
            self.u.unpin(node)

    async def fsyncdir(self, fh, datasync):
        pass

    # -- misc
    @_translate
    async def statfs(self, ctx):
        sv = self.u.statfs()
        s = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail"):
            setattr(s, attr, getattr(sv, attr))
        s.f_namemax = sv.f_namemax - 4  # room for the ".wh." prefix
        return s

    @_translate
    async def getxattr(self, inode, name, ctx):
        return self.u.getxattr(self._node(inode), os.fsdecode(name))

    @_translate
    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in self.u.listxattr(self._node(inode))]

    @_translate
    async def setxattr(self, inode, name, value, ctx):
        self.u.setxattr(self._node(inode), os.fsdecode(name), value)

    @_translate
    async def removexattr(self, inode, name, ctx):
        self.u.removexattr(self._node(inode), os.fsdecode(name))

    async def access(self, inode, mode, ctx):
        return True  # the kernel checks permissions itself (default_permissions)

    @property
    def dirs(self) -> DirHandles:
        if not hasattr(self, "_dirs"):
            self._dirs = DirHandles()
        return self._dirs


class DirHandles:
    """Open directory streams: a listing taken at opendir, so offsets stay stable."""

    class Stream:
        __slots__ = ("entries", "mutations", "node", "replies")

        def __init__(self, node, entries, replies, mutations):
            self.node = node
            self.entries = entries
            self.replies = replies
            self.mutations = mutations

    def __init__(self) -> None:
        self._next = 1
        self._open: dict[int, DirHandles.Stream] = {}

    def open(self, node: Node, entries, replies, mutations: int) -> int:
        fh = self._next
        self._next += 1
        self._open[fh] = self.Stream(node, entries, replies, mutations)
        node.open_count += 1
        return fh

    def get(self, fh: int) -> DirHandles.Stream:
        return self._open[fh]

    def close(self, fh: int) -> Node | None:
        s = self._open.pop(fh, None)
        return s.node if s is not None else None


__all__ = ["ROOT", "UnionOperations"]
