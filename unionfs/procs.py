"""Is that process still the one we recorded? Read from /proc/PID/stat: a pid plus the start
time the kernel gives it, so a pid reused by another process is never mistaken for ours."""

from __future__ import annotations


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (the state first), or None if gone.

    The command name is skipped by the last ")": it may itself hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def state(pid: int) -> str | None:
    """The process's state letter (R, S, D, T, t, Z, X, ...), or None if it is gone."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process, else None."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, start: int | None) -> bool:
    """PID still runs the process recorded with START (None: any process with that pid) and has
    not exited (a zombie has, whoever reaps it)."""
    now = start_time(pid)
    return now is not None and (start is None or now == start)
