"""Where a mount's daemon is recorded: one JSON file per mount point, so `pyunion umount` (and a
snapshot store's unmount) can find the daemon serving it and wait for it to exit.

Root's records live in /run/pyunion/mounts/; a user's in $XDG_RUNTIME_DIR/pyunion/mounts/, else
/tmp/pyunion-UID/pyunion/mounts/. The daemon writes its record once the mount is served and
removes it when it exits; a record whose process is gone (pid + start time) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from unionfs import idmaps, procs


def _host_uid() -> int:
    """Our uid as the initial user namespace knows it (root of a user namespace is not root)."""
    return idmaps.to_host(os.getuid(), idmaps.read("uid"))


def _state_dir() -> Path:
    uid = _host_uid()
    if uid == 0:
        return Path("/run/pyunion/mounts")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pyunion-{uid}"
    return Path(base) / "pyunion" / "mounts"


def pid_file(target: str) -> Path:
    """The daemon record of a mount on TARGET, an absolute resolved path (not resolved here:
    resolving a mount point would ask its daemon)."""
    return _state_dir() / (hashlib.sha256(target.encode()).hexdigest()[:24] + ".json")


def record_daemon(pf: Path, target: str, layers: list[str] | None = None) -> str | None:
    """Let `pyunion umount` find and wait for this daemon; the mount works without it.

    `pf` is computed before the mount exists: resolving a path through a mount that is not yet
    served would wait on ourselves. LAYERS (upper, lowers, work directory) say whose mount it is
    (a snapshot store's unmount touches only its own). Returns a warning to show when the
    record cannot be written."""
    try:
        pf.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = pf.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "target": target,
                                   "start": procs.start_time(os.getpid()),
                                   "layers": layers or []}))
        tmp.replace(pf)
    except OSError as e:
        return f"cannot record the daemon's pid in {pf}: {e.strerror}"
    return None


def forget_daemon(pf: Path) -> None:
    """Remove the record if it is still ours (a later mount on the same target owns its own)."""
    try:
        if json.loads(pf.read_text()).get("pid") == os.getpid():
            pf.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def daemon_record(target: str) -> dict[str, Any] | None:
    """The record of the live daemon serving TARGET (resolved path), or None."""
    try:
        rec = json.loads(pid_file(target).read_text())
        if not procs.alive(int(rec["pid"]), rec.get("start")):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return rec if isinstance(rec, dict) else None


def find_daemon(target: str) -> tuple[int, int | None] | None:
    """(pid, start time) of the live daemon serving TARGET, or None."""
    rec = daemon_record(target)
    return None if rec is None else (int(rec["pid"]), rec.get("start"))
