"""This process's user namespace id maps (/proc/PID/uid_map, gid_map): whether they cover the
whole id space (the initial namespace, or one that maps everything, where chown reaches every
id) and what an id is in the initial namespace."""

from __future__ import annotations

import os

WHOLE = (0, 0, 4294967295)   # the initial namespace's map: every id is itself


def read(kind: str = "uid", pid: int | str = "self") -> list[tuple[int, int, int]] | None:
    """Rows (inside, outside, count) of PID's uid_map or gid_map; None where there is none to
    read (a kernel without user namespaces)."""
    try:
        with open(f"/proc/{pid}/{kind}_map") as f:
            return [(int(a), int(b), int(c)) for a, b, c in
                    (line.split() for line in f if line.strip())]
    except (OSError, ValueError):
        return None


def whole_id_space(kind: str = "uid", pid: int | str = "self") -> bool:
    """Every id maps to itself: not in a user namespace that maps only part of the id space."""
    rows = read(kind, pid)
    return rows is None or rows == [WHOLE]


def chown_out_of_reach() -> bool:
    """Whether chown cannot give a file any owner: not root, or root of a user namespace that
    maps only part of the id space (then owners are recorded in override xattrs instead)."""
    return os.geteuid() != 0 or not whole_id_space("uid")


def to_host(ident: int, rows: list[tuple[int, int, int]] | None) -> int:
    """IDENT (an id inside the namespace) as the parent namespace knows it; itself when no row
    maps it (or there are no rows)."""
    for inside, outside, count in rows or ():
        if inside <= ident < inside + count:
            return outside + ident - inside
    return ident
