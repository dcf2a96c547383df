"""One FUSE connection served by plain loops: read a request, dispatch it, write one reply.

Each worker reads /dev/fuse (or a clone of it) into its own reused buffer, unpacks the header,
calls the handler for the opcode and writes the reply with one syscall; nothing is scheduled
between requests. Handlers translate between the wire format (unionfs/transport/proto.py) and
an fsapi.Filesystem; an OSError becomes -errno for that request, any other exception is logged
and becomes EIO, never the end of the mount.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from unionfs import fsapi
from unionfs.transport import proto
from unionfs.transport.backing import BUSY, CACHED, DIRECT, PASSTHROUGH, BackingTable
from unionfs.transport.notify import QueuedNotifier

log = logging.getLogger("pyunion")

MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // proto.PAGE
BUFFER_SIZE = MAX_WRITE + proto.PAGE          # header + write_in + 1 MiB of data fit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STATX_BASIC_STATS = 0x7FF
PIPE_SIZE = MAX_WRITE       # a READ reply is spliced through a pipe this big (one page per slot)
READAHEAD_KIB = (PIPE_SIZE - proto.PAGE) // 1024   # READs that fit it with their header
SPLICE_MIN = 32 << 10       # smaller READs are copied: two syscalls cost more than the copy
ALIAS_BIT = 1 << 63         # kernel node ids we made up for an inode (see Session._realias)

class _Stop(Exception):
    """Raised by a stop signal while a worker waits in read(): no request is lost."""


def _split(t: float) -> tuple[int, int]:
    s = int(t)
    return s, int((t - s) * 1e9)


def _attr_fields(a: fsapi.Attr) -> tuple:
    asec, ans = divmod(a.atime_ns, 1_000_000_000)
    msec, mns = divmod(a.mtime_ns, 1_000_000_000)
    csec, cns = divmod(a.ctime_ns, 1_000_000_000)
    return (a.ino, a.size, a.blocks, asec, msec, csec, ans, mns, cns, a.mode, a.nlink, a.uid,
            a.gid, a.rdev & 0xFFFFFFFF, a.blksize, 0)


def _name(body: memoryview) -> bytes:
    """A NUL-terminated name that is the whole rest of the request."""
    return bytes(body[:-1]) if len(body) and body[-1] == 0 else bytes(body)


def _names(body: memoryview) -> tuple[bytes, bytes]:
    a, b = bytes(body).split(b"\0")[:2]
    return a, b


class Session:
    """Serve `fs` on the connection `fd` until it is unmounted, destroyed or stopped.

    `passthrough`: ask for FUSE passthrough (it is used only if the kernel offers it and we
    may register backing files, i.e. we are root). `refuse`: INIT flags to treat as not
    offered (tests use it to exercise the fallbacks an older kernel would take). `splice`:
    answer READs of a core with `read_fd` by splicing the file into /dev/fuse, else read()."""

    def __init__(self, fs: fsapi.Filesystem, fd: int, *, passthrough: bool = True,
                 refuse: int = 0, workers: int = 1, splice: bool = True):
        self.fs = fs
        self.fd = fd
        self.want_passthrough = passthrough and os.geteuid() == 0
        self.refuse = refuse
        self.workers = max(1, workers)
        self.minor = 0
        self.flags = 0                      # the INIT flags both sides agreed on
        self.passthrough = False
        self.initialized = threading.Event()
        self.notifier = QueuedNotifier(fd)
        self.backing = BackingTable(self._backing_open, self._backing_close)
        self._stop = False
        self._in_read = False
        self.unmounted = False              # the kernel ended the connection (not a signal)
        self._destroyed = False
        self._lock = None if getattr(fs, "thread_safe", False) else threading.Lock()
        self._block = threading.Lock()      # the backing table is shared by all workers
        self._timeouts: dict = {}    # a timeout (or an entry's pair) -> packed fields
        self._read_fd = getattr(fs, "read_fd", None) if splice else None
        self._tls = threading.local()            # each worker's pipe for spliced READ replies
        self._pipes: list[int] = []
        # Aliases: a second kernel inode for one of the filesystem's inodes, made when an open
        # cannot share the backing file the kernel bound the first one to (_realias).
        self._ino_of: dict[int, int] = {}       # alias node id -> the filesystem's inode
        self._alias: dict[int, int] = {}        # the filesystem's inode -> its newest alias
        self._alias_refs: dict[int, int] = {}   # alias node id -> lookups the kernel holds
        self._next_alias = ALIAS_BIT | 2
        self.notifier.aliases = self._alias
        self.handlers: dict[int, Callable] = {
            proto.INIT: self._init, proto.LOOKUP: self._lookup, proto.FORGET: self._forget,
            proto.BATCH_FORGET: self._batch_forget, proto.GETATTR: self._getattr,
            proto.SETATTR: self._setattr, proto.READLINK: self._readlink,
            proto.SYMLINK: self._symlink, proto.MKNOD: self._mknod, proto.MKDIR: self._mkdir,
            proto.UNLINK: self._unlink, proto.RMDIR: self._rmdir, proto.RENAME: self._rename,
            proto.RENAME2: self._rename2, proto.LINK: self._link, proto.OPEN: self._open,
            proto.CREATE: self._create, proto.READ: self._read, proto.WRITE: self._write,
            proto.RELEASE: self._release, proto.FSYNC: self._fsync, proto.FLUSH: self._enosys,
            proto.STATFS: self._statfs, proto.SETXATTR: self._setxattr,
            proto.GETXATTR: self._getxattr, proto.LISTXATTR: self._listxattr,
            proto.REMOVEXATTR: self._removexattr, proto.OPENDIR: self._opendir,
            proto.READDIR: self._readdir, proto.READDIRPLUS: self._readdirplus,
            proto.RELEASEDIR: self._releasedir, proto.FSYNCDIR: self._fsyncdir,
            proto.FALLOCATE: self._fallocate, proto.LSEEK: self._lseek,
            proto.COPY_FILE_RANGE: self._copy_file_range, proto.STATX: self._statx,
            proto.INTERRUPT: self._interrupt, proto.DESTROY: self._destroy,
        }

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Serve with `workers` loops (extra ones on cloned descriptors) until the end."""
        main_thread = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS} \
            if main_thread else {}
        threads: list[threading.Thread] = []
        clones: list[int] = []
        try:
            for _ in range(self.workers - 1):
                clone = self._clone()
                if clone is None:
                    break
                clones.append(clone)
                t = threading.Thread(target=self._worker, args=(clone, False), daemon=True)
                threads.append(t)
                t.start()
            self._worker(self.fd, main_thread)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self._stop = True
            self.notifier.close()
            with self._block:
                self.backing.close_all()
            if not self._destroyed:
                self._call_destroy()
            for c in clones:
                os.close(c)
            for p in self._pipes:
                os.close(p)

    def _clone(self) -> int | None:
        """A new descriptor of the same connection (FUSE_DEV_IOC_CLONE), or None if refused."""
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, proto.DEV_IOC_CLONE, proto.U32.pack(self.fd))
        except OSError as e:
            log.warning("cannot clone the FUSE descriptor (%s): one worker", e)
            os.close(fd)
            return None
        return fd

    def stop(self) -> None:
        """End serving after the current request (the caller then unmounts)."""
        self._stop = True

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True
        if self._in_read:
            raise _Stop

    def _worker(self, fd: int, main: bool) -> None:
        buf = bytearray(BUFFER_SIZE)
        mv = memoryview(buf)
        readv, write, writev = os.readv, os.write, os.writev
        unpack = proto.IN_HEADER.unpack_from
        handlers = self.handlers
        lock = self._lock if self.workers > 1 else None   # one loop needs no lock
        ino_of = self._ino_of
        OPEN, FORGET = proto.OPEN, proto.FORGET
        while True:
            try:
                if main:
                    self._in_read = True
                    if self._stop:
                        return
                try:
                    n = readv(fd, [buf])
                finally:
                    if main:
                        self._in_read = False
            except _Stop:
                return
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue                # ENOENT: interrupted before we read it
                if e.errno == errno.ENODEV:
                    self.unmounted = True   # unmounted
                    return
                raise
            if n < proto.IN_HEADER_SIZE:
                continue
            length, opcode, unique, nodeid, uid, gid, pid = unpack(buf)
            if nodeid & ALIAS_BIT and opcode != OPEN and opcode != FORGET:
                nodeid = ino_of.get(nodeid, nodeid)   # OPEN and FORGET need the alias
            handler = handlers.get(opcode)
            try:
                if handler is None:
                    reply = self._error(unique, errno.ENOSYS)
                elif lock is None:
                    reply = handler(unique, nodeid, uid, gid, pid, mv[40:length])
                else:
                    with lock:
                        reply = handler(unique, nodeid, uid, gid, pid, mv[40:length])
            except OSError as e:
                reply = self._error(unique, e.errno or errno.EIO)
            except _Stop:
                raise
            except Exception:
                log.exception("internal error serving opcode %d", opcode)
                reply = self._error(unique, errno.EIO)
            if reply is None:
                continue
            try:
                if type(reply) is list:
                    writev(fd, reply)
                elif type(reply) is int:
                    self._splice_out(fd, reply)
                else:
                    write(fd, reply)
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return
                if e.errno != errno.ENOENT:    # ENOENT: the request was interrupted
                    log.warning("FUSE reply to opcode %d failed: %s", opcode, e)
            if opcode == proto.DESTROY:
                self.unmounted = True
                return

    @staticmethod
    def _error(unique: int, err: int) -> bytes:
        return proto.OUT_HEADER.pack(16, -err, unique)

    @staticmethod
    def _ok(unique: int) -> bytes:
        return proto.OUT_HEADER.pack(16, 0, unique)

    def _timeout(self, t: float) -> tuple[int, int]:
        got = self._timeouts.get(t)
        if got is None:
            got = self._timeouts[t] = _split(t)
        return got

    def _node_out(self, ino: int) -> int:
        """The kernel node id to answer for inode `ino` in a reply that counts a lookup."""
        alias = self._alias.get(ino)
        if alias is None:
            return ino
        self._alias_refs[alias] += 1
        return alias

    def _realias(self, nodeid: int) -> None:
        """Give the filesystem's inode behind kernel node `nodeid` a new kernel node id.

        Called when an open of `nodeid` cannot share the backing file the kernel bound it to
        (a lower file passed through to a reader, then copied up by this open). The open is
        answered ESTALE: the kernel then retries the path walk once with LOOKUP_REVAL, our
        LOOKUP answers the new id, the kernel drops the stale dentry and opens a fresh inode
        with no passthrough handles. The reader keeps the old inode and its backing file."""
        ino = self._ino_of.get(nodeid, nodeid)
        alias = self._next_alias
        self._next_alias += 1
        self._ino_of[alias] = ino
        self._alias_refs[alias] = 0
        old = self._alias.get(ino)
        self._alias[ino] = alias
        if old is not None and not self._alias_refs.get(old):
            self._drop_alias(old)

    def _drop_alias(self, alias: int) -> None:
        self._alias_refs.pop(alias, None)
        self._ino_of.pop(alias, None)

    def _entry_timeouts(self, e: fsapi.Entry) -> tuple[int, int, int, int]:
        """(entry s, attr s, entry ns, attr ns), in the order fuse_entry_out holds them."""
        key = (e.entry_timeout, e.attr_timeout)
        got = self._timeouts.get(key)
        if got is None:
            (es, ens), (as_, ans) = _split(key[0]), _split(key[1])
            got = self._timeouts[key] = (es, as_, ens, ans)
        return got

    def _entry(self, unique: int, e: fsapi.Entry) -> bytes:
        t = self._timeouts.get((e.entry_timeout, e.attr_timeout)) or self._entry_timeouts(e)
        nodeid = e.attr.ino if not self._alias else self._node_out(e.attr.ino)
        return proto.ENTRY_REPLY.pack(proto.ENTRY_REPLY.size, 0, unique, nodeid,
                                      e.generation, *t, *_attr_fields(e.attr))

    def _attr(self, unique: int, a: fsapi.Attr) -> bytes:
        s, ns = self._timeout(self.fs.attr_timeout)
        return proto.ATTR_REPLY.pack(proto.ATTR_REPLY.size, 0, unique, s, ns, *_attr_fields(a))

    # ------------------------------------------------------------------ INIT / DESTROY
    def _init(self, unique, nodeid, uid, gid, pid, body):
        major, minor, max_readahead, flags = proto.INIT_IN.unpack_from(body)
        if major > proto.KERNEL_MAJOR:          # the kernel retries with our major
            return proto.INIT_REPLY.pack(proto.INIT_REPLY.size, 0, unique, proto.KERNEL_MAJOR,
                                         proto.KERNEL_MINOR, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if major < proto.KERNEL_MAJOR or minor < proto.OLDEST_MINOR:
            log.error("kernel FUSE protocol %d.%d is older than %d.%d (Linux 4.20)", major,
                      minor, proto.KERNEL_MAJOR, proto.OLDEST_MINOR)
            return self._error(unique, errno.EPROTO)
        # Not READDIRPLUS_AUTO: with it the kernel lists all but the first batch without
        # attributes, then looks each name up alone when it is stat'ed (ls -l).
        offered = flags & ~self.refuse
        if offered & proto.INIT_EXT and len(body) >= 20:   # flags2 exists only with INIT_EXT
            offered |= (proto.INIT_IN_FLAGS2.unpack_from(body, 16)[0] << 32) & ~self.refuse
        want = (proto.ASYNC_READ | proto.ATOMIC_O_TRUNC | proto.EXPORT_SUPPORT
                | proto.BIG_WRITES | proto.AUTO_INVAL_DATA | proto.DO_READDIRPLUS
                | proto.ASYNC_DIO | proto.PARALLEL_DIROPS
                | proto.MAX_PAGES | proto.CACHE_SYMLINKS | proto.INIT_EXT
                | proto.DIRECT_IO_ALLOW_MMAP)
        if self.want_passthrough and offered & proto.PASSTHROUGH:
            want |= proto.PASSTHROUGH
        else:
            # Passthrough writes skip the daemon, so suid/sgid must be dropped by the kernel
            # itself (it then sends SETATTR): killpriv is ours only without passthrough.
            want |= proto.HANDLE_KILLPRIV_V2
        agreed = offered & want
        self.flags = agreed
        self.minor = min(minor, proto.KERNEL_MINOR)
        self.passthrough = bool(agreed & proto.PASSTHROUGH)
        self.fs.init(self.notifier)
        self.initialized.set()
        log.debug("FUSE %d.%d, flags %#x, passthrough %s", major, minor, agreed,
                  self.passthrough)
        return proto.INIT_REPLY.pack(
            proto.INIT_REPLY.size, 0, unique, proto.KERNEL_MAJOR, self.minor,
            max(max_readahead, READAHEAD_KIB * 1024),   # the kernel keeps min(this, its bdi's)
            agreed & 0xFFFFFFFF, 64, 48, MAX_WRITE, 1, MAX_PAGES, 0, agreed >> 32,
            1 if self.passthrough else 0)

    def _destroy(self, unique, nodeid, uid, gid, pid, body):
        self._call_destroy()
        return self._ok(unique)

    def _call_destroy(self) -> None:
        self._destroyed = True
        try:
            self.fs.destroy()
        except Exception:
            log.exception("filesystem destroy failed")

    def _interrupt(self, unique, nodeid, uid, gid, pid, body):
        """Requests are answered in order by their worker; by the time an INTERRUPT is read
        the request it names is done or being done, and the kernel waits for its reply."""
        return

    def _enosys(self, unique, nodeid, uid, gid, pid, body):
        return self._error(unique, errno.ENOSYS)   # FLUSH: the kernel stops sending it

    # ------------------------------------------------------------------ names
    def _lookup(self, unique, nodeid, uid, gid, pid, body):
        return self._entry(unique, self.fs.lookup(nodeid, _name(body),
                                                  fsapi.Ctx(uid, gid, pid)))

    def _forget(self, unique, nodeid, uid, gid, pid, body):
        n = proto.U64.unpack_from(body)[0]
        self.fs.forget(self._forget_alias(nodeid, n) if nodeid & ALIAS_BIT else nodeid, n)

    def _batch_forget(self, unique, nodeid, uid, gid, pid, body):
        count = proto.U32.unpack_from(body)[0]
        forget = self.fs.forget
        for i in range(count):
            ino, n = proto.FORGET_ONE.unpack_from(body, 8 + 16 * i)
            forget(self._forget_alias(ino, n) if ino & ALIAS_BIT else ino, n)

    def _forget_alias(self, alias: int, n: int) -> int:
        """The kernel dropped `n` lookups of an alias: the filesystem's inode it stands for.
        The newest alias of an inode stays (the next lookup answers it again)."""
        ino = self._ino_of.get(alias, alias)
        left = self._alias_refs.get(alias, 0) - n
        if left > 0 or self._alias.get(ino) == alias:
            self._alias_refs[alias] = max(left, 0)
        else:
            self._drop_alias(alias)
        return ino

    def _getattr(self, unique, nodeid, uid, gid, pid, body):
        flags, fh = proto.GETATTR_IN.unpack_from(body)
        fh_ = fh if flags & proto.FUSE_GETATTR_FH else None
        return self._attr(unique, self.fs.getattr(nodeid, fh_, fsapi.Ctx(uid, gid, pid)))

    def _statx(self, unique, nodeid, uid, gid, pid, body):
        flags, fh, _sx_flags, _mask = proto.STATX_IN.unpack_from(body)
        a = self.fs.getattr(nodeid, fh if flags & proto.FUSE_GETATTR_FH else None,
                            fsapi.Ctx(uid, gid, pid))
        s, ns = self._timeout(self.fs.attr_timeout)
        times = []
        for t in (a.atime_ns, 0, a.ctime_ns, a.mtime_ns):   # atime btime ctime mtime
            times += divmod(t, 1_000_000_000)
        return proto.STATX_REPLY.pack(
            proto.STATX_REPLY.size, 0, unique, s, ns, 0, 0, 0,
            STATX_BASIC_STATS, a.blksize, 0, a.nlink, a.uid, a.gid, a.mode & 0xFFFF, a.ino,
            a.size, a.blocks, 0, *times, os.major(a.rdev), os.minor(a.rdev), 0, 0)

    def _setattr(self, unique, nodeid, uid, gid, pid, body):
        (valid, fh, size, _lock, atime, mtime, _ctime, atimens, mtimens, _ctimens, mode,
         uid_, gid_) = proto.SETATTR_IN.unpack_from(body)
        ch = fsapi.SetAttr()
        if valid & proto.FATTR_SIZE:
            ch.size = size
        if valid & proto.FATTR_MODE:
            ch.mode = mode
        if valid & proto.FATTR_UID:
            ch.uid = uid_
        if valid & proto.FATTR_GID:
            ch.gid = gid_
        if valid & proto.FATTR_ATIME_NOW:
            ch.atime_ns = time.time_ns()
        elif valid & proto.FATTR_ATIME:
            ch.atime_ns = atime * 1_000_000_000 + atimens
        if valid & proto.FATTR_MTIME_NOW:
            ch.mtime_ns = time.time_ns()
        elif valid & proto.FATTR_MTIME:
            ch.mtime_ns = mtime * 1_000_000_000 + mtimens
        if valid & proto.FATTR_FH:
            ch.fh = fh
        if valid & proto.FATTR_KILL_SUIDGID:
            ch.kill_suid = True
        return self._attr(unique, self.fs.setattr(nodeid, ch, fsapi.Ctx(uid, gid, pid)))

    def _readlink(self, unique, nodeid, uid, gid, pid, body):
        target = self.fs.readlink(nodeid, fsapi.Ctx(uid, gid, pid))
        return proto.OUT_HEADER.pack(16 + len(target), 0, unique) + target

    def _mknod(self, unique, nodeid, uid, gid, pid, body):
        mode, rdev, umask = proto.MKNOD_IN.unpack_from(body)
        return self._entry(unique, self.fs.mknod(nodeid, _name(body[16:]), mode, rdev,
                                                 fsapi.Ctx(uid, gid, pid, umask)))

    def _mkdir(self, unique, nodeid, uid, gid, pid, body):
        mode, umask = proto.MKDIR_IN.unpack_from(body)
        return self._entry(unique, self.fs.mkdir(nodeid, _name(body[8:]), mode,
                                                 fsapi.Ctx(uid, gid, pid, umask)))

    def _symlink(self, unique, nodeid, uid, gid, pid, body):
        name, target = _names(body)
        return self._entry(unique, self.fs.symlink(nodeid, name, target,
                                                   fsapi.Ctx(uid, gid, pid)))

    def _link(self, unique, nodeid, uid, gid, pid, body):
        old = proto.U64.unpack_from(body)[0]
        old = self._ino_of.get(old, old)
        return self._entry(unique, self.fs.link(old, nodeid, _name(body[8:]),
                                                fsapi.Ctx(uid, gid, pid)))

    def _unlink(self, unique, nodeid, uid, gid, pid, body):
        self.fs.unlink(nodeid, _name(body), fsapi.Ctx(uid, gid, pid))
        return self._ok(unique)

    def _rmdir(self, unique, nodeid, uid, gid, pid, body):
        self.fs.rmdir(nodeid, _name(body), fsapi.Ctx(uid, gid, pid))
        return self._ok(unique)

    def _rename(self, unique, nodeid, uid, gid, pid, body):
        newdir = proto.U64.unpack_from(body)[0]
        old, new = _names(body[8:])
        self.fs.rename(nodeid, old, newdir, new, 0, fsapi.Ctx(uid, gid, pid))
        return self._ok(unique)

    def _rename2(self, unique, nodeid, uid, gid, pid, body):
        newdir, flags = proto.RENAME2_IN.unpack_from(body)
        old, new = _names(body[16:])
        self.fs.rename(nodeid, old, newdir, new, flags, fsapi.Ctx(uid, gid, pid))
        return self._ok(unique)

    # ------------------------------------------------------------------ files
    def _open_flags(self, nodeid: int, op: fsapi.Opened) -> tuple[int, int]:
        """FOPEN_* flags and backing id for a new file handle of kernel node `nodeid`."""
        flags = 0
        if op.keep_cache:
            flags |= proto.FOPEN_KEEP_CACHE
        if not self.passthrough:
            return flags | (proto.FOPEN_DIRECT_IO if op.direct_io else 0), 0
        with self._block:
            mode, backing_id = self.backing.open(nodeid, op.fh, op.backing_fd, op.direct_io)
        if mode == BUSY:
            self.fs.release(op.fh)
            self._realias(nodeid)
            raise OSError(errno.ESTALE, "open in passthrough mode with another backing file")
        if mode == PASSTHROUGH:
            return proto.FOPEN_PASSTHROUGH, backing_id
        if mode == DIRECT:
            return proto.FOPEN_DIRECT_IO, 0
        assert mode == CACHED
        return flags, 0

    def _backing_open(self, fd: int) -> int:
        arg = bytearray(proto.BACKING_MAP.pack(fd, 0, 0))
        return fcntl.ioctl(self.fd, proto.DEV_IOC_BACKING_OPEN, arg, True)

    def _backing_close(self, backing_id: int) -> None:
        try:
            fcntl.ioctl(self.fd, proto.DEV_IOC_BACKING_CLOSE, proto.U32.pack(backing_id))
        except OSError as e:
            log.warning("cannot close FUSE backing id %d: %s", backing_id, e)

    def _kill_suid(self, nodeid: int, fh: int | None, ctx: fsapi.Ctx) -> None:
        self.fs.setattr(nodeid, fsapi.SetAttr(fh=fh, kill_suid=True), ctx)

    def _open(self, unique, nodeid, uid, gid, pid, body):
        flags, open_flags = proto.OPEN_IN.unpack_from(body)
        ctx = fsapi.Ctx(uid, gid, pid)
        ino = self._ino_of.get(nodeid, nodeid) if nodeid & ALIAS_BIT else nodeid
        op = self.fs.open(ino, flags, ctx)
        if open_flags & proto.FUSE_OPEN_KILL_SUIDGID and flags & os.O_TRUNC:
            self._kill_suid(ino, op.fh, ctx)
        fopen, backing_id = self._open_flags(nodeid, op)
        return proto.OPEN_REPLY.pack(proto.OPEN_REPLY.size, 0, unique, op.fh, fopen, backing_id)

    def _create(self, unique, nodeid, uid, gid, pid, body):
        flags, mode, umask, _open_flags = proto.CREATE_IN.unpack_from(body)
        entry, op = self.fs.create(nodeid, _name(body[16:]), mode, flags,
                                   fsapi.Ctx(uid, gid, pid, umask))
        a = entry.attr
        nodeid = a.ino if not self._alias else self._node_out(a.ino)
        fopen, backing_id = self._open_flags(nodeid, op)
        return proto.CREATE_REPLY.pack(proto.CREATE_REPLY.size, 0, unique, nodeid,
                                       entry.generation, *self._entry_timeouts(entry),
                                       *_attr_fields(a), op.fh, fopen, backing_id)

    def _read(self, unique, nodeid, uid, gid, pid, body):
        fh, offset, size = proto.RW_IN.unpack_from(body)[:3]
        if self._read_fd is not None and size >= SPLICE_MIN:
            fd = self._read_fd(fh)
            if fd is not None:
                spliced = self._splice_in(unique, fd, offset, size)
                if spliced is not None:
                    return spliced
        data = self.fs.read(fh, offset, size)
        return [proto.OUT_HEADER.pack(16 + len(data), 0, unique), data]

    def _pipe(self) -> tuple[int, int, int]:
        """This worker's pipe: (read end, write end, page slots), made on its first READ."""
        p = getattr(self._tls, "pipe", None)
        if p is None:
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._pipes += (r, w)
            with contextlib.suppress(OSError):      # over a user's pipe quota: a smaller one
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            p = self._tls.pipe = (r, w, fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) // proto.PAGE)
        return p

    def _splice_in(self, unique: int, fd: int, offset: int, size: int) -> int | None:
        """Put a READ reply in this worker's pipe: the header, then the file's pages by
        reference (no copy through the process); the worker splices it into /dev/fuse. Its
        length, or None when it does not fit the pipe or the file ended early (then read())."""
        r, w, slots = self._pipe()
        n = max(0, min(size, os.fstat(fd).st_size - offset))
        if 1 + (offset % proto.PAGE + n + proto.PAGE - 1) // proto.PAGE > slots:
            return None                             # the header takes a slot of its own
        os.write(w, proto.OUT_HEADER.pack(16 + n, 0, unique))
        got = 0
        try:
            while got < n:
                k = os.splice(fd, w, n - got, offset_src=offset + got)
                if not k:
                    break
                got += k
        except OSError:
            self._drain(r)
            raise
        if got < n:                                 # truncated meanwhile: answer from read()
            self._drain(r)
            return None
        return 16 + n

    def _splice_out(self, fd: int, length: int) -> None:
        r = self._tls.pipe[0]
        try:
            if os.splice(r, fd, length) != length:
                raise OSError(errno.EIO, "short splice of a FUSE reply")
        except OSError:
            self._drain(r)                          # never leave half a reply in the pipe
            raise

    @staticmethod
    def _drain(r: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(r, MAX_WRITE):
                pass

    def _write(self, unique, nodeid, uid, gid, pid, body):
        fh, offset, size, write_flags = proto.RW_IN.unpack_from(body)[:4]
        ctx = fsapi.Ctx(uid, gid, pid)
        if write_flags & proto.FUSE_WRITE_KILL_SUIDGID:
            self._kill_suid(nodeid, fh, ctx)
        n = self.fs.write(fh, offset, body[40:40 + size], ctx)
        return proto.WRITE_REPLY.pack(proto.WRITE_REPLY.size, 0, unique, n)

    def _release(self, unique, nodeid, uid, gid, pid, body):
        fh = proto.U64.unpack_from(body)[0]
        try:
            self.fs.release(fh)
        finally:
            if self.passthrough:
                with self._block:
                    self.backing.release(fh)
        return self._ok(unique)

    def _fsync(self, unique, nodeid, uid, gid, pid, body):
        fh, flags = proto.FSYNC_IN.unpack_from(body)
        self.fs.fsync(fh, bool(flags & proto.FUSE_FSYNC_FDATASYNC))
        return self._ok(unique)

    def _fallocate(self, unique, nodeid, uid, gid, pid, body):
        fh, offset, length, mode = proto.FALLOCATE_IN.unpack_from(body)
        self.fs.fallocate(fh, mode, offset, length)
        return self._ok(unique)

    def _lseek(self, unique, nodeid, uid, gid, pid, body):
        fh, offset, whence = proto.LSEEK_IN.unpack_from(body)
        pos = self.fs.lseek(fh, offset, whence)
        return proto.LSEEK_REPLY.pack(proto.LSEEK_REPLY.size, 0, unique, pos)

    def _copy_file_range(self, unique, nodeid, uid, gid, pid, body):
        fh_in, off_in, _node_out, fh_out, off_out, length, flags = \
            proto.COPY_FILE_RANGE_IN.unpack_from(body)
        n = self.fs.copy_file_range(fh_in, off_in, fh_out, off_out, length, flags)
        return proto.WRITE_REPLY.pack(proto.WRITE_REPLY.size, 0, unique, n)

    def _statfs(self, unique, nodeid, uid, gid, pid, body):
        s = self.fs.statfs(nodeid, fsapi.Ctx(uid, gid, pid))
        return proto.STATFS_REPLY.pack(proto.STATFS_REPLY.size, 0, unique, s.blocks, s.bfree,
                                       s.bavail, s.files, s.ffree, s.bsize, s.namemax, s.frsize)

    # ------------------------------------------------------------------ xattrs
    def _setxattr(self, unique, nodeid, uid, gid, pid, body):
        size, flags = proto.SETXATTR_IN.unpack_from(body)
        rest = body[8:]
        end = bytes(rest[:len(rest) - size]).index(b"\0")
        name = bytes(rest[:end])
        value = bytes(rest[end + 1:end + 1 + size])
        self.fs.setxattr(nodeid, name, value, flags, fsapi.Ctx(uid, gid, pid))
        return self._ok(unique)

    def _sized(self, unique: int, data: bytes, size: int) -> bytes:
        if size == 0:
            return proto.XATTR_SIZE_REPLY.pack(proto.XATTR_SIZE_REPLY.size, 0, unique, len(data))
        if len(data) > size:
            return self._error(unique, errno.ERANGE)
        return proto.OUT_HEADER.pack(16 + len(data), 0, unique) + data

    def _getxattr(self, unique, nodeid, uid, gid, pid, body):
        size = proto.U32.unpack_from(body)[0]
        value = self.fs.getxattr(nodeid, _name(body[8:]), fsapi.Ctx(uid, gid, pid))
        return self._sized(unique, value, size)

    def _listxattr(self, unique, nodeid, uid, gid, pid, body):
        size = proto.U32.unpack_from(body)[0]
        names = self.fs.listxattr(nodeid, fsapi.Ctx(uid, gid, pid))
        return self._sized(unique, b"".join(n + b"\0" for n in names), size)

    def _removexattr(self, unique, nodeid, uid, gid, pid, body):
        self.fs.removexattr(nodeid, _name(body), fsapi.Ctx(uid, gid, pid))
        return self._ok(unique)

    # ------------------------------------------------------------------ directories
    def _opendir(self, unique, nodeid, uid, gid, pid, body):
        op = self.fs.opendir(nodeid, fsapi.Ctx(uid, gid, pid))
        flags = (proto.FOPEN_KEEP_CACHE if op.keep_cache else 0) | \
            (proto.FOPEN_CACHE_DIR if op.cache_dir else 0)
        return proto.OPEN_REPLY.pack(proto.OPEN_REPLY.size, 0, unique, op.fh, flags, 0)

    def _readdir(self, unique, nodeid, uid, gid, pid, body):
        fh, offset, size = proto.RW_IN.unpack_from(body)[:3]
        parts = [b""]
        used = 16
        pack = proto.DIRENT.pack
        for d in self.fs.readdir(fh, offset, False):
            n = len(d.name)
            rec = (24 + n + 7) & ~7
            if used + rec > size + 16:
                break
            used += rec
            parts.append(pack(d.ino, d.offset, n, d.type >> 12) + d.name
                         + b"\0" * (rec - 24 - n))
        parts[0] = proto.OUT_HEADER.pack(used, 0, unique)
        return b"".join(parts)

    def _readdirplus(self, unique, nodeid, uid, gid, pid, body):
        fh, offset, size = proto.RW_IN.unpack_from(body)[:3]
        parts = [b""]
        used = 16
        pack = proto.DIRENTPLUS.pack
        count = self.fs.count_lookup
        timeouts = self._entry_timeouts
        zero = (0,) * 16
        aliased = self._node_out if self._alias else None
        for d in self.fs.readdir(fh, offset, True):
            n = len(d.name)
            rec = (152 + n + 7) & ~7
            if used + rec > size + 16:
                break
            used += rec
            e = d.entry
            if e is None or d.name == b"." or d.name == b"..":
                # the kernel takes no reference on "." and "..": no lookup to count
                head = pack(0, 0, 0, 0, 0, 0, *zero, d.ino, d.offset, n, d.type >> 12)
            else:
                ino = e.attr.ino if aliased is None else aliased(e.attr.ino)
                head = pack(ino, e.generation, *timeouts(e), *_attr_fields(e.attr),
                            d.ino, d.offset, n, d.type >> 12)
                count(e.attr.ino)
            parts.append(head + d.name + b"\0" * (rec - 152 - n))
        parts[0] = proto.OUT_HEADER.pack(used, 0, unique)
        return b"".join(parts)

    def _releasedir(self, unique, nodeid, uid, gid, pid, body):
        self.fs.releasedir(proto.U64.unpack_from(body)[0])
        return self._ok(unique)

    def _fsyncdir(self, unique, nodeid, uid, gid, pid, body):
        fh, flags = proto.FSYNC_IN.unpack_from(body)
        self.fs.fsyncdir(fh, bool(flags & proto.FUSE_FSYNC_FDATASYNC))
        return self._ok(unique)
