"""`pyunion mount`, `pyunion umount` and the fuse-overlayfs command line: checks, daemon start,
and waiting for it, with one-line errors for everything a user can get wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import unionfs
from unionfs import procs
from unionfs.messages import one_line
from unionfs.mountinfo import (
    FUSECTL,
    fuse_connection,
    mount_point_path,
    mounts,
    namespaces_holding,
    top_mount,
)
from unionfs.options import MountConfig, UsageError, parse_compat_args, parse_mount_args
from unionfs.registry import find_daemon, pid_file

# Names tests written before unionfs/procs.py still import from here.
_pid_alive, _start_time = procs.alive, procs.start_time

MOUNT_USAGE = """\
usage: pyunion mount [-f] [-o OPT,...] UPPER:LOWER1[:LOWER2...] TARGET
       pyunion umount [-l] TARGET
       pyunion -o lowerdir=L1:L2[,upperdir=U,workdir=W,...] TARGET   (fuse-overlayfs form)
       pyunion SOURCE TARGET -o OPTIONS                              (mount.fuse3 form)"""


class MountError(Exception):
    pass


def _fail(msg: str, status: int = 1) -> int:
    """One line on stderr; status 1 for a refused operation, 2 for a bad command line."""
    print(f"pyunion: {one_line(msg)}", file=sys.stderr)
    return 2 if msg.startswith("usage") else status


def default_workdir(upper: str) -> str:
    """Beside the upper (so on its filesystem), never inside it: the upper stays a changeset."""
    up = os.path.abspath(upper).rstrip("/") or "/"
    return os.path.join(os.path.dirname(up), f".{os.path.basename(up)}.pyunion-work")


def _inside(a: str, b: str) -> bool:
    """a is b or below b."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def mount_table() -> list[tuple[str, str]]:
    """(mount point, fstype) of every mount in our namespace."""
    return [(m.mountpoint, m.fstype) for m in mounts()]


def _existing_ancestor(path: str) -> str:
    """The nearest directory on PATH's way up that exists (PATH itself if it does)."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _check_dir(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise MountError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        raise MountError(f"{what} {path} is not a directory")
    return os.path.realpath(path)


def _check_log(log: str) -> None:
    """The daemon opens its log after the fork: refuse here what it could not open."""
    if os.path.isdir(log):
        raise MountError(f"log file {log} is a directory")
    parent = os.path.dirname(os.path.abspath(log))
    if not os.path.isdir(parent):
        raise MountError(f"log file {log}: directory {parent} does not exist")
    if not os.access(log if os.path.exists(log) else parent, os.W_OK):
        raise MountError(f"log file {log} is not writable")


def check(cfg: MountConfig) -> MountConfig:
    """Validate and normalise paths; raise MountError with the one-line reason.

    Everything is checked before anything is created: a refused mount changes nothing (the work
    directory is the only thing made, last; `cfg.created` names what was, for undoing it)."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: FUSE is not available (modprobe fuse)")
    if not cfg.target:
        raise MountError("mount point is empty")
    target = os.path.abspath(cfg.target)
    _check_dir(target, "mount point")
    lowers: list[str] = []
    for low in cfg.lowers:
        real = _check_dir(low, "lower directory")
        if real in lowers:
            raise MountError(f"lower directory {low} is given twice (conflicting lowerdir)")
        lowers.append(real)
    upper = workdir = None
    if cfg.upper:
        upper = _check_dir(cfg.upper, "upper directory")
        for low in lowers:
            if _inside(upper, low) or _inside(low, upper):
                raise MountError(f"upper directory {cfg.upper} and lower directory {low} overlap")
        workdir = os.path.realpath(os.path.abspath(cfg.workdir) if cfg.workdir
                                   else default_workdir(upper))
        if os.path.lexists(workdir) and not os.path.isdir(workdir):
            raise MountError(f"work directory {workdir} is not a directory")
        if _inside(workdir, upper) or _inside(upper, workdir):
            raise MountError(f"work directory {workdir} and upper directory {upper} overlap")
        for low in lowers:
            if _inside(workdir, low) or _inside(low, workdir):
                raise MountError(f"work directory {workdir} is inside lower directory {low}"
                                 if _inside(workdir, low) else
                                 f"work directory {workdir} and lower directory {low} overlap")
        if os.stat(_existing_ancestor(workdir)).st_dev != os.stat(upper).st_dev:
            raise MountError(f"work directory {workdir} is on another filesystem than upper "
                             f"directory {upper}")
    rtarget = os.path.realpath(target)
    for d in [upper, workdir, *lowers]:
        if d and (_inside(rtarget, d) or _inside(d, rtarget)):
            raise MountError(f"mount point {cfg.target} overlaps layer directory {d}")
    for mnt, fstype in mount_table():
        if mnt == rtarget and fstype == "fuse.pyunion":
            raise MountError(f"mount point {cfg.target} is busy: a pyunion mount is already there")
    if cfg.log:
        _check_log(cfg.log)
    if workdir:
        cfg.created = _make_dirs(workdir)
    cfg.target, cfg.lowers, cfg.upper, cfg.workdir = rtarget, lowers, upper, workdir
    return cfg


def _make_dirs(path: str) -> list[str]:
    """mkdir -p with mode 0700; the directories made, outermost first."""
    made: list[str] = []
    todo = []
    p = path
    while not os.path.lexists(p):
        todo.append(p)
        p = os.path.dirname(p)
    try:
        for d in reversed(todo):
            os.mkdir(d, 0o700)
            made.append(d)
    except OSError as e:
        undo_created(made)
        raise MountError(f"cannot create work directory {path}: {e.strerror}") from None
    return made


def undo_created(made: list[str]) -> None:
    """Remove the directories a refused mount made (outermost first in MADE: it did not exist
    before this command, so all it holds is this mount attempt's, e.g. the union's work/)."""
    if made:
        shutil.rmtree(made[0], ignore_errors=True)


def start_daemon(cfg: MountConfig) -> int:
    """Start the daemon detached from the caller's stdio; return its pid once the mount is ready.

    The daemon is this process forked twice (no second interpreter to start), so it is
    reparented at once and never left as a zombie of a long-lived caller.
    """
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # intermediate: start a new session, fork the daemon, leave
        code = 1
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _become_daemon(cfg, w)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(child, 0)
    msg = b""
    with os.fdopen(r, "rb") as f:
        msg = f.readline()  # EOF without a line: the daemon died before it was ready
    text = msg.decode(errors="replace").strip()
    if text.startswith("ok "):
        return int(text.split()[1])
    raise MountError(text.removeprefix("error: ") or "daemon exited before the mount was ready")


def _become_daemon(cfg: MountConfig, ready_fd: int) -> None:
    """The daemon's side of start_daemon: never writes to the caller's stdio; any failure before
    the mount is ready reaches the caller as one line on ready_fd."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if cfg.log:
            try:
                out = os.open(cfg.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as e:
                raise MountError(f"cannot open log file {cfg.log}: {e.strerror}") from None
            os.dup2(out, 1)
            os.dup2(out, 2)
        os.closerange(3, ready_fd)
        os.closerange(ready_fd + 1, 1 << 16)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        from unionfs.daemon import encode_config
        from unionfs.daemon import main as daemon_main
        code = daemon_main([encode_config(cfg), str(ready_fd)])
    except BaseException as e:  # noqa: BLE001 - whatever happens, the process must end here
        import contextlib
        import traceback
        with contextlib.suppress(OSError):   # closed once the mount was reported ready
            os.write(ready_fd, f"error: {e}".replace("\n", " ").encode() + b"\n")
        if not isinstance(e, MountError):
            traceback.print_exc()
    finally:
        os._exit(code)


def _mount(cfg: MountConfig) -> int:
    for w in cfg.warnings:
        print(f"pyunion: warning: {w}", file=sys.stderr)
    try:
        cfg = check(cfg)
    except MountError as e:
        return _fail(str(e))
    try:
        if cfg.foreground:
            from unionfs.daemon import encode_config
            from unionfs.daemon import main as daemon_main
            code = daemon_main([encode_config(cfg)])
            if code != 0:
                undo_created(cfg.created)
            return code
        start_daemon(cfg)
    except MountError as e:
        undo_created(cfg.created)
        return _fail(str(e))
    return 0


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


FUSERMOUNT_TIMEOUT_S = 10.0   # fusermount3 never needs the daemon; the bound is for safety
GRACE_S = 2.0   # how long a stopped daemon, or a copy of the mount elsewhere, may last first


def abort_connection(conn: str) -> bool:
    """Abort FUSE connection CONN (/sys/fs/fuse/connections/CONN/abort): every request waiting
    on it fails (ECONNABORTED) and the mount lets go. When fusectl is not mounted, root mounts it
    in a private mount namespace of a child (the host's mount table is not changed)."""
    path = f"{FUSECTL}/{conn}/abort"
    try:
        with open(path, "w") as f:
            f.write("1")
        return True
    except OSError:
        pass
    if os.geteuid() != 0:
        return False
    script = (f"mount -t fusectl fusectl {FUSECTL} 2>/dev/null; "
              f"test -e {path} && echo 1 > {path}")
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                           capture_output=True, timeout=FUSERMOUNT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _elsewhere(target: str, holder: tuple[int, str], who: str) -> str:
    pid, where = holder
    return (f"unmounted {target} here, but the mount is still used in another mount namespace "
            f"(process {pid}, at {where}): {who} keeps serving it")


def unmount(target: str, lazy: bool = False, timeout: float = 30.0) -> list[str]:
    """Unmount a pyunion mount and wait (bounded) for its daemon; return warnings to show.

    The mount is never stat()ed: a stopped or hung daemon would block us in the kernel. When
    the daemon cannot finish (stopped, or the mount is still used in another mount namespace)
    this says so at once instead of waiting; a connection that stays alive with no daemon able
    to serve it is aborted."""
    rtarget = mount_point_path(target)
    entry = top_mount(rtarget)
    if entry is None or not entry.fstype.startswith("fuse"):
        raise MountError(f"{target} is not a pyunion mount")
    conn = fuse_connection(entry) or ""
    daemon = find_daemon(rtarget)
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [rtarget]
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True,
                           timeout=FUSERMOUNT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        aborted = abort_connection(conn)
        raise MountError(f"fusermount3 did not finish within {FUSERMOUNT_TIMEOUT_S:.0f}s"
                         + (f"; aborted FUSE connection {conn}" if aborted else "")) from None
    if r.returncode != 0:
        reason = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "fusermount3 failed"
        if "busy" in reason.lower():
            why = ""
            if daemon and procs.state(daemon[0]) in ("T", "t"):
                why = f"; its daemon {daemon[0]} is stopped"
            raise MountError(f"{target} is busy{why} (use -l for a lazy unmount)")
        raise MountError(reason.removeprefix("fusermount3: "))
    warnings: list[str] = []
    if daemon is None:
        elsewhere = namespaces_holding(entry.dev)
        if elsewhere:
            raise MountError(_elsewhere(target, elsewhere[0], "its daemon"))
    else:
        pid, start = daemon
        deadline = time.monotonic() + timeout
        stopped_since = held_since = None
        next_look = 0.0
        while procs.alive(pid, start) and time.monotonic() < deadline:
            now = time.monotonic()
            if procs.state(pid) in ("T", "t"):
                stopped_since = stopped_since or now
                if now - stopped_since > GRACE_S:
                    break
            else:
                stopped_since = None
            if now >= next_look:      # a namespace made just now may still be letting go
                next_look = now + 0.2
                elsewhere = namespaces_holding(entry.dev)
                held_since = (held_since or now) if elsewhere else None
                if elsewhere and held_since is not None and now - held_since > GRACE_S:
                    raise MountError(_elsewhere(target, elsewhere[0], f"daemon {pid}"))
            if lazy and stopped_since is None and now > deadline - timeout + GRACE_S:
                warnings.append(f"detached {target}; daemon {pid} keeps serving what still "
                                "uses it and exits when that is done")
                break
            time.sleep(0.01)
        state = procs.state(pid) if procs.alive(pid, start) else None
        if state in ("T", "t"):
            if abort_connection(conn):      # False: the connection is gone (or not ours)
                warnings.append(f"daemon {pid} is stopped: aborted FUSE connection {conn} "
                                f"(requests still waiting on {target} fail)")
            else:
                warnings.append(f"unmounted {target}; daemon {pid} is stopped and exits when "
                                f"continued (kill -CONT {pid})")
        elif state is not None and not warnings:
            raise MountError(f"daemon {pid} did not exit within {timeout:.0f}s after unmount")
    pid_file(rtarget).unlink(missing_ok=True)
    return warnings


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
