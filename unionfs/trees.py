"""Removing a directory tree we own, whatever modes its directories carry.

A layer or an upper may hold directories without write or search permission (`dr-xr-xr-x`
from an image, `d---------` from a test): as root that is no obstacle, but as an ordinary user
(or root of a user namespace on files it does not own) it is, so a directory is made u+rwx
before it is emptied. Symlinks are removed, never followed. The walk is iterative, so a deep
tree cannot exhaust Python's recursion limit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable


def remove_tree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """Remove PATH: a directory tree, a file or a symlink; a missing PATH is no error. With
    IGNORE_ERRORS, remove what can be removed and never raise."""
    top = os.fspath(path)
    errors: list[OSError] = []

    def attempt(fn: Callable[..., object], *args: object) -> bool:
        try:
            fn(*args)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if not ignore_errors:
                raise
            errors.append(e)
            return False

    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    except OSError:
        if ignore_errors:
            return
        raise
    if not stat.S_ISDIR(st.st_mode):
        attempt(os.unlink, top)
        return
    stack: list[tuple[str, bool]] = [(top, False)]
    while stack:
        d, emptied = stack.pop()
        if emptied:
            attempt(os.rmdir, d)
            continue
        attempt(_make_traversable, d)
        stack.append((d, True))
        entries: list[os.DirEntry[str]] = []
        if not attempt(_list, d, entries):
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append((e.path, False))
            else:
                attempt(os.unlink, e.path)


def _make_traversable(d: str) -> None:
    mode = stat.S_IMODE(os.lstat(d).st_mode)
    if mode & 0o700 != 0o700:
        os.chmod(d, mode | 0o700)


def _list(d: str, out: list[os.DirEntry[str]]) -> None:
    with os.scandir(d) as it:
        out.extend(it)
