"""Which io mode each inode is in, so FUSE passthrough opens never fail with EIO in the kernel.

The kernel (fs/fuse/iomode.c, Linux 6.9 to 6.18 at least) puts an inode either in cached mode
(opens served through the page cache by the daemon) or in passthrough mode bound to ONE
backing object; while any passthrough handle of an inode is open, every other open of it must
be a passthrough open of that same backing object, or the opener gets EIO (not even
FOPEN_DIRECT_IO is accepted). So the transport keeps one backing id per inode while any
passthrough open of it lasts (reused by every later open of the same backing file), opens in
cached mode once an inode has cached handles, and answers BUSY for an open that cannot share
the inode's passthrough backing file: a different file (the union copied the file up while a
reader held the lower copy) or none. The session then moves the file to a new kernel inode
(Session._realias). -o passthrough=off has no such case.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

CACHED, PASSTHROUGH, DIRECT, BUSY = 0, 1, 2, 3


@dataclass
class _Inode:
    cached: int = 0                 # open handles in cached mode
    backing_id: int = 0
    ident: tuple[int, int] | None = None   # (st_dev, st_ino) of the backing file
    through: int = 0                # open handles in passthrough mode


class BackingTable:
    """Decides the mode of each open; registers and drops backing ids through the callables.

    `register(fd) -> id` raises OSError when the kernel refuses the file (stacking depth,
    no passthrough); the open then falls back to cached mode where allowed."""

    def __init__(self, register: Callable[[int], int], unregister: Callable[[int], None]):
        self._register = register
        self._unregister = unregister
        self._inodes: dict[int, _Inode] = {}
        self._handles: dict[int, tuple[int, int]] = {}   # fh -> (nodeid, mode)

    def open(self, nodeid: int, fh: int, backing_fd: int | None, direct_io: bool
             ) -> tuple[int, int]:
        """(mode, backing id) for a new handle `fh` of `nodeid`; BUSY: it cannot be opened
        on this kernel inode (the caller releases the handle and gives the file another)."""
        node = self._inodes.get(nodeid)
        if node is not None and node.through:
            if backing_fd is not None and not direct_io and node.ident == _ident(backing_fd):
                node.through += 1
                self._handles[fh] = (nodeid, PASSTHROUGH)
                return PASSTHROUGH, node.backing_id
            return BUSY, 0
        if direct_io:
            return DIRECT, 0
        if node is None:
            node = self._inodes[nodeid] = _Inode()
        if backing_fd is not None and not node.cached:
            try:
                node.backing_id = self._register(backing_fd)
            except OSError:
                pass
            else:
                node.ident = _ident(backing_fd)
                node.through = 1
                self._handles[fh] = (nodeid, PASSTHROUGH)
                return PASSTHROUGH, node.backing_id
        node.cached += 1
        self._handles[fh] = (nodeid, CACHED)
        return CACHED, 0

    def release(self, fh: int) -> None:
        """The handle is gone: drop the backing id once no passthrough handle uses it."""
        got = self._handles.pop(fh, None)
        if got is None:
            return
        nodeid, mode = got
        node = self._inodes[nodeid]
        if mode == PASSTHROUGH:
            node.through -= 1
            if not node.through:
                self._unregister(node.backing_id)
                node.backing_id, node.ident = 0, None
        else:
            node.cached -= 1
        if not node.through and not node.cached:
            del self._inodes[nodeid]

    def close_all(self) -> None:
        for node in self._inodes.values():
            if node.through:
                self._unregister(node.backing_id)
        self._inodes.clear()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._inodes)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
