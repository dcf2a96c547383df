"""Where a mount's daemon is recorded: one JSON file per mount point, so `pyunion umount` (and a
snapshot store's unmount) can find the daemon serving it and wait for it to exit.

Root's records live in /run/pyunion/mounts/; a user's in $XDG_RUNTIME_DIR/pyunion/mounts/, else
/tmp/pyunion-UID/pyunion/mounts/. The daemon writes its record once the mount is served and
removes it when it exits; a record whose process is gone (pid + start time) is ignored.
"""

from __future__ import annotations

import json
import os

from unionfs import idmaps, procs

# CPython's built-in SHA-256: importing hashlib loads OpenSSL, about 2 ms that every
# `pyunion mount` and every daemon would pay for one digest of a path.
try:
    from _sha256 import sha256
except ImportError:  # other Pythons; 3.12 calls it _sha2
    from hashlib import sha256


def _host_uid() -> int:
    """Our uid as the initial user namespace knows it (root of a user namespace is not root)."""
    return idmaps.to_host(os.getuid(), idmaps.read("uid"))


def _state_dir() -> str:
    uid = _host_uid()
    if uid == 0:
        return "/run/pyunion/mounts"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pyunion-{uid}"
    return os.path.join(base, "pyunion", "mounts")


def pid_file(target: str) -> str:
    """The path of the daemon record of a mount on TARGET, an absolute resolved path (not
    resolved here: resolving a mount point would ask its daemon). A str, not a Path: pathlib
    costs every mount and every daemon a few ms of imports."""
    name = sha256(target.encode(errors="surrogateescape")).hexdigest()[:24] + ".json"
    return os.path.join(_state_dir(), name)


def record_daemon(pf: str, target: str, layers: list[str] | None = None) -> str | None:
    """Let `pyunion umount` find and wait for this daemon; the mount works without it.

    `pf` is computed before the mount exists: resolving a path through a mount that is not yet
    served would wait on ourselves. LAYERS (upper, lowers, work directory) say whose mount it is
    (a snapshot store's unmount touches only its own). Returns a warning to show when the
    record cannot be written."""
    try:
        os.makedirs(os.path.dirname(pf), mode=0o700, exist_ok=True)
        tmp = f"{pf.removesuffix('.json')}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "target": target,
                       "start": procs.start_time(os.getpid()), "layers": layers or []}, f)
        os.replace(tmp, pf)
    except OSError as e:
        return f"cannot record the daemon's pid in {pf}: {e.strerror}"
    return None


def _read(pf: str) -> object:
    with open(pf) as f:
        return json.load(f)


def forget_daemon(pf: str) -> None:
    """Remove the record if it is still ours (a later mount on the same target owns its own)."""
    try:
        rec = _read(pf)
        if isinstance(rec, dict) and rec.get("pid") == os.getpid():
            os.unlink(pf)
    except (OSError, ValueError, AttributeError):
        pass


def forget_record(target: str) -> None:
    """Remove TARGET's record, whoever wrote it (the mount is gone)."""
    try:
        os.unlink(pid_file(target))
    except FileNotFoundError:
        pass


def daemon_record(target: str) -> dict[str, object] | None:
    """The record of the live daemon serving TARGET (resolved path), or None."""
    try:
        rec = _read(pid_file(target))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    pid, start = rec.get("pid"), rec.get("start")
    if not isinstance(pid, int) or not (start is None or isinstance(start, int)) \
            or not procs.alive(pid, start):
        return None
    return rec


def find_daemon(target: str) -> tuple[int, int | None] | None:
    """(pid, start time) of the live daemon serving TARGET, or None."""
    rec = daemon_record(target)
    if rec is None:
        return None
    pid, start = rec["pid"], rec.get("start")
    assert isinstance(pid, int) and (start is None or isinstance(start, int))
    return pid, start
