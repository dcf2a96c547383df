"""Argument handling shared by the `pyunion image` and `pyunion snapshot` command lines."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from typing import NoReturn


class UsageError(Exception):
    pass


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


def os_message(e: OSError) -> str:
    """An OSError as a CLI says it: the reason and the file, without '[Errno N]'."""
    return f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
