"""The request loop's wait for /dev/fuse, without a trip through trio's scheduler per request.

pyfuse3's worker waits for each request with a trio lock plus `trio.lowlevel.wait_readable`:
two passes of trio's run loop (and an epoll re-registration) per request. Profiles of `tar -c`
and of file creation through the mount put most of the daemon's time there (see the README's
benchmark section). The daemon has one worker and no other task that needs the loop while it
waits, so the wait can be a plain `poll()` on the FUSE descriptor and a self-pipe that the
termination signals write to: same requests, same order, no scheduler pass.

pyfuse3's loop looks the wait up by name in its module on every iteration, which is what
`install` replaces; `uninstall` puts the original back.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator

import pyfuse3

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_READY = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL


def fuse_fd() -> int:
    """The /dev/fuse descriptor pyfuse3.init opened (or received from fusermount3)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                fds.append(int(name))
        except OSError:
            continue
    if len(fds) != 1:
        raise RuntimeError(f"expected one /dev/fuse descriptor, found {len(fds)}")
    return fds[0]


class DirectWait:
    """Awaitable replacement for pyfuse3's `_wait_fuse_readable`: True = a request is
    waiting (or the connection ended, which the read then reports), False = stop serving."""

    def __init__(self, fd: int, stop_fd: int):
        self.stop_fd = stop_fd
        self.stopping = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._poll.register(stop_fd, select.POLLIN)

    async def __call__(self) -> bool:
        if self.stopping:
            return False
        while True:
            events = self._poll.poll()      # a signal's handler writes stop_fd: poll wakes
            for fd, _ev in events:
                if fd == self.stop_fd:
                    self.stopping = True
                    pyfuse3.terminate()
                    return False
            if any(ev & _READY for _, ev in events):
                return True


@contextlib.contextmanager
def direct_wait(fd: int) -> Iterator[DirectWait]:
    """Serve `fd` (from fuse_fd) with DirectWait; SIGTERM, SIGINT and SIGHUP end the loop
    (the caller unmounts)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_signal(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(w, b"x")

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    original = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    waiter = DirectWait(fd, r)
    pyfuse3._wait_fuse_readable = waiter  # type: ignore[attr-defined]
    try:
        yield waiter
    finally:
        pyfuse3._wait_fuse_readable = original  # type: ignore[attr-defined]
        for s, h in previous.items():
            signal.signal(s, h)
        os.close(r)
        os.close(w)
