"""Fixtures for the FUSE transport: the loopback filesystem served on a real mount.

`served` runs the transport in a thread of the test process, so a test can look inside
(request counts, backing ids); `daemon` runs it as its own process, as a mount does. Both
unmount lazily on the way out and wait with timeouts, so a hung mount cannot hang the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mounting import force_unmount, is_mounted
from unionfs.transport import serve
from unionfs.transport.loopback import Loopback
from unionfs.transport.session import Session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here mounts FUSE with mount(2): root (tests/conftest.py's one skip rule).
    (A `pytestmark` in a conftest applies to nothing.)"""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.fuse)


class CountingLoopback(Loopback):
    """The loopback, counting the data calls that reach it (passthrough must keep them out)."""

    def __init__(self, source: str):
        super().__init__(source)
        self.calls: Counter[str] = Counter()
        self.read_sizes: list[int] = []

    def read(self, fh, offset, size):
        self.calls["read"] += 1
        self.read_sizes.append(size)
        return super().read(fh, offset, size)

    def write(self, fh, offset, data, ctx):
        self.calls["write"] += 1
        return super().write(fh, offset, data, ctx)


@dataclass
class Served:
    src: Path
    mnt: Path
    fs: CountingLoopback
    session: Session | None = None


@pytest.fixture(params=["passthrough", "no-passthrough"])
def served(request, tmp_path: Path) -> Iterator[Served]:
    yield from _serve_in_thread(tmp_path, passthrough=request.param == "passthrough")


@pytest.fixture
def serve_with(tmp_path: Path):
    """serve_with(passthrough=..., refuse=...) -> Served, for tests that pick the INIT flags."""
    gens = []

    def start(**kw) -> Served:
        gen = _serve_in_thread(tmp_path / f"s{len(gens)}", **kw)
        gens.append(gen)
        return next(gen)

    yield start
    for gen in gens:
        for _ in gen:
            pass


def _serve_in_thread(base: Path, **kw) -> Iterator[Served]:
    src, mnt = base / "src", base / "mnt"
    src.mkdir(parents=True)
    mnt.mkdir()
    fs = CountingLoopback(str(src))
    served = Served(src, mnt, fs)
    ready = threading.Event()
    failed: list[BaseException] = []

    def on_ready(session: Session) -> None:
        served.session = session
        ready.set()

    def run() -> None:
        try:
            serve(fs, str(mnt), {"default_permissions", "allow_other"}, ready=on_ready, **kw)
        except BaseException as e:  # noqa: BLE001 - reported by the fixture
            failed.append(e)
            ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(30), "transport did not mount within 30 s"
    if failed:
        raise failed[0]
    os.stat(mnt)                  # the first access waits for INIT
    try:
        yield served
    finally:
        force_unmount(mnt)
        t.join(30)
        assert not t.is_alive(), "transport thread did not end after unmount"
        assert not is_mounted(mnt)


@pytest.fixture
def daemon(tmp_path: Path):
    """daemon(*options) -> (process, src, mnt): the loopback in a process of its own."""
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(*options: str, user=None) -> tuple[subprocess.Popen, Path, Path]:
        base = (tmp_path if user is None else user.home) / f"d{len(procs)}"
        src, mnt = base / "src", base / "mnt"
        src.mkdir(parents=True)
        mnt.mkdir()
        cmd = [sys.executable, "-m", "unionfs.transport.loopback"]
        if options:
            cmd += ["-o", ",".join(options)]
        cmd += [str(src), str(mnt)]
        env = None
        if user is not None:
            os.chown(src, user.uid, user.gid)
            os.chown(mnt, user.uid, user.gid)
            from tests.rootless import user_python
            cmd[0] = user_python()[0]
            cmd = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
                   "--", *cmd]
            env = user.env()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd="/")
        procs.append((p, mnt))
        line = _readline(p, 30)
        if line.strip() != "ready":
            p.kill()
            raise AssertionError(f"loopback did not start: {line!r} {p.stderr.read()}")
        if user is None:
            os.stat(mnt)        # a user's mount without allow_other refuses even root
        return p, src, mnt

    yield start
    for p, mnt in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        force_unmount(mnt)


def _readline(p: subprocess.Popen, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""
