"""Ending a process a test started: by its PID, politely first."""

from __future__ import annotations

import signal
import subprocess

KILL_WAIT_S = 10.0


def stop(proc: subprocess.Popen, grace: float) -> int | None:
    """SIGTERM the process PROC (one this test started), wait GRACE seconds for it to exit, then
    SIGKILL it; returns its exit status (None if even SIGKILL did not end it in time). Signals
    go to PROC's own PID, never to a group or a name, so nothing else is touched."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            try:
                proc.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode
