"""Small syscall helpers the union's modules share."""

from __future__ import annotations

import os
import shutil

from unionfs.inodes import Node


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code), what)


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _below(node: Node, top: Node) -> bool:
    p = node.parent
    while p is not None:
        if p is top:
            return True
        p = p.parent
    return False


def _getter(path: str, names: set[str] | None = None):
    """An xattr reader for layers.py's rules: a value, or None where there is none."""
    def get(name: str) -> bytes | None:
        if names is not None and name not in names:
            return None
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None
    return get


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _remove_quietly(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def _mode_rdev(st: os.stat_result) -> tuple[int, int]:
    return st.st_mode, st.st_rdev
