"""A descriptor-based fsapi.Filesystem over one directory: the transport's test bed and floor.

Every inode holds an O_PATH descriptor of the object it names (like libfuse's
passthrough_hp and go-fuse's loopback), so renames never invalidate what we hold; files are
opened through /proc/self/fd. It is not a union: tests drive every FUSE operation through it,
and bench/ uses it to show what the transport alone costs.

Run: python -m unionfs.transport.loopback [-o passthrough=off,workers=N] SOURCE TARGET
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass

from unionfs import fsapi, libc

TIMEOUT = 86400.0


@dataclass
class _Inode:
    fd: int
    key: tuple[int, int]
    nlookup: int = 0


def _attr(ino: int, st: os.stat_result) -> fsapi.Attr:
    return fsapi.Attr(ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                      st.st_size, st.st_blksize, st.st_blocks, st.st_atime_ns, st.st_mtime_ns,
                      st.st_ctime_ns)


class Loopback:
    """Serves SOURCE as it is. Inode numbers are the source's (one filesystem)."""

    thread_safe = False
    attr_timeout = TIMEOUT

    def __init__(self, source: str, timeout: float = TIMEOUT):
        self.timeout = timeout
        self.attr_timeout = timeout
        fd = os.open(source, os.O_PATH | os.O_DIRECTORY)
        st = os.fstat(fd)
        self._root = _Inode(fd, (st.st_dev, st.st_ino), 1)
        self._inodes: dict[int, _Inode] = {fsapi.ROOT_INO: self._root}
        self._by_key: dict[tuple[int, int], int] = {self._root.key: fsapi.ROOT_INO}
        self._dirs: dict[int, list[fsapi.DirEntry]] = {}
        self._next_dir = 1
        self._root_uid = os.geteuid() == 0
        self.notifier: fsapi.Notifier | None = None

    def _ino(self, st: os.stat_result) -> int:
        return fsapi.ROOT_INO if (st.st_dev, st.st_ino) == self._root.key else st.st_ino

    def _node(self, ino: int) -> _Inode:
        node = self._inodes.get(ino)
        if node is None:
            raise OSError(errno.ESTALE, "unknown inode")
        return node

    def _proc(self, ino: int) -> str:
        return f"/proc/self/fd/{self._node(ino).fd}"

    def _remember(self, parent_fd: int, name: bytes, st: os.stat_result, count: int) -> fsapi.Entry:
        ino = self._ino(st)
        node = self._inodes.get(ino)
        if node is None or node.key != (st.st_dev, st.st_ino):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent_fd)
            if node is not None:
                os.close(node.fd)
            node = self._inodes[ino] = _Inode(fd, (st.st_dev, st.st_ino))
        node.nlookup += count
        return fsapi.Entry(_attr(ino, st), 0, self.timeout, self.timeout)

    def init(self, notifier: fsapi.Notifier) -> None:
        self.notifier = notifier

    def destroy(self) -> None:
        for node in self._inodes.values():
            os.close(node.fd)
        self._inodes.clear()

    # -- names and attributes
    def lookup(self, parent: int, name: bytes, ctx: fsapi.Ctx) -> fsapi.Entry:
        pfd = self._node(parent).fd
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        return self._remember(pfd, name, st, 1)

    def forget(self, ino: int, nlookup: int) -> None:
        node = self._inodes.get(ino)
        if node is None or ino == fsapi.ROOT_INO:
            return
        node.nlookup -= nlookup
        if node.nlookup <= 0:
            os.close(node.fd)
            del self._inodes[ino]

    def count_lookup(self, ino: int) -> None:
        self._node(ino).nlookup += 1

    def getattr(self, ino: int, fh: int | None, ctx: fsapi.Ctx) -> fsapi.Attr:
        return _attr(ino, os.stat(fh if fh is not None else self._node(ino).fd))

    def setattr(self, ino: int, change: fsapi.SetAttr, ctx: fsapi.Ctx) -> fsapi.Attr:
        path = self._proc(ino)
        if change.size is not None:
            os.truncate(change.fh if change.fh is not None else path, change.size)
        if change.kill_suid:
            mode = os.stat(path).st_mode
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
        if change.mode is not None:
            os.chmod(path, stat.S_IMODE(change.mode))
        if change.uid is not None or change.gid is not None:
            os.chown(path, -1 if change.uid is None else change.uid,
                     -1 if change.gid is None else change.gid)
        if change.atime_ns is not None or change.mtime_ns is not None:
            st = os.stat(path)
            os.utime(path, ns=(change.atime_ns if change.atime_ns is not None else st.st_atime_ns,
                               change.mtime_ns if change.mtime_ns is not None else st.st_mtime_ns))
        return self.getattr(ino, None, ctx)

    def readlink(self, ino: int, ctx: fsapi.Ctx) -> bytes:
        return os.readlink(b"", dir_fd=self._node(ino).fd)

    # -- creating and removing names
    def _owned(self, pfd: int, name: bytes, ctx: fsapi.Ctx) -> fsapi.Entry:
        if self._root_uid:
            parent_gid = os.fstat(pfd)
            gid = -1 if parent_gid.st_mode & stat.S_ISGID else ctx.gid
            os.chown(name, ctx.uid, gid, dir_fd=pfd, follow_symlinks=False)
        return self._remember(pfd, name, os.stat(name, dir_fd=pfd, follow_symlinks=False), 1)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: fsapi.Ctx) -> fsapi.Entry:
        pfd = self._node(parent).fd
        os.mknod(name, mode, rdev, dir_fd=pfd)
        return self._owned(pfd, name, ctx)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: fsapi.Ctx) -> fsapi.Entry:
        pfd = self._node(parent).fd
        os.mkdir(name, mode, dir_fd=pfd)
        return self._owned(pfd, name, ctx)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: fsapi.Ctx) -> fsapi.Entry:
        pfd = self._node(parent).fd
        os.symlink(target, name, dir_fd=pfd)
        return self._owned(pfd, name, ctx)

    def link(self, ino: int, new_parent: int, new_name: bytes, ctx: fsapi.Ctx) -> fsapi.Entry:
        pfd = self._node(new_parent).fd
        os.link(self._proc(ino), new_name, dst_dir_fd=pfd, follow_symlinks=True)
        return self._remember(pfd, new_name, os.stat(new_name, dir_fd=pfd,
                                                     follow_symlinks=False), 1)

    def unlink(self, parent: int, name: bytes, ctx: fsapi.Ctx) -> None:
        os.unlink(name, dir_fd=self._node(parent).fd)

    def rmdir(self, parent: int, name: bytes, ctx: fsapi.Ctx) -> None:
        os.rmdir(name, dir_fd=self._node(parent).fd)

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int,
               ctx: fsapi.Ctx) -> None:
        src, dst = self._node(parent).fd, self._node(new_parent).fd
        if flags:
            libc.renameat2(f"/proc/self/fd/{src}/{os.fsdecode(name)}",
                           f"/proc/self/fd/{dst}/{os.fsdecode(new_name)}", flags)
        else:
            os.rename(name, new_name, src_dir_fd=src, dst_dir_fd=dst)

    # -- files
    def open(self, ino: int, flags: int, ctx: fsapi.Ctx) -> fsapi.Opened:
        fd = os.open(self._proc(ino), flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY))
        return fsapi.Opened(fd, keep_cache=True, backing_fd=fd)

    def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: fsapi.Ctx
               ) -> tuple[fsapi.Entry, fsapi.Opened]:
        pfd = self._node(parent).fd
        fd = os.open(name, flags | os.O_CREAT, mode, dir_fd=pfd)
        try:
            entry = self._owned(pfd, name, ctx)
        except BaseException:
            os.close(fd)
            raise
        return entry, fsapi.Opened(fd, keep_cache=True, backing_fd=fd)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return os.pread(fh, size, offset)

    def read_fd(self, fh: int) -> int:
        return fh

    def write(self, fh: int, offset: int, data: bytes | memoryview, ctx: fsapi.Ctx) -> int:
        return os.pwrite(fh, data, offset)

    def release(self, fh: int) -> None:
        os.close(fh)

    def fsync(self, fh: int, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        libc.fallocate(fh, mode, offset, length)

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        return os.lseek(fh, offset, whence)

    def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int:
        return os.copy_file_range(fh_in, fh_out, length, off_in, off_out)

    # -- directories
    def opendir(self, ino: int, ctx: fsapi.Ctx) -> fsapi.Opened:
        fd = os.open(self._proc(ino), os.O_RDONLY | os.O_DIRECTORY)
        try:
            st = os.fstat(fd)
            parent = os.stat("..", dir_fd=fd) if ino != fsapi.ROOT_INO else st
            entries = [fsapi.DirEntry(b".", ino, stat.S_IFDIR, 1),
                       fsapi.DirEntry(b"..", self._ino(parent), stat.S_IFDIR, 2)]
            with os.scandir(fd) as it:
                for i, e in enumerate(it, 3):
                    st_e = e.stat(follow_symlinks=False)
                    entries.append(fsapi.DirEntry(os.fsencode(e.name), self._ino(st_e),
                                                  stat.S_IFMT(st_e.st_mode), i))
        finally:
            os.close(fd)
        fh = self._next_dir
        self._next_dir += 1
        self._dirs[fh] = entries
        return fsapi.Opened(fh, keep_cache=True, cache_dir=True)

    def readdir(self, fh: int, offset: int, plus: bool):
        entries = self._dirs[fh]
        ino = None
        for d in entries[offset:]:
            if plus and d.name not in (b".", b".."):
                if ino is None:
                    ino = self._dir_ino(fh)
                pfd = self._node(ino).fd
                try:
                    st = os.stat(d.name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entry = self._remember(pfd, d.name, st, 0)
                yield fsapi.DirEntry(d.name, d.ino, d.type, d.offset, entry)
            else:
                yield d

    def _dir_ino(self, fh: int) -> int:
        return self._dirs[fh][0].ino

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        fd = os.open(self._proc(self._dir_ino(fh)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- the rest
    def statfs(self, ino: int, ctx: fsapi.Ctx) -> fsapi.StatFs:
        s = os.statvfs(self._proc(ino))
        return fsapi.StatFs(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize,
                            s.f_frsize, s.f_namemax)

    def _xpath(self, ino: int) -> str:
        node = self._node(ino)
        if stat.S_ISLNK(os.fstat(node.fd).st_mode):
            raise OSError(errno.ENOTSUP, "xattrs of symlinks are not served")
        return f"/proc/self/fd/{node.fd}"

    def getxattr(self, ino: int, name: bytes, ctx: fsapi.Ctx) -> bytes:
        return os.getxattr(self._xpath(ino), name)

    def listxattr(self, ino: int, ctx: fsapi.Ctx) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self._xpath(ino))]

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int, ctx: fsapi.Ctx) -> None:
        os.setxattr(self._xpath(ino), name, value, flags)

    def removexattr(self, ino: int, name: bytes, ctx: fsapi.Ctx) -> None:
        os.removexattr(self._xpath(ino), name)


def main(argv: list[str]) -> int:
    """Serve SOURCE on TARGET in the foreground; `-o passthrough=off,workers=N,debug`."""
    import logging

    from unionfs.transport import serve
    opts: dict[str, str] = {}
    args = list(argv)
    while args and args[0] == "-o":
        for item in args[1].split(","):
            k, _, v = item.partition("=")
            opts[k] = v
        args = args[2:]
    if len(args) != 2:
        print("usage: python -m unionfs.transport.loopback [-o OPTS] SOURCE TARGET",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if "debug" in opts else logging.WARNING,
                        format="loopback[%(process)d] %(levelname)s %(message)s")
    fuse_opts = {"default_permissions"} | ({"allow_other"} if os.geteuid() == 0 else set())
    fs = Loopback(args[0])
    serve(fs, os.path.abspath(args[1]), fuse_opts,
          passthrough=opts.get("passthrough", "on") not in ("off", "0", "no"),
          workers=int(opts.get("workers", "1")),
          ready=lambda session: print("ready", flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
