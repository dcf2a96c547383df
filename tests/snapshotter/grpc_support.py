"""Starting `pyunion snapshotter serve` for a test: its own process, socket and store root."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.processes import stop

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def _listening(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


class Server:
    """One server process; `stop()` ends it by PID (SIGTERM, then SIGKILL after a timeout)."""

    def __init__(self, sock: Path, root: Path, log: Path):
        self.sock, self.root, self.log = sock, root, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "unionfs", "snapshotter", "serve",
                 "--address", str(self.sock), "--root", str(self.root)],
                stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(self.sock):
            if self.proc.poll() is not None:
                raise RuntimeError(f"snapshotter server exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("snapshotter server did not start listening")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop(self.proc, 20)
        self.proc = None


@contextlib.contextmanager
def running_server(sock: Path, root: Path, log: Path | None = None) -> Iterator[Server]:
    srv = Server(sock, root, log or sock.with_suffix(".log"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
