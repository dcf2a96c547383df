"""The contract between a filesystem core and the FUSE transport that serves it.

A transport (pyfuse3 today, our own /dev/fuse protocol next) turns kernel requests into calls on a
`Filesystem` and its answers into replies; a core (the union) implements `Filesystem` and knows
nothing of FUSE. Everything here is plain data and a Protocol, so a core can be driven by tests
directly and by any transport alike. The shapes follow the kernel's low-level protocol
(include/uapi/linux/fuse.h): nodes are 64-bit inode numbers with lookup counts, files and
directories are opaque handle numbers.

Rules every call follows:
- Errors are `OSError` with the errno the kernel should see (overlayfs's choice where the two
  differ); the transport answers `-errno`. Any other exception is a bug: the transport logs it and
  answers EIO for that one request, never ending the mount.
- Names are bytes, as the kernel sends them; the core decodes where it needs text.
- `mode` arguments of creating calls arrive with the caller's umask already applied.
- Permission checks are the kernel's (the mount uses default_permissions): no access() call.
- Calls come from one thread unless the core sets `thread_safe = True`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

ROOT_INO = 1  # FUSE_ROOT_ID: the inode number the kernel uses for the mount's root


@dataclass(slots=True)
class Ctx:
    """Who asks: the caller's ids and umask, from the request header (and FUSE_CREATE's umask)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


@dataclass(slots=True)
class Attr:
    """What stat shows for an inode (fuse_attr): already presented (ids mapped, overrides applied)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(slots=True)
class Entry:
    """The answer to a call that names an inode (lookup, mknod, mkdir, symlink, link, create).

    Each Entry returned counts as one lookup of `attr.ino`: the kernel will FORGET it once.
    `generation` tells the kernel that an inode number reused for a new object is a new object
    (NFS export and the kernel's dentry revalidation compare (ino, generation)).
    """

    attr: Attr
    generation: int = 0
    entry_timeout: float = 0.0
    attr_timeout: float = 0.0


@dataclass(slots=True)
class SetAttr:
    """The fields of a SETATTR that are to change; None leaves a field as it is.

    Times are nanoseconds since the epoch; the transport resolves UTIME_NOW to the current time.
    `fh` is the handle the change was made through (ftruncate, fchmod), if any.
    """

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    fh: int | None = None
    kill_suid: bool = False  # FATTR_KILL_SUIDGID: an unprivileged write/truncate drops setuid


@dataclass(slots=True)
class Opened:
    """The answer to open, create and opendir.

    `keep_cache`: the kernel may keep the page cache it has for this inode (nothing changed it
    behind the kernel's back since it was filled). `cache_dir`: the kernel may cache this
    directory's listing. `backing_fd`: a descriptor of the layer file that serves this handle's
    data, which a transport may register for FUSE passthrough; None forbids passthrough.
    """

    fh: int
    keep_cache: bool = False
    direct_io: bool = False
    cache_dir: bool = False
    backing_fd: int | None = None


@dataclass(slots=True)
class DirEntry:
    """One name of a directory listing.

    `offset` is the cookie that resumes the listing just after this entry. `entry` is filled for
    readdirplus only; it does not count as a lookup until the transport reports it sent with
    `Filesystem.count_lookup` (an entry that did not fit the reply must not count).
    """

    name: bytes
    ino: int
    type: int  # the S_IFMT bits of the object's mode
    offset: int
    entry: Entry | None = None


@dataclass(slots=True)
class StatFs:
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    frsize: int
    namemax: int


class Notifier(Protocol):
    """What a core may tell the kernel without being asked (FUSE notifications).

    A core calls these whenever it changes something the kernel may have cached under another
    name or inode than the request being served (a copy-up that relinks hard-link peers, a rename
    of a merged directory, a listing that changed). Calls never block on the kernel: a transport
    queues them if it must.
    """

    def inval_entry(self, parent: int, name: bytes) -> None:
        """Forget the cached dentry `name` in directory `parent`."""

    def inval_inode(self, ino: int, offset: int = 0, length: int = 0) -> None:
        """Forget cached attributes of `ino` and its page cache from `offset` for `length`
        bytes (0 = to the end; a negative offset drops only the attributes)."""


class Filesystem(Protocol):
    """A filesystem as a FUSE transport serves it. Docstrings are the spec for every core."""

    thread_safe: bool
    attr_timeout: float  # how long the kernel may trust an Attr from getattr/setattr

    def init(self, notifier: Notifier) -> None:
        """Called once the kernel has answered INIT, before any other request."""

    def destroy(self) -> None:
        """The mount is going away: release every descriptor."""

    # -- names and attributes
    def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Entry:
        """Resolve `name` in directory `parent` (ENOENT if absent; "." and ".." resolve too)."""

    def forget(self, ino: int, nlookup: int) -> None:
        """The kernel dropped `nlookup` references; at zero the inode may be released."""

    def count_lookup(self, ino: int) -> None:
        """A readdirplus entry naming `ino` was sent to the kernel: one more lookup."""

    def getattr(self, ino: int, fh: int | None, ctx: Ctx) -> Attr: ...

    def setattr(self, ino: int, change: SetAttr, ctx: Ctx) -> Attr:
        """Apply `change` (copying the object up first where it lives in a lower layer)."""

    def readlink(self, ino: int, ctx: Ctx) -> bytes: ...

    # -- creating and removing names
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Entry: ...

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Entry: ...

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Entry: ...

    def link(self, ino: int, new_parent: int, new_name: bytes, ctx: Ctx) -> Entry: ...

    def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None: ...

    def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None: ...

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int,
               ctx: Ctx) -> None:
        """renameat2 semantics; `flags` are RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""

    # -- files
    def open(self, ino: int, flags: int, ctx: Ctx) -> Opened: ...

    def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx
               ) -> tuple[Entry, Opened]: ...

    def read(self, fh: int, offset: int, size: int) -> bytes: ...

    def read_fd(self, fh: int) -> int | None:
        """Optional: the descriptor holding `fh`'s data, which the transport may read itself
        (splice: the data never enters the process) instead of calling read(); None to have
        read() called. A core without it is read through read()."""

    def write(self, fh: int, offset: int, data: bytes | memoryview, ctx: Ctx) -> int: ...

    def release(self, fh: int) -> None: ...

    def fsync(self, fh: int, datasync: bool) -> None: ...

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None: ...

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA / SEEK_HOLE on the serving file (others are the kernel's own business)."""

    def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int,
                        flags: int) -> int: ...

    # -- directories
    def opendir(self, ino: int, ctx: Ctx) -> Opened: ...

    def readdir(self, fh: int, offset: int, plus: bool) -> Iterator[DirEntry]:
        """Entries after cookie `offset` ("." and ".." included), stable while the handle is
        open; the transport stops iterating when its reply is full."""

    def releasedir(self, fh: int) -> None: ...

    def fsyncdir(self, fh: int, datasync: bool) -> None: ...

    # -- the rest
    def statfs(self, ino: int, ctx: Ctx) -> StatFs: ...

    def getxattr(self, ino: int, name: bytes, ctx: Ctx) -> bytes: ...

    def listxattr(self, ino: int, ctx: Ctx) -> list[bytes]: ...

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int, ctx: Ctx) -> None: ...

    def removexattr(self, ino: int, name: bytes, ctx: Ctx) -> None: ...
