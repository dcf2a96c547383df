"""The mount lifecycle as a library: check a MountConfig, start its daemon, wait until the union
is served; unmount it and wait for the daemon to end. `pyunion mount`/`umount` (mount_cli.py) and
the snapshot store (snapshotter/snapshots.py) both call this, in-process.

    mounted = mount(MountConfig(upper=U, lowers=[L1, L2], target=T))
    ...
    unmount(mounted.target)

The daemon is started spawn-style, so a threaded caller (the containerd gRPC server) is safe: a
new interpreter runs `python -m unionfs.daemon CONFIG READY_FD` in its own session (the caller
is never forked); that process forks once, before it serves anything, so the daemon is
re-parented at once and never left as a zombie of a long-lived caller. Readiness comes back
over a pipe: "ok PID" once the mount serves, or the one-line reason it could not mount.

Errors (str() is the one-line reason, in the words `pyunion mount` prints):
    MountError            base of all
      BadMountConfig      refused before anything was started: missing or overlapping
                          directories, a busy mount point (`pyunion mount` exits 1)
      DaemonStartError    the daemon could not mount (fusermount3, the kernel, the log file)
      UnmountError        not a pyunion mount, busy, or the daemon did not end
A refused or failed mount leaves nothing: no mount, no process, no pid record, no directory.
"""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unionfs import procs
from unionfs.mountinfo import (
    FUSECTL,
    MountEntry,
    fuse_connection,
    mount_point_path,
    mounts,
    namespaces_holding,
    top_mount,
)
from unionfs.options import MountConfig, backend, encode_config
from unionfs.registry import find_daemon, forget_record

if TYPE_CHECKING:
    import subprocess

# subprocess (with threading, selectors, locale) is imported where a process is spawned: the
# forked `pyunion mount` never does (tests/test_imports.py).


class MountError(Exception):
    """A mount or unmount that did not happen; str() is the one-line reason."""


class BadMountConfig(MountError):
    """The configuration is refused as given (a directory is missing, layers overlap, the mount
    point is busy): nothing was created or started."""


class DaemonStartError(MountError):
    """The daemon was started but could not mount (or could not be started at all)."""


class UnmountError(MountError):
    """The target is not a pyunion mount, is busy, or its daemon did not end."""


@dataclass(frozen=True)
class MountedUnion:
    """A union being served: where, by which daemon (pid and /proc start time, so a reused pid
    is never mistaken for it), and the checked configuration it serves."""
    target: str
    pid: int
    start: int | None
    config: MountConfig

    def unmount(self, lazy: bool = False, timeout: float = 30.0) -> list[str]:
        return unmount(self.target, lazy=lazy, timeout=timeout)


# ---------------------------------------------------------------- checks ----------------------

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
        raise BadMountConfig(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        raise BadMountConfig(f"{what} {path} is not a directory")
    return os.path.realpath(path)


def _check_log(log: str) -> None:
    """Refuse up front a log file the daemon could not open."""
    if os.path.isdir(log):
        raise BadMountConfig(f"log file {log} is a directory")
    parent = os.path.dirname(os.path.abspath(log))
    if not os.path.isdir(parent):
        raise BadMountConfig(f"log file {log}: directory {parent} does not exist")
    if not os.access(log if os.path.exists(log) else parent, os.W_OK):
        raise BadMountConfig(f"log file {log} is not writable")


def check(cfg: MountConfig) -> MountConfig:
    """Validate and normalise paths (in CFG, which is returned); raise BadMountConfig with the
    one-line reason.

    Everything is checked before anything is created: a refused mount changes nothing (the work
    directory is the only thing made, last; `cfg.created` names what was, for undoing it)."""
    if not os.path.exists("/dev/fuse"):
        raise BadMountConfig("/dev/fuse is missing: FUSE is not available (modprobe fuse)")
    if not cfg.target:
        raise BadMountConfig("mount point is empty")
    target = os.path.abspath(cfg.target)
    _check_dir(target, "mount point")
    lowers: list[str] = []
    for low in cfg.lowers:
        real = _check_dir(low, "lower directory")
        if real in lowers:
            raise BadMountConfig(f"lower directory {low} is given twice (conflicting lowerdir)")
        lowers.append(real)
    if not lowers:
        raise BadMountConfig("at least one lower directory is needed")
    upper = workdir = None
    if cfg.upper:
        upper = _check_dir(cfg.upper, "upper directory")
        for low in lowers:
            if _inside(upper, low) or _inside(low, upper):
                raise BadMountConfig(f"upper directory {cfg.upper} and lower directory {low} "
                                     "overlap")
        workdir = os.path.realpath(os.path.abspath(cfg.workdir) if cfg.workdir
                                   else default_workdir(upper))
        if os.path.lexists(workdir) and not os.path.isdir(workdir):
            raise BadMountConfig(f"work directory {workdir} is not a directory")
        if _inside(workdir, upper) or _inside(upper, workdir):
            raise BadMountConfig(f"work directory {workdir} and upper directory {upper} overlap")
        for low in lowers:
            if _inside(workdir, low) or _inside(low, workdir):
                raise BadMountConfig(f"work directory {workdir} is inside lower directory {low}"
                                     if _inside(workdir, low) else
                                     f"work directory {workdir} and lower directory {low} "
                                     "overlap")
        if os.stat(_existing_ancestor(workdir)).st_dev != os.stat(upper).st_dev:
            raise BadMountConfig(f"work directory {workdir} is on another filesystem than upper "
                                 f"directory {upper}")
    rtarget = os.path.realpath(target)
    for d in [upper, workdir, *lowers]:
        if d and (_inside(rtarget, d) or _inside(d, rtarget)):
            raise BadMountConfig(f"mount point {cfg.target} overlaps layer directory {d}")
    for mnt, fstype in mount_table():
        if mnt == rtarget and fstype == "fuse.pyunion":
            raise BadMountConfig(f"mount point {cfg.target} is busy: a pyunion mount is already "
                                 "there")
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
        raise BadMountConfig(f"cannot create work directory {path}: {e.strerror}") from None
    return made


def undo_created(made: list[str]) -> None:
    """Remove the directories a refused mount made (outermost first in MADE: it did not exist
    before this command, so all it holds is this mount attempt's, e.g. the union's work/)."""
    if made:
        import shutil  # not on the path of a mount that works
        shutil.rmtree(made[0], ignore_errors=True)


# ---------------------------------------------------------------- the daemon's start ----------

# Where this copy of unionfs was imported from: the daemon runs the same code as its caller.
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def daemon_argv(cfg: MountConfig, ready_fd: int) -> list[str]:
    """The command that serves CFG: a new interpreter, not a fork of the caller.

    -P: the caller's working directory is not put on sys.path (a `unionfs` there must not be
    imported instead). -S (no site, so none of site-packages' start-up hooks: about 20 ms) for
    our own transport, which needs nothing but the standard library; pyfuse3 lives in
    site-packages."""
    flags = ["-P", "-S"] if backend(cfg) == "kernel" else ["-P"]
    return [sys.executable, *flags, "-m", "unionfs.daemon", encode_config(cfg), str(ready_fd)]


def _daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _CODE_ROOT + (os.pathsep + path if path else "")
    return env


def start_daemon(cfg: MountConfig, *, fork: bool = False) -> int:
    """Start the daemon serving CFG (checked) and return its pid once the mount serves; raise
    DaemonStartError with its one-line reason otherwise (then no daemon is left running).

    By default safe from any thread of any process: the caller is not forked (subprocess spawns
    a new interpreter). The daemon never holds the caller's stdio: its stdout and stderr go to
    CFG.log, else /dev/null.

    fork=True is for a caller that is one thread and about to exit (the `pyunion mount`
    command): the daemon is then a fork of it (forked twice, so it is re-parented at once), which
    saves the new interpreter's start and imports (about 40 ms of the mount's start). A caller
    that has more than one thread is spawned for all that."""
    try:
        out = (os.open(cfg.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
               if cfg.log else None)
    except OSError as e:
        raise DaemonStartError(f"cannot open log file {cfg.log}: {e.strerror}") from None
    r, w = os.pipe()
    first: _Forked | subprocess.Popen[bytes]
    try:
        if fork and _one_thread():
            first = _fork_daemon(cfg, r, w, out)
        else:
            first = _spawn_daemon(cfg, w, out)
    except OSError as e:
        os.close(r)
        raise DaemonStartError(f"cannot start the daemon ({sys.executable}): {e.strerror}"
                               ) from None
    finally:
        os.close(w)
        if out is not None:
            os.close(out)
    with os.fdopen(r, "rb") as f:
        line = f.readline()   # EOF without a line: the daemon ended before it was ready
        first.wait()          # the first process: it leaves as soon as the daemon is forked
        text = line.decode(errors="replace").strip()
        if text.startswith("ok "):
            return int(text.split()[1])
        _wait_for_eof(f.fileno(), EXIT_WAIT_S)   # the daemon is gone when we say it failed
    raise DaemonStartError(text.removeprefix("error: ")
                           or "daemon exited before the mount was ready")


def _spawn_daemon(cfg: MountConfig, w: int, out: int | None) -> subprocess.Popen[bytes]:
    import subprocess
    where = subprocess.DEVNULL if out is None else out
    return subprocess.Popen(daemon_argv(cfg, w), stdin=subprocess.DEVNULL, stdout=where,
                            stderr=where, pass_fds=(w,), start_new_session=True,
                            env=_daemon_env())


def _one_thread() -> bool:
    """This process has a single thread (threads started by C libraries count too)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class _Forked:
    def __init__(self, pid: int):
        self.pid = pid

    def wait(self) -> None:
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _fork_daemon(cfg: MountConfig, r: int, w: int, out: int | None) -> _Forked:
    """fork=True: this process, forked twice; the grandchild serves (unionfs/daemon.py)."""
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        return _Forked(child)
    code = 1
    try:         # the first child: a new session, fork the daemon, leave
        os.close(r)
        os.setsid()
        if os.fork() == 0:
            _detach_stdio(out, keep=w)
            from unionfs.daemon import serve_detached
            serve_detached(cfg, w)
        code = 0
    finally:
        os._exit(code)


def _detach_stdio(out: int | None, keep: int) -> None:
    """stdin from /dev/null, stdout and stderr to OUT (else /dev/null); every other descriptor
    but KEEP closed (the caller's stay the caller's)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null if out is None else out, 1)
    os.dup2(null if out is None else out, 2)
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


EXIT_WAIT_S = 10.0   # a daemon that reported an error exits at once; the bound is for safety


def _wait_for_eof(fd: int, timeout: float) -> None:
    """Until every holder of the pipe's other end has closed it (the daemon, at its exit)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0] and not os.read(fd, 4096):
            return


def mount(cfg: MountConfig, *, fork: bool = False) -> MountedUnion:
    """Check CFG, start its daemon, return once the union is served on cfg.target (fork: see
    start_daemon).

    Raises BadMountConfig or DaemonStartError; either way nothing is left behind (the work
    directory this call made is removed again)."""
    cfg = check(cfg)
    try:
        pid = start_daemon(cfg, fork=fork)
    except BaseException:
        undo_created(cfg.created)
        raise
    return MountedUnion(cfg.target, pid, procs.start_time(pid), cfg)


# ---------------------------------------------------------------- unmount ---------------------

FUSERMOUNT_TIMEOUT_S = 10.0   # fusermount3 never needs the daemon; the bound is for safety
GRACE_S = 2.0   # how long a stopped daemon, or a copy of the mount elsewhere, may last first


def abort_connection(conn: str) -> bool:
    """Abort FUSE connection CONN (/sys/fs/fuse/connections/CONN/abort) now: every request
    waiting on it fails (ECONNABORTED) and the mount lets go. Only for a connection whose mount
    is known to be alive at this moment: CONN is the superblock's device number, which the
    kernel gives to the next FUSE mount as soon as this one's superblock dies (ConnectionHold
    is for aborting later)."""
    hold = ConnectionHold(conn)
    try:
        return hold.fire()
    finally:
        hold.close()


class ConnectionHold:
    """The abort file of FUSE connection CONN, opened now (while the caller knows the mount is
    its own) so that fire() later aborts that connection and no other.

    An open abort file stays bound to its connection: when that superblock dies the kernel
    unbinds the file (fs/fuse/control.c clears its i_private) and a write does nothing, even if
    a new mount has been given the same number meanwhile; a path opened at fire() time would
    reach the newcomer. When fusectl is not mounted, root opens the file through a mount of
    fusectl attached nowhere (libc.detached_mount): the host's mount table is not changed and,
    unlike a child in a namespace of its own, no copy of every mount is made (such a copy kept
    the mount being unmounted, and every other, alive in "another mount namespace")."""

    def __init__(self, conn: str):
        self.conn = conn
        self._fd: int | None = None
        if not conn:
            return
        path = f"{FUSECTL}/{conn}/abort"
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            return
        except OSError:
            pass
        if os.geteuid() != 0:
            return
        try:    # fusectl is not mounted here: a mount of it attached nowhere (nothing copied)
            from unionfs.libc import detached_mount
            mnt = detached_mount("fusectl")
        except OSError:
            return
        try:
            self._fd = os.open(f"{conn}/abort", os.O_WRONLY | os.O_CLOEXEC, dir_fd=mnt)
        except OSError:
            pass
        finally:
            os.close(mnt)

    def fire(self) -> bool:
        """Abort the held connection; False when nothing was held or the write failed."""
        if self._fd is not None:
            try:
                os.write(self._fd, b"1")
                return True
            except OSError:
                return False
        return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _elsewhere(target: str, holder: tuple[int, str], who: str) -> str:
    pid, where = holder
    return (f"unmounted {target} here, but the mount is still used in another mount namespace "
            f"(process {pid}, at {where}): {who} keeps serving it")


def unmount(target: str, lazy: bool = False, timeout: float = 30.0) -> list[str]:
    """Unmount a pyunion mount and wait (bounded) for its daemon; return warnings to show.
    Raises UnmountError with the one-line reason.

    The mount is never stat()ed: a stopped or hung daemon would block us in the kernel. When
    the daemon cannot finish (stopped, or the mount is still used in another mount namespace)
    this says so at once instead of waiting; a connection that stays alive with no daemon able
    to serve it is aborted."""
    rtarget = mount_point_path(target)
    entry = top_mount(rtarget)
    if entry is None or not entry.fstype.startswith("fuse"):
        raise UnmountError(f"{target} is not a pyunion mount")
    conn = fuse_connection(entry) or ""
    daemon = find_daemon(rtarget)
    # A stopped daemon's connection may have to be aborted after the unmount: its abort file is
    # held from now, while the mount is visibly ours (the number is reused once it dies).
    hold = ConnectionHold(conn)
    try:
        return _unmount(target, rtarget, entry, conn, daemon, hold, lazy, timeout)
    finally:
        hold.close()


def _unmount(target: str, rtarget: str, entry: MountEntry, conn: str,
             daemon: tuple[int, int | None] | None, hold: ConnectionHold, lazy: bool,
             timeout: float) -> list[str]:
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [rtarget]
    import subprocess
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True,
                           timeout=FUSERMOUNT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        aborted = hold.fire()   # held since before fusermount3, which hung: still ours
        raise UnmountError(f"fusermount3 did not finish within {FUSERMOUNT_TIMEOUT_S:.0f}s"
                           + (f"; aborted FUSE connection {conn}" if aborted else "")) from None
    if r.returncode != 0:
        reason = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "fusermount3 failed"
        if "busy" in reason.lower():
            why = ""
            if daemon and procs.state(daemon[0]) in ("T", "t"):
                why = f"; its daemon {daemon[0]} is stopped"
            raise UnmountError(f"{target} is busy{why} (use -l for a lazy unmount)")
        raise UnmountError(reason.removeprefix("fusermount3: "))
    warnings: list[str] = []
    if daemon is None:
        elsewhere = namespaces_holding(entry.dev)
        if elsewhere:
            raise UnmountError(_elsewhere(target, elsewhere[0], "its daemon"))
    else:
        warnings = _wait_for_daemon(target, daemon, entry.dev, conn, hold, lazy, timeout)
    forget_record(rtarget)
    return warnings


def _wait_for_daemon(target: str, daemon: tuple[int, int | None], dev: tuple[int, int],
                     conn: str, hold: ConnectionHold, lazy: bool, timeout: float) -> list[str]:
    """After the unmount: wait for DAEMON to exit, saying at once why it cannot when it cannot."""
    pid, start = daemon
    warnings: list[str] = []
    try:    # readable once the daemon has exited: woken at once, not by a sleep's granularity
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    try:
        return _wait_exit(target, pid, start, pidfd, dev, conn, hold, lazy, timeout, warnings)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _wait_exit(target: str, pid: int, start: int | None, pidfd: int | None,
               dev: tuple[int, int], conn: str, hold: ConnectionHold, lazy: bool,
               timeout: float,
               warnings: list[str]) -> list[str]:
    deadline = time.monotonic() + timeout
    stopped_since = held_since = None
    # Other namespaces' mount tables (every process's mountinfo) are read only when the daemon
    # has not exited by itself at once, as it usually does.
    next_look = time.monotonic() + 0.1
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
            elsewhere = namespaces_holding(dev)
            held_since = (held_since or now) if elsewhere else None
            if elsewhere and held_since is not None and now - held_since > GRACE_S:
                raise UnmountError(_elsewhere(target, elsewhere[0], f"daemon {pid}"))
        if lazy and stopped_since is None and now > deadline - timeout + GRACE_S:
            warnings.append(f"detached {target}; daemon {pid} keeps serving what still "
                            "uses it and exits when that is done")
            break
        if pidfd is None:
            time.sleep(0.01)
        else:
            select.select([pidfd], [], [], 0.05)
    state = procs.state(pid) if procs.alive(pid, start) else None
    if state in ("T", "t"):
        if hold.fire():      # False: nothing held (the daemon stopped only during the wait)
            warnings.append(f"daemon {pid} is stopped: aborted FUSE connection {conn} "
                            f"(requests still waiting on {target} fail)")
        else:
            warnings.append(f"unmounted {target}; daemon {pid} is stopped and exits when "
                            f"continued (kill -CONT {pid})")
    elif state is not None and not warnings:
        raise UnmountError(f"daemon {pid} did not exit within {timeout:.0f}s after unmount")
    if state is None:
        _reap(pid)
    return warnings


def _reap(pid: int) -> None:
    """A caller that is a child subreaper (`pyunion run` once its container started) inherits
    the daemon when the daemon's first process leaves: collect its exit, if it is ours."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
