"""`pyunion mount`, `pyunion umount` and the fuse-overlayfs command line: a thin layer over the
mount library (unionfs/mounting.py) that parses the command line and prints its one-line errors.
Exit status 2 for a bad command line, 1 for a refused or failed mount."""

from __future__ import annotations

import sys

import unionfs
from unionfs import procs
from unionfs.messages import one_line
from unionfs.mounting import MountError, mount, unmount
from unionfs.options import MountConfig, UsageError, parse_compat_args, parse_mount_args
from unionfs.registry import pid_file

# Names tests written before unionfs/procs.py and unionfs/mounting.py still import from here.
_pid_alive, _start_time = procs.alive, procs.start_time
__all__ = ["MOUNT_USAGE", "compat_main", "mount_main", "pid_file", "umount_main"]

MOUNT_USAGE = """\
usage: pyunion mount [-f] [-o OPT,...] UPPER:LOWER1[:LOWER2...] TARGET
       pyunion umount [-l] TARGET
       pyunion -o lowerdir=L1:L2[,upperdir=U,workdir=W,...] TARGET   (fuse-overlayfs form)
       pyunion SOURCE TARGET -o OPTIONS                              (mount.fuse3 form)"""


def _fail(msg: str, status: int = 1) -> int:
    """One line on stderr; status 1 for a refused operation, 2 for a bad command line."""
    print(f"pyunion: {one_line(msg)}", file=sys.stderr)
    return 2 if msg.startswith("usage") else status


def _mount(cfg: MountConfig) -> int:
    for w in cfg.warnings:
        print(f"pyunion: warning: {w}", file=sys.stderr)
    try:
        if cfg.foreground:
            return _mount_foreground(cfg)
        mount(cfg, fork=True)   # this command is one thread and exits next: fork is safe
    except MountError as e:
        return _fail(str(e))
    return 0


def _mount_foreground(cfg: MountConfig) -> int:
    """`-f`: serve in this process until unmounted (errors on stderr, not over a pipe)."""
    from unionfs.daemon import main as daemon_main
    from unionfs.mounting import check, undo_created
    from unionfs.options import encode_config
    cfg = check(cfg)
    code = daemon_main([encode_config(cfg)])
    if code != 0:
        undo_created(cfg.created)
    return code


def mount_main(args: list[str]) -> int:
    try:
        cfg = parse_mount_args(args)
    except UsageError as e:
        return _fail(str(e), 2)
    return _mount(cfg)


def compat_main(args: list[str]) -> int:
    if "--version" in args or "-V" in args:
        print(f"pyunion {unionfs.__version__}")
        return 0
    if "-h" in args or "--help" in args:
        print(MOUNT_USAGE)
        return 0
    try:
        cfg = parse_compat_args(args)
    except UsageError as e:
        return _fail(str(e), 2)
    return _mount(cfg)


def umount_main(args: list[str]) -> int:
    lazy = False
    rest = []
    for a in args:
        if a in ("-l", "--lazy", "-z"):
            lazy = True
        elif a.startswith("-"):
            return _fail(f"unknown flag {a!r}", 2)
        else:
            rest.append(a)
    if len(rest) != 1:
        return _fail("usage: pyunion umount [-l] TARGET")
    try:
        for w in unmount(rest[0], lazy=lazy):
            print(f"pyunion: warning: {one_line(w)}", file=sys.stderr)
    except MountError as e:
        return _fail(str(e))
    return 0
