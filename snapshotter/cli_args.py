"""Argument handling and the error boundary shared by the snapshotter's command lines
(`pyunion image`, `snapshot`, `snapshotter`, `run`, `rm`)."""

from __future__ import annotations

import argparse
import errno
import sqlite3
from pathlib import Path
from typing import Any, NoReturn

from snapshotter.errors import SnapshotterError
from unionfs import exits
from unionfs.exits import UsageError
from unionfs.messages import os_message

__all__ = ["FAILURES", "Parser", "UsageError", "boundary", "check_root", "describe",
           "os_message", "split_root"]

# What the snapshotter's commands expect to fail with: the store's refusals, a metadata database
# that cannot be read or written, the file system.
FAILURES: tuple[type[BaseException], ...] = (SnapshotterError, sqlite3.Error, OSError)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage dump
        raise UsageError(message)


def split_root(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--root DIR` / `--root=DIR` out of argv wherever it is (before or after the verb)."""
    root, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a == "--root":
            if i + 1 >= len(argv):
                raise UsageError("--root needs a directory")
            root, i = argv[i + 1], i + 2
            continue
        if a.startswith("--root="):
            root = a[len("--root="):]
        else:
            rest.append(a)
        i += 1
    return root, rest


def check_root(root: Path) -> Path:
    """A store root given on the command line: a directory, or nothing yet (a store is created
    there only by commands that write)."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "store root is not a directory", str(root))
    return root


def describe(e: BaseException) -> str:
    """The reason of an expected failure of the snapshotter's commands."""
    if isinstance(e, sqlite3.Error):
        return f"metadata database: {e}"
    return exits.describe(e)


def boundary(prog: str, **how: Any) -> exits.Boundary:
    """The error boundary of a snapshotter command PROG (unionfs/exits.py says what it does)."""
    how.setdefault("failures", FAILURES)
    how.setdefault("describe", describe)
    return exits.Boundary(prog, **how)
