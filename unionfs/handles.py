"""Open files: descriptors of the layer file serving each handle, re-opened on the upper copy
when another writer copied the file up; statfs.

A part of `union.Union` (one mixin per idea): it uses the state Union.__init__ sets up.
"""

from __future__ import annotations

import contextlib
import os

from unionfs.inodes import ROOT, UPPER, Node
from unionfs.unionstate import Base, Handle

SMALL_FILE = 128 << 10      # the kernel's default readahead window


class Handles(Base):


    def open(self, node: Node, flags: int) -> int:
        acc = flags & os.O_ACCMODE
        writing = acc in (os.O_WRONLY, os.O_RDWR) or flags & (os.O_TRUNC | os.O_APPEND)
        if writing:
            self._check_writable()
            self.copy_up(node, data=not (flags & os.O_TRUNC))
        fd = os.open(self.node_real(node), flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY))
        if not writing and self._worth_readahead(node):
            # Requests arrive one at a time: a larger readahead window on the layer file keeps
            # the disk busy between them.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.register(fd, node)
        return fd

    def _worth_readahead(self, node: Node) -> bool:
        """Whether a wider readahead window can matter: not for a lower file that the default
        window (128 KiB) already covers, known from the lower's stat cache (no syscall)."""
        if node.layer == UPPER:
            return True
        st = self._lower_stats.get((node.layer, node.path()))
        return st is None or st.st_size > SMALL_FILE

    def register(self, fd: int, node: Node) -> None:
        self.handles[fd] = Handle(fd, node, node.layer)
        node.open_count += 1

    def fd_for_read(self, fh: int) -> int:
        """The fd to read from; re-opened on the upper copy if another writer copied it up."""
        h = self.handles[fh]
        node = h.node
        if h.layer != UPPER and node.layer == UPPER:
            try:
                nfd = os.open(self.node_real(node), os.O_RDONLY)
            except OSError:
                return h.fd
            os.close(h.fd)
            # dup2 keeps the fh number stable for the kernel
            os.dup2(nfd, fh)
            os.close(nfd)
            h.layer = UPPER
        return h.fd

    def release(self, fh: int) -> None:
        h = self.handles.pop(fh)
        os.close(h.fd)
        self.unpin(h.node)

    def unpin(self, node: Node) -> None:
        """An open file or directory stream on `node` ended; drop it if nothing else holds it."""
        node.open_count -= 1
        if (node.open_count <= 0 and node.lookups <= 0 and node.ino != ROOT
                and self.table.get(node.ino) is node):
            del self.table.nodes[node.ino]

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.real(UPPER if self.layers[UPPER] else 1, ""))


