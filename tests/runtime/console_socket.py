"""A --console-socket server as conmon and containerd's shim run one: accept the runtime's
connection and receive the pty master it sends with SCM_RIGHTS."""

from __future__ import annotations

import os
import select
import socket
import time
from pathlib import Path


class ConsoleSocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.server.settimeout(30)

    def receive(self) -> tuple[int, str]:
        """(master fd, the name sent with it)."""
        conn, _ = self.server.accept()
        with conn:
            msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        assert fds, "no fd received on the console socket"
        return fds[0], msg.decode()

    def close(self) -> None:
        self.server.close()
        self.path.unlink(missing_ok=True)


def read_until_eof(fd: int, timeout: float = 20) -> str:
    """Everything the pty master yields until the last slave closes (EIO) or TIMEOUT."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace").replace("\r\n", "\n")
