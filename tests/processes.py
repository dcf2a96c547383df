"""Ending a process a test started: by its PID, politely first."""

from __future__ import annotations

import os
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


def children() -> set[int]:
    """This process's children (zombies included), from every thread's list: what a test
    compares before and after to see that nothing of its own was left to reap."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out |= {int(x) for x in f.read().split()}
    return out
