"""The union as an `fsapi.Filesystem`: inode numbers in, plain answers out, no FUSE import.

`union.Union` holds the overlay semantics over nodes; this module adds what a transport asks
for on top of it: inode numbers and generations, presented attributes, file and directory
handles, listings kept stable per open stream (and cached until anything changes), and the
calls pyfuse3 cannot deliver (fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range) for transports
that can.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Iterator

from unionfs import fsapi, libc
from unionfs.inodes import UPPER, Node
from unionfs.layers import NAME_MAX
from unionfs.union import Union

log = logging.getLogger("pyunion")
LISTING_CACHE_ENTRIES = 500_000   # bound on names held by the listing cache


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _name(b: bytes) -> str:
    return b.decode(_FS_ENCODING, _FS_ERRORS)     # os.fsdecode, one call less


class _Stream:
    """An open directory: its listing taken at opendir, so offsets stay stable."""

    __slots__ = ("entries", "mutations", "node", "replies")

    def __init__(self, node: Node, entries: list, replies: list, mutations: int):
        self.node = node
        self.entries = entries
        self.replies = replies
        self.mutations = mutations


class UnionFilesystem:
    """fsapi.Filesystem over a Union (see fsapi.py for what each call promises)."""

    thread_safe = False

    def __init__(self, union: Union, timeout: float = 300.0, passthrough_lower: bool = False):
        """`passthrough_lower`: offer lower files opened read-only for FUSE passthrough too
        (kernel-speed reads of image layers; a writer that copies such a file up while the
        reader holds it gets ETXTBSY, and the reader keeps the lower data)."""
        self.u = union
        self.passthrough_lower = passthrough_lower
        self.attr_timeout = timeout
        self.entry_timeout = timeout
        self.notifier: fsapi.Notifier | None = None
        self._dirs: dict[int, _Stream] = {}
        self._next_dir = 1
        self._listing_cache: dict[int, tuple[int, list, list]] = {}
        self._cached_entries = 0
        self._offered: dict[int, Node] = {}   # readdirplus entries not yet counted

    # -- lifetime
    def init(self, notifier: fsapi.Notifier) -> None:
        self.notifier = notifier
        self.u.notifier = notifier

    def destroy(self) -> None:
        for fh in list(self.u.handles):
            self.u.release(fh)
        self._dirs.clear()
        self.u.deep.close()

    # -- presentation
    def _node(self, ino: int) -> Node:
        node = self.u.table.nodes.get(ino)
        if node is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return node

    def _attr(self, node: Node, st: os.stat_result) -> fsapi.Attr:
        u = self.u
        if u._plain_ids:   # the common case, without the calls: what the disk says
            uid, gid, mode, rdev = st.st_uid, st.st_gid, st.st_mode, st.st_rdev
        else:
            uid, gid, mode, rdev = u.present(node, st)
        # Only directories and multiply-linked files have a count other than the disk's.
        nlink = st.st_nlink
        if nlink > 1 or node.is_dir:
            nlink = u.nlink(node, st)
        return fsapi.Attr(node.ino, mode, nlink, uid, gid, rdev, st.st_size,
                          st.st_blksize, st.st_blocks, st.st_atime_ns, st.st_mtime_ns,
                          st.st_ctime_ns)

    def _entry(self, node: Node, st: os.stat_result) -> fsapi.Entry:
        return fsapi.Entry(self._attr(node, st), node.generation, self.entry_timeout,
                           self.attr_timeout)

    def lookup(self, parent: int, name: bytes, ctx: fsapi.Ctx) -> fsapi.Entry:
        p = self.u.table.nodes.get(parent)
        if p is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        node, st = self.u.lookup(p, name.decode(_FS_ENCODING, _FS_ERRORS))
        return fsapi.Entry(self._attr(node, st), node.generation, self.entry_timeout,
                           self.attr_timeout)

    # -- names and attributes (lookup: with the presentation above, the hottest call)

    def forget(self, ino: int, nlookup: int) -> None:
        self.u.table.forget(ino, nlookup)

    def count_lookup(self, ino: int) -> None:
        node = self.u.table.nodes.get(ino)
        if node is not None:
            node.lookups += 1
            return
        node = self._offered.get(ino)
        if node is not None:
            self.u.ref(node)

    def getattr(self, ino: int, fh: int | None, ctx: fsapi.Ctx) -> fsapi.Attr:
        node = self._node(ino)
        return self._attr(node, self.u.stat(node))

    def setattr(self, ino: int, change: fsapi.SetAttr, ctx: fsapi.Ctx) -> fsapi.Attr:
        node = self._node(ino)
        fd = None
        if change.fh is not None and change.fh in self.u.handles:
            fd = self.u.handles[change.fh].fd
        st = self.u.setattr(node, size=change.size, mode=change.mode, uid=change.uid,
                            gid=change.gid, atime_ns=change.atime_ns, mtime_ns=change.mtime_ns,
                            fd=fd)
        return self._attr(node, st)

    def readlink(self, ino: int, ctx: fsapi.Ctx) -> bytes:
        return os.fsencode(self.u.readlink(self._node(ino)))

    # -- creating and removing names
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: fsapi.Ctx
              ) -> fsapi.Entry:
        node, st = self.u.mknod(self._node(parent), _name(name), mode, rdev, ctx.uid, ctx.gid)
        return self._entry(node, st)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: fsapi.Ctx) -> fsapi.Entry:
        node, st = self.u.mkdir(self._node(parent), _name(name), mode, ctx.uid, ctx.gid)
        return self._entry(node, st)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: fsapi.Ctx) -> fsapi.Entry:
        node, st = self.u.symlink(self._node(parent), _name(name), os.fsdecode(target),
                                  ctx.uid, ctx.gid)
        return self._entry(node, st)

    def link(self, ino: int, new_parent: int, new_name: bytes, ctx: fsapi.Ctx) -> fsapi.Entry:
        node, st = self.u.link(self._node(ino), self._node(new_parent), _name(new_name))
        return self._entry(node, st)

    def unlink(self, parent: int, name: bytes, ctx: fsapi.Ctx) -> None:
        self.u.unlink(self._node(parent), _name(name))

    def rmdir(self, parent: int, name: bytes, ctx: fsapi.Ctx) -> None:
        self.u.rmdir(self._node(parent), _name(name))

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int,
               ctx: fsapi.Ctx) -> None:
        self.u.rename(self._node(parent), _name(name), self._node(new_parent),
                      _name(new_name), flags)

    # -- files
    def open(self, ino: int, flags: int, ctx: fsapi.Ctx) -> fsapi.Opened:
        fd = self.u.open(self._node(ino), flags)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            self.u.mutations += 1   # passthrough writes never reach write(): age listings here
        # By default only an upper file backs a handle for passthrough: a lower file can be
        # copied up while the handle is open, and the kernel binds an inode to one backing file.
        upper = self.u.handles[fd].layer == UPPER
        backing = fd if upper or self.passthrough_lower else None
        return fsapi.Opened(fd, keep_cache=True, backing_fd=backing)

    def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: fsapi.Ctx
               ) -> tuple[fsapi.Entry, fsapi.Opened]:
        node, st, fd = self.u.create(self._node(parent), _name(name), mode, flags, ctx.uid,
                                     ctx.gid)
        self.u.register(fd, node)
        return self._entry(node, st), fsapi.Opened(fd, keep_cache=True, backing_fd=fd)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return os.pread(self.u.fd_for_read(fh), size, offset)

    def read_fd(self, fh: int) -> int:
        return self.u.fd_for_read(fh)

    def write(self, fh: int, offset: int, data: bytes | memoryview, ctx: fsapi.Ctx) -> int:
        self.u.mutations += 1  # sizes and times change: cached listings age
        return os.pwrite(self._fd(fh), data, offset)

    def _fd(self, fh: int) -> int:
        h = self.u.handles.get(fh)
        if h is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return h.fd

    def release(self, fh: int) -> None:
        h = self.u.handles.get(fh)
        if h is not None and h.layer == UPPER:
            self.u.mutations += 1   # its writes may have bypassed write() (passthrough)
        self.u.release(fh)

    def fsync(self, fh: int, datasync: bool) -> None:
        if self.u.fsync:
            (os.fdatasync if datasync else os.fsync)(self._fd(fh))

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        self.u.mutations += 1
        libc.fallocate(self._fd(fh), mode, offset, length)

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        return os.lseek(self.u.fd_for_read(fh), offset, whence)

    def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int:
        if flags:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self.u.mutations += 1
        return os.copy_file_range(self.u.fd_for_read(fh_in), self._fd(fh_out), length,
                                  off_in, off_out)

    # -- directories
    def opendir(self, ino: int, ctx: fsapi.Ctx) -> fsapi.Opened:
        node = self._node(ino)
        m = self.u.mutations
        cached = self._listing_cache.get(node.ino)
        if cached is not None and cached[0] == m:
            entries, replies = cached[1], cached[2]
        else:
            entries, replies = list(self.u.list_dir(node)), []
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = _Stream(node, entries, replies, m)
        node.open_count += 1
        # Every change of a listing comes through the mount, and the kernel drops its cached
        # listing of a directory on each such change (fuse_dir_changed) or when notified.
        return fsapi.Opened(fh, keep_cache=True, cache_dir=True)

    def readdir(self, fh: int, offset: int, plus: bool) -> Iterator[fsapi.DirEntry]:
        d = self._dirs.get(fh)
        if d is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        node = d.node
        fresh = d.mutations == self.u.mutations  # nothing changed since opendir
        total = len(d.entries) + 2
        ppath = node.path() if fresh else None
        self._offered.clear()
        i = offset
        while i < total:
            if i < 2:
                target = node if i == 0 else (node.parent or node)
                try:
                    st = self.u.stat(target)
                except OSError:
                    i += 1
                    continue
                # "." and ".." never count as lookups.
                yield fsapi.DirEntry(b"." if i == 0 else b"..", target.ino,
                                     st.st_mode & 0o170000, i + 1,
                                     self._entry(target, st) if plus else None)
                i += 1
                continue
            k = i - 2
            i += 1
            if fresh and k < len(d.replies):
                reply = d.replies[k]
            else:
                reply = self._entry_reply(node, d.entries[k], fresh, ppath, i)
                if fresh and k == len(d.replies):
                    d.replies.append(reply)
            if reply is None:
                continue
            child, de = reply
            self._offered[de.ino] = child
            yield de if plus else fsapi.DirEntry(de.name, de.ino, de.type, de.offset)
        if fresh and len(d.replies) == len(d.entries) and d.mutations == self.u.mutations:
            self._remember_listing(node.ino, d)

    def _entry_reply(self, node: Node, entry, fresh: bool, ppath: str | None, offset: int
                     ) -> tuple[Node, fsapi.DirEntry] | None:
        """(node, readdirplus entry) for one listed name, or None if it is gone; kept with
        the listing, so a warm walk hands out the same objects again."""
        try:
            if fresh:
                child, st = self.u.lookup_entry(node, entry, ppath)
            else:  # something changed since opendir: ask every layer
                child, st = self.u.lookup(node, entry.name, count=False)
        except OSError:
            return None
        e = self._entry(child, st)
        return child, fsapi.DirEntry(os.fsencode(entry.name), child.ino,
                                     e.attr.mode & 0o170000, offset, e)

    def _remember_listing(self, ino: int, d: _Stream) -> None:
        """Keep a complete listing with its replies until anything changes (the mutation
        count): a warm walk then costs no layer I/O and no attribute building."""
        cache = self._listing_cache
        if ino not in cache:
            self._cached_entries += len(d.entries)
            if self._cached_entries > LISTING_CACHE_ENTRIES:
                cache.clear()
                self._cached_entries = len(d.entries)
        cache[ino] = (d.mutations, d.entries, d.replies)

    def releasedir(self, fh: int) -> None:
        d = self._dirs.pop(fh, None)
        if d is not None:
            self.u.unpin(d.node)

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass

    # -- the rest
    def statfs(self, ino: int, ctx: fsapi.Ctx) -> fsapi.StatFs:
        sv = self.u.statfs()
        return fsapi.StatFs(sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree,
                            sv.f_bsize, sv.f_frsize, min(sv.f_namemax, NAME_MAX))

    def getxattr(self, ino: int, name: bytes, ctx: fsapi.Ctx) -> bytes:
        return self.u.getxattr(self._node(ino), os.fsdecode(name))

    def listxattr(self, ino: int, ctx: fsapi.Ctx) -> list[bytes]:
        return [os.fsencode(n) for n in self.u.listxattr(self._node(ino))]

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int, ctx: fsapi.Ctx) -> None:
        self.u.setxattr(self._node(ino), os.fsdecode(name), value, flags)

    def removexattr(self, ino: int, name: bytes, ctx: fsapi.Ctx) -> None:
        self.u.removexattr(self._node(ino), os.fsdecode(name))


__all__ = ["UnionFilesystem"]
