"""The state directory (ROOT/<id>/state.json + exec.fifo) and the truth about a container's status.

Status is never trusted from the file alone: it is derived from the init process (pid plus its
start time, so a reused pid is not mistaken for the container) and from the exec fifo, which exists
exactly while the container is `created`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from snapshotter.runtime import cgroups
from snapshotter.runtime.errors import ContainerError
from unionfs.procs import start_time as proc_start_time

DEFAULT_ROOT = "/run/pyunion-runtime"
OCI_VERSION = "1.0.2"
STATE_FILE = "state.json"
FIFO = "exec.fifo"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StateDir:
    """ROOT/<id>: one directory per container, created exclusively to claim the ID."""

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def path(self, cid: str) -> Path:
        return self.root / cid

    def fifo(self, cid: str) -> Path:
        return self.path(cid) / FIFO

    def claim(self, cid: str) -> Path:
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            self.path(cid).mkdir(mode=0o711)
        except FileExistsError:
            raise ContainerError("container with given ID already exists") from None
        return self.path(cid)

    def write(self, st: dict[str, Any]) -> None:
        target = self.path(st["id"]) / STATE_FILE
        tmp = target.with_name(STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(st))
        os.replace(tmp, target)

    def read(self, cid: str) -> dict[str, Any]:
        try:
            return json.loads((self.path(cid) / STATE_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            raise ContainerError("container does not exist") from None

    def remove(self, cid: str) -> None:
        shutil.rmtree(self.path(cid), ignore_errors=True)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / STATE_FILE).is_file())

    def status(self, st: dict[str, Any]) -> str:
        """creating | created | running | paused | stopped, from the live system."""
        if st.get("status") == "creating":
            creator = st.get("creator")
            if creator and proc_start_time(creator[0]) == creator[1]:
                return "creating"
            return "stopped"  # the creating runtime died: what is left is only deletable
        pid, start = st.get("pid") or 0, st.get("pid_start")
        if pid and proc_start_time(pid) == start:
            if self.fifo(st["id"]).exists():
                return "created"
            cg = cgroups.Cgroup.from_state(st.get("cgroup"))
            return "paused" if cg and cg.frozen() else "running"
        return "stopped"

    def public(self, st: dict[str, Any]) -> dict[str, Any]:
        """The state JSON of runtime.md (plus runc's extra fields rootfs, created, owner)."""
        status = self.status(st)
        out: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": st["id"],
            "pid": (st.get("pid") or 0) if status != "stopped" else 0,
            "status": status,
            "bundle": st["bundle"],
            "rootfs": st["rootfs"],
            "created": st["created"],
            "owner": "",
        }
        if st.get("annotations"):
            out["annotations"] = st["annotations"]
        return out
