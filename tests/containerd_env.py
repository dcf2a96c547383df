"""A private containerd for tests and benchmarks: its own root, state, socket and config.

It never touches the host's containerd: every path lives under one directory, the CRI plugin is
off, and pyunion's snapshotter is configured as the proxy plugin `pyunion` on a socket of ours.
containerd performs `fuse3.pyunion` mounts through mount.fuse3, which looks `pyunion` up on
PATH: containerd gets a PATH that starts with this checkout's .venv/bin, so it mounts with this
checkout's code whatever /usr/local/bin/pyunion points at.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.processes import stop
from tests.snapshotter.grpc_support import Server
from unionfs import mountinfo

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
SNAPSHOTTER = "pyunion"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def have_containerd() -> str | None:
    """Why containerd cannot run here, or None when it can."""
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "mount.fuse3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


def cri_toml(base: Path, registry: str, snapshotter: str = SNAPSHOTTER) -> str:
    """The CRI plugin on, pulling with SNAPSHOTTER from a plain-HTTP registry."""
    return f"""
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{base}/cni/bin"
    conf_dir = "{base}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"""


def config_toml(base: Path, pyunion_sock: Path, registry: str | None = None,
                cri_snapshotter: str = SNAPSHOTTER) -> str:
    disabled = "" if registry else '"io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[proxy_plugins]
  [proxy_plugins.{SNAPSHOTTER}]
    type = "snapshot"
    address = "{pyunion_sock}"
""" + (cri_toml(base, registry, cri_snapshotter) if registry else "")


class Containerd:
    """containerd + `pyunion snapshotter serve` sharing one base dir; ctr() talks to it."""

    def __init__(self, base: Path, store_root: Path | None = None, cri_registry: str | None = None):
        self.base = base.absolute()
        self.cri_registry = cri_registry     # host:port of a plain-HTTP registry: CRI plugin on
        self.cri_snapshotter = SNAPSHOTTER
        self.sock = self.base / "containerd.sock"
        self.pyunion_sock = self.base / "pyunion.sock"
        self.store_root = (store_root or self.base / "pyunion-store").absolute()
        self.log = self.base / "containerd.log"
        self.snapshotter = Server(self.pyunion_sock, self.store_root, self.base / "pyunion.log")
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "PATH": f"{VENV_BIN}:{SYSTEM_PATH}"}

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        cfg = self.base / "config.toml"
        cfg.write_text(config_toml(self.base, self.pyunion_sock, self.cri_registry,
                                   self.cri_snapshotter))
        self.snapshotter.start()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=logf,
                                         stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log.read_text()[-3000:]}")
            if self.sock.exists() and self.ctr("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300,
            namespace: str = "default") -> subprocess.CompletedProcess:
        r = subprocess.run(["ctr", "--address", str(self.sock), "--namespace", namespace,
                            *args], capture_output=True, text=True, timeout=timeout,
                           env=self.env, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({r.returncode}):"
                                 f" {r.stderr.strip() or r.stdout.strip()}")
        return r

    def stop(self) -> None:
        """Remove every container (their tasks first), stop containerd, then the snapshotter."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._remove_containers()
            stop(self.proc, 30)
        self.proc = None
        self.snapshotter.stop()
        self._unmount_leftovers()

    def _remove_containers(self) -> None:
        for ns in self.ctr("namespaces", "ls", "-q", timeout=30).stdout.split():
            for cid in self.ctr("tasks", "ls", "-q", namespace=ns, timeout=30).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=ns, check=False,
                         timeout=30)
                self.ctr("tasks", "delete", "-f", cid, namespace=ns, check=False, timeout=60)
            for cid in self.ctr("containers", "ls", "-q", namespace=ns, timeout=30).stdout.split():
                self.ctr("containers", "rm", cid, namespace=ns, check=False, timeout=60)

    def _unmount_leftovers(self) -> None:
        """Lazily unmount anything still mounted under our dirs (a crashed test's rootfs)."""
        targets = [m.mountpoint for m in mountinfo.mounts()]
        for t in reversed(targets):
            if t.startswith((f"{self.base}/", f"{self.store_root}/")):
                subprocess.run(["umount", "-l", t], capture_output=True, timeout=30,
                               check=False)


@contextlib.contextmanager
def running_containerd(base: Path, store_root: Path | None = None,
                       cri_registry: str | None = None) -> Iterator[Containerd]:
    c = Containerd(base, store_root, cri_registry)
    try:
        c.start()
        yield c
    finally:
        c.stop()
