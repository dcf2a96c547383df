"""Run OCI hooks: the state JSON on stdin, `timeout` honoured, output kept for the error message."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from snapshotter.runtime.errors import ContainerError


def run_hook(hook: dict[str, Any], state: dict[str, Any], index: int,
             cwd: str | None = None) -> None:
    """Run one hook like execve(path, args, env); raise ContainerError if it fails or times out."""
    args = list(hook.get("args") or [hook["path"]])
    env = None  # no `env`: inherit ours, as runc does (Go's exec with a nil Env)
    if hook.get("env") is not None:
        env = dict(e.split("=", 1) for e in hook["env"] if "=" in e)
    try:
        proc = subprocess.run(args, executable=hook["path"], env=env, cwd=cwd,
                              input=json.dumps(state).encode(), capture_output=True,
                              timeout=hook.get("timeout"), close_fds=True, check=False)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"error running hook #{index}: timeout after "
                             f"{hook.get('timeout')} seconds") from None
    except OSError as e:
        raise ContainerError(f"error running hook #{index}: {e.strerror}: {hook['path']}") from None
    if proc.returncode != 0:
        status = (f"exit status {proc.returncode}" if proc.returncode > 0
                  else f"signal: {-proc.returncode}")
        raise ContainerError(
            f"error running hook #{index}: {status}, stdout: "
            f"{proc.stdout.decode(errors='replace').strip()}, "
            f"stderr: {proc.stderr.decode(errors='replace').strip()}")


def run_hooks(hooks: list[dict[str, Any]], state: dict[str, Any], cwd: str | None = None) -> None:
    """Run hooks in order; the first failure stops the rest (all but poststop, see run_poststop)."""
    for i, hook in enumerate(hooks):
        run_hook(hook, state, i, cwd)


def run_poststop(hooks: list[dict[str, Any]], state: dict[str, Any],
                 warn: Any = None) -> None:
    """poststop: a failure is only a warning and the remaining hooks still run (config.md)."""
    for i, hook in enumerate(hooks):
        try:
            run_hook(hook, state, i, None)
        except ContainerError as e:
            if warn:
                warn(str(e))

