"""The state directory (ROOT/<id>/state.json + exec.fifo) and the truth about a container's status.

Status is never trusted from the file alone: it is derived from the init process (pid plus its
start time, so a reused pid is not mistaken for the container) and from the exec fifo, which exists
exactly while the container is `created`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapshotter.runtime import cgroups
from snapshotter.runtime.config import Config
from snapshotter.runtime.errors import ContainerError
from unionfs.procs import start_time as proc_start_time

DEFAULT_ROOT = "/run/pyunion-runtime"
OCI_VERSION = "1.0.2"
STATE_FILE = "state.json"
FIFO = "exec.fifo"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class State:
    """What ROOT/<id>/state.json records. Our own file (runc's clients never read it; they ask
    `state`, which prints `StateDir.public`); its keys are these field names.

    STATUS is only ever written as `creating` (with CREATOR, the creating runtime's pid and
    start time) or `created`; `StateDir.status` derives the live one. PID/PID_START: the
    init and its start time, 0/None until the handshake reports it. CONFIG: the validated
    config.json as created (later edits of the bundle have no effect; `update` merges into it),
    written as the JSON it was.
    CGROUP: `cgroups.Cgroup.to_state()`, None without one."""

    id: str
    bundle: str
    rootfs: str
    created: str
    config: Config
    annotations: dict[str, str] = field(default_factory=dict)
    status: str = "creating"
    creator: tuple[int, int | None] | None = None
    pid: int = 0
    pid_start: int | None = None
    cgroup: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = self.config.raw
        if self.creator is None:
            del out["creator"]
        else:
            out["creator"] = list(self.creator)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> State:
        """The parsed file -> State; ValueError or TypeError naming what does not fit."""
        if not isinstance(obj, dict):
            raise TypeError("not an object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(obj) - set(fields)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        for name, typ in _FIELD_TYPES.items():
            if name in obj and not isinstance(obj[name], typ):
                raise ValueError(f"{name} is {type(obj[name]).__name__}")
        missing = [f.name for f in fields.values() if f.name not in obj
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"missing {missing}")
        creator = obj.get("creator")
        if creator is not None:
            if not (isinstance(creator, list) and len(creator) == 2
                    and isinstance(creator[0], int)
                    and isinstance(creator[1], int | None)):
                raise ValueError("creator is not [pid, start]")
            obj = {**obj, "creator": (creator[0], creator[1])}
        try:
            config = Config.parse(obj["config"])
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"config: {e!r}") from None
        return cls(**{**obj, "config": config})


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str, "bundle": str, "rootfs": str, "created": str, "config": dict,
    "annotations": dict, "status": str, "pid": int, "pid_start": (int, type(None)),
    "cgroup": (dict, type(None)), "creator": (list, type(None)),
}


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

    def write(self, st: State) -> None:
        target = self.path(st.id) / STATE_FILE
        tmp = target.with_name(STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(st.to_json()))
        os.replace(tmp, target)

    def read(self, cid: str) -> State:
        """A state.json that cannot be read or does not fit State counts as no container (as a
        half-written one from a crash: `delete --force` still removes the directory)."""
        try:
            return State.from_json(json.loads((self.path(cid) / STATE_FILE).read_text()))
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError):
            raise ContainerError("container does not exist") from None

    def remove(self, cid: str) -> None:
        shutil.rmtree(self.path(cid), ignore_errors=True)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / STATE_FILE).is_file())

    def status(self, st: State) -> str:
        """creating | created | running | paused | stopped, from the live system."""
        if st.status == "creating":
            creator = st.creator
            if creator and proc_start_time(creator[0]) == creator[1]:
                return "creating"
            return "stopped"  # the creating runtime died: what is left is only deletable
        if st.pid and proc_start_time(st.pid) == st.pid_start:
            if self.fifo(st.id).exists():
                return "created"
            cg = cgroups.Cgroup.from_state(st.cgroup)
            return "paused" if cg and cg.frozen() else "running"
        return "stopped"

    def public(self, st: State) -> dict[str, Any]:
        """The state JSON of runtime.md (plus runc's extra fields rootfs, created, owner)."""
        status = self.status(st)
        out: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": st.id,
            "pid": st.pid if status != "stopped" else 0,
            "status": status,
            "bundle": st.bundle,
            "rootfs": st.rootfs,
            "created": st.created,
            "owner": "",
        }
        if st.annotations:
            out["annotations"] = st.annotations
        return out
