"""Real clients of pyunion-runtime for tests: podman (Debian 4.3.1) and containerd (Debian 1.6.20),
each with private state under a temporary directory, never the host's storage or daemon.

podman: its own --root/--runroot/--tmpdir, the vfs storage driver (no mount program, nothing
to unmount but the per-container shm), the cgroupfs manager (this host has no systemd), the
file events backend, `--network none` (no registry, no network: images come from
tests/imagebuild.py through `podman load`). Its default rlimits cannot be applied on this
host (RLIMIT_NOFILE 1048576 needs CAP_SYS_RESOURCE, which this sandbox lacks; runc fails the
same way), so RUN_FLAGS set lower ones.

containerd: started here with its own root, state, socket and config (CRI disabled), the
native snapshotter, a namespace of its own; `ctr run --runc-binary` points its runc shim at
the runtime under test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PYUNION_RUNTIME = str(Path(sys.executable).parent / "pyunion-runtime")
RUNC = shutil.which("runc") or "runc"


def _run(argv: list[str], timeout: float, input: str | None = None) -> subprocess.CompletedProcess:
    """Output through files: a detached container may hold a pipe open long after."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(argv, input=input, stdout=out, stderr=err, text=True,
                              timeout=timeout, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


class Podman:
    RUN_FLAGS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1024:1024",
                 "--network", "none")

    def __init__(self, base: Path, runtime: str = PYUNION_RUNTIME) -> None:
        self.base = base
        self.argv = ["podman", "--root", str(base / "root"), "--runroot", str(base / "runroot"),
                     "--tmpdir", str(base / "tmp"), "--storage-driver", "vfs",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                     "--network-config-dir", str(base / "net"), "--runtime", runtime]

    def __call__(self, *args: str, timeout: float = 120,
                 input: str | None = None) -> subprocess.CompletedProcess:
        return _run([*self.argv, *args], timeout, input)

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        """`podman run` with the flags this host needs, then ARGS (options, image, command)."""
        return self("run", *self.RUN_FLAGS, *args, **kw)

    def cleanup(self) -> None:
        self("rm", "--all", "--force", "--time", "0", timeout=120)


class Containerd:
    CONFIG = """version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
"""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "containerd.sock"
        self.ns = f"pyunion-test-{os.getpid()}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "config.toml").write_text(self.CONFIG.format(base=self.base))
        log = (self.base / "containerd.log").open("w")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.base / "config.toml")],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("containerd exited: "
                                   + (self.base / "containerd.log").read_text()[-2000:])
            if self.sock.exists() and self.ctr("version", timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("containerd did not come up")

    def ctr(self, *args: str, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        return _run(["ctr", "-a", str(self.sock), "-n", self.ns, *args], timeout, input)

    def stop(self) -> None:
        """Remove our tasks and containers (their shims exit), then end our containerd."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for line in self.ctr("task", "ls", "-q", timeout=30).stdout.split():
                self.ctr("task", "kill", "-s", "KILL", line, timeout=30)
                for _ in range(100):
                    if self.ctr("task", "delete", line, timeout=30).returncode == 0:
                        break
                    time.sleep(0.1)
            for line in self.ctr("container", "ls", "-q", timeout=30).stdout.split():
                self.ctr("container", "delete", line, timeout=30)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(f"/run/containerd/runc/{self.ns}", ignore_errors=True)
        for d in Path("/sys/fs/cgroup").glob(f"*/{self.ns}"):  # runc leaves these parents
            try:
                d.rmdir()
            except OSError:
                pass
