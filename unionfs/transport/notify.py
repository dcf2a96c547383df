"""FUSE notifications (fsapi.Notifier) written from a thread of their own.

An invalidation takes locks of the inode or directory it names in the kernel; written from the
request loop while a request on that directory waits for our reply, it would wait forever.
So the core's calls only queue, and one thread writes them to /dev/fuse in order.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading

from unionfs.transport import proto

log = logging.getLogger("pyunion")


class QueuedNotifier:
    """fsapi.Notifier for one connection; `close` flushes the queue and ends the thread."""

    def __init__(self, fd: int):
        self.fd = fd
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.aliases: dict[int, int] = {}   # inode -> another kernel node id of it (Session)

    def inval_entry(self, parent: int, name: bytes) -> None:
        size = proto.INVAL_ENTRY.size + len(name) + 1
        self._put(proto.INVAL_ENTRY.pack(size, proto.NOTIFY_INVAL_ENTRY, 0, parent, len(name), 0)
                  + name + b"\0")

    def inval_inode(self, ino: int, offset: int = 0, length: int = 0) -> None:
        alias = self.aliases.get(ino)
        for nodeid in (ino,) if alias is None else (ino, alias):
            self._put(proto.INVAL_INODE.pack(proto.INVAL_INODE.size, proto.NOTIFY_INVAL_INODE,
                                             0, nodeid, offset, length))

    def _put(self, msg: bytes) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="fuse-notify",
                                                    daemon=True)
                    self._thread.start()
        self._queue.put(msg)

    def _run(self) -> None:
        while (msg := self._queue.get()) is not None:
            try:
                os.write(self.fd, msg)
            except OSError as e:
                if e.errno == errno.ENODEV:      # unmounted: nothing left to invalidate
                    return
                if e.errno != errno.ENOENT:      # ENOENT: the kernel had nothing cached
                    log.warning("FUSE notification failed: %s", e)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
