"""pyunion's own FUSE transport: the kernel protocol on /dev/fuse, spoken in Python.

Serves any fsapi.Filesystem: `serve(fs, target, options)` mounts (mount(2) as root,
fusermount3 otherwise), negotiates INIT, runs the request loop and unmounts at the end.
Data of files opened with `Opened.backing_fd` goes through FUSE passthrough where the kernel
allows it. docs/transport.md describes the choices and their limits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from unionfs import fsapi
from unionfs.transport.mount import Mounted, MountFailed, mount, set_readahead, unmount
from unionfs.transport.session import READAHEAD_KIB, Session

__all__ = ["MountFailed", "Mounted", "Session", "serve"]


def serve(fs: fsapi.Filesystem, target: str, options: set[str] | list[str], *,
          passthrough: bool = True, workers: int = 1, refuse: int = 0, splice: bool = True,
          ready: Callable[[Session], None] | None = None) -> Session:
    """Mount `fs` on `target`, call `ready(session)` once mounted, serve until unmounted or until
    SIGTERM/SIGINT/SIGHUP (then unmount lazily). Raises MountFailed if it cannot mount."""
    m = mount(target, options)
    try:
        if m.privileged:
            # READs of up to 1 MiB, not the kernel's 128 KiB; a page under it, so a READ reply
            # and its header fit one 1 MiB pipe (Session splices them)
            set_readahead(m, READAHEAD_KIB)
        session = Session(fs, m.fd, passthrough=passthrough, workers=workers, refuse=refuse,
                          splice=splice)
        if ready is not None:
            ready(session)
        session.run()
        if not session.unmounted:
            with contextlib.suppress(OSError):
                unmount(m, lazy=True)
        return session
    except BaseException:
        with contextlib.suppress(OSError):
            unmount(m, lazy=True)
        raise
    finally:
        os.close(m.fd)
