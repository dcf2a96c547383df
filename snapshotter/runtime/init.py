"""The container side of `create`: two forked stages, then a wait until `start`, then execve.

Stage A (forked by the runtime) joins `path` namespaces, unshares the new ones (the user namespace
first; the runtime writes its id maps), then forks stage B and exits. Only a child of an
unshare(CLONE_NEWPID) caller lands in the new pid namespace, hence two stages.

Stage B is the container's pid 1: it builds the filesystem, asks the runtime to run prestart and
createRuntime hooks, runs createContainer hooks, pivots, applies the process settings, reports
`ready`, closes every fd, and blocks opening the exec fifo for writing. `start` opens the read end;
B writes one byte, runs startContainer hooks and execs the user program with the write end
close-on-exec, so `start` sees EOF exactly when the exec happened (or an error text before EOF).

Everything B needs is imported before pivot_root: after it, the host's Python library is gone.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess  # noqa: F401  (imported before pivot_root; used by hooks)
from typing import Any, NoReturn

from snapshotter.runtime import console, hooks, mounts, seccomp, spec
from snapshotter.runtime import syscalls as sc
from snapshotter.runtime.config import Config, Process
from snapshotter.runtime.errors import ContainerError
from snapshotter.runtime.handshake import Channel, Error, Hooks, Pid, Ready, UserNs
from snapshotter.runtime.state import OCI_VERSION

_KILL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                 signal.SIGUSR2)


def describe(e: BaseException) -> str:
    """One line for an error raised in the init."""
    if isinstance(e, OSError) and e.strerror:
        where = f" {e.filename}" if e.filename and str(e.filename) not in e.strerror else ""
        return f"{e.strerror}{where}"
    return str(e) or type(e).__name__


def stage_a(ch: Channel, config: Config, bundle: str, rootfs: str,
            statefd: int, cid: str, csock: socket.socket | None = None,
            preserve: int = 0) -> NoReturn:
    try:
        ch.expect_ok()  # the runtime has put us in the container's cgroup
        nss = config.namespaces
        fds = {t: os.open(p, os.O_RDONLY | os.O_CLOEXEC) for t, p in nss.items() if p}
        if "user" in fds:
            sc.setns(fds.pop("user"), sc.CLONE_NEWUSER)
        elif "user" in nss:
            sc.unshare(sc.CLONE_NEWUSER)
            ch.send(UserNs())
            ch.expect_ok()
        if "user" in nss:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        for t, fd in fds.items():
            sc.setns(fd, spec.NAMESPACE_FLAGS[t])
            os.close(fd)
        flags = 0
        for t, p in nss.items():
            if p is None and t != "user":
                flags |= spec.NAMESPACE_FLAGS[t]
        sc.unshare(flags)
        if flags & sc.CLONE_NEWNET:
            sc.link_up("lo")  # a new network namespace has loopback only, up (as runc does)
        pid = os.fork()
        if pid == 0:
            stage_b(ch, config, bundle, rootfs, statefd, cid, csock, preserve)
        ch.send(Pid(pid))
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - anything must reach the runtime as one line
        _fail(ch, e)


def _fail(ch: Channel, e: BaseException) -> NoReturn:
    try:
        ch.send(Error(describe(e)))
    finally:
        os._exit(1)


def _die_on_signal(signum: int, _frame: Any) -> None:
    os._exit(128 + signum)


def stage_b(ch: Channel, config: Config, bundle: str, rootfs: str,
            statefd: int, cid: str, csock: socket.socket | None = None,
            preserve: int = 0) -> NoReturn:
    try:
        # pid 1 of a pid namespace ignores signals it has no handler for; `kill` must work while
        # the container is `created`. Non-dumpable: /proc/1/exe (host python) stays unreachable.
        for s in _KILL_SIGNALS:
            signal.signal(s, _die_on_signal)
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        ch.expect_ok()  # the runtime knows our pid now (hooks get it; oomScoreAdj is set)
        _build(ch, config, bundle, rootfs, statefd, cid, csock, preserve)
    except BaseException as e:  # noqa: BLE001
        _fail(ch, e)
    raise AssertionError("unreachable")


def _hook_state(config: Config, bundle: str, cid: str, status: str) -> dict[str, Any]:
    st: dict[str, Any] = {"ociVersion": OCI_VERSION, "id": cid, "status": status,
                          "pid": os.getpid(), "bundle": bundle}
    if config.annotations:
        st["annotations"] = config.annotations
    return st


def _build(ch: Channel, config: Config, bundle: str, rootfs: str, statefd: int,
           cid: str, csock: socket.socket | None, preserve: int = 0) -> NoReturn:
    """PRESERVE: fds 3 .. 3+PRESERVE-1 of the runtime's caller reach the program (as runc's
    --preserve-fds); every other fd is closed."""
    linux = config.linux
    proc = config.process
    nss = config.namespaces
    cfg_mounts = config.mounts
    mounts.prepare_root(rootfs, linux.get("rootfsPropagation"))
    mounts.do_mounts(rootfs, bundle, cfg_mounts)
    if not mounts.dev_is_bind(cfg_mounts):
        mounts.create_devices(rootfs, linux.get("devices") or [], "user" in nss)
    ch.send(Hooks())  # prestart + createRuntime, in the runtime's namespaces
    ch.expect_ok()
    hooks.run_hooks(config.hooks_of("createContainer"),
                    _hook_state(config, bundle, cid, "creating"), cwd=rootfs)
    cwd_fd = mounts.open_in_root_path(rootfs, proc.cwd, create="dir")  # runc makes it too
    os.close(cwd_fd)
    if config.hostname:
        sc.sethostname(config.hostname)
    if config.domainname:
        sc.setdomainname(config.domainname)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        cap_last = int(f.read())
    setgroups = _setgroups_allowed()
    # Compiled before pivot_root (libseccomp's tables live in the host's library), loaded last.
    filt = seccomp.compile(linux["seccomp"]) if linux.get("seccomp") is not None else None
    mounts.pivot(rootfs)
    mounts.write_sysctl(linux.get("sysctl") or {})  # runc's order: before /proc/sys goes ro
    mounts.readonly_paths(linux.get("readonlyPaths") or [])
    mounts.mask_paths(linux.get("maskedPaths") or [])
    if proc.terminal and csock is not None:
        setup_terminal(csock, proc, console_mount=not mounts.dev_is_bind(cfg_mounts))
    if config.root_readonly:
        mounts.readonly_root()
    set_rlimits(proc)
    os.chdir(proc.cwd)
    here = os.getcwd()  # raises if the cwd is not reachable from the new root
    if not here.startswith("/"):
        raise ContainerError(f"cwd {proc.cwd} is outside the container root")
    exe = _lookup(proc.args[0], proc)
    nnp = proc.no_new_privileges
    if filt is not None and not nnp:
        filt.load()  # without no_new_privs loading needs CAP_SYS_ADMIN: before caps drop
    _set_user(proc, cap_last, setgroups)
    ch.send(Ready())
    ch.sock.close()
    _close_fds_except({statefd, *preserved_fds(preserve)})
    fifo = os.open("exec.fifo", os.O_WRONLY | os.O_CLOEXEC, dir_fd=statefd)  # blocks: `start`
    os.close(statefd)
    try:
        os.write(fifo, b"0")
        hooks.run_hooks(config.hooks_of("startContainer"),
                        _hook_state(config, bundle, cid, "created"), cwd="/")
        if nnp:
            sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        os.umask(0o022 if proc.user.umask is None else proc.user.umask)  # runc's default
        for s in range(1, signal.NSIG):
            try:
                signal.signal(s, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        os.closerange(3 + preserve, fifo)
        if filt is not None and nnp:
            filt.load()  # as late as possible: the fewest syscalls run under the filter
        os.execve(exe, proc.args, proc.environ())
    except BaseException as e:  # noqa: BLE001 - tell `start`, which waits for EOF
        os.write(fifo, ("error: " + describe(e)).encode())
        os._exit(1)
    raise AssertionError("unreachable")


def setup_terminal(csock: socket.socket, proc: Process, console_mount: bool) -> None:
    """A pty from the container's /dev/ptmx: slave as controlling tty and stdio, master sent
    over the console socket (the runtime connected it before forking us)."""
    master, slave, name = console.open_pty()
    try:
        console.set_size(slave, proc.console_size)
        if console_mount:
            console.bind_console(name)
        console.become_session_leader(slave, proc.user.uid, proc.user.gid)
        console.send_master(csock, master, name)
    finally:
        os.close(master)
        csock.close()


def set_rlimits(proc: Process) -> None:
    for rl in proc.rlimits:
        res = getattr(resource, rl.type, None)
        if res is None:
            raise ContainerError(f"unknown rlimit {rl.type}")
        resource.setrlimit(res, (rl.soft, rl.hard))


def _lookup(name: str, proc: Process) -> str:
    """exec.LookPath inside the container, with runc's error messages."""
    if "/" in name:
        try:
            os.stat(name)
        except OSError as e:
            raise ContainerError(f'exec: "{name}": stat {name}: {(e.strerror or str(e)).lower()}') from None
        return name
    for d in proc.lookup_path().split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise ContainerError(f'exec: "{name}": executable file not found in $PATH')


def _set_user(proc: Process, cap_last: int, setgroups: bool) -> None:
    uid, gid = proc.user.uid, proc.user.gid
    caps = proc.capabilities
    if caps is not None:
        bounding = caps.mask("bounding")
        for c in range(cap_last + 1):
            if not bounding & (1 << c):
                sc.prctl(sc.PR_CAPBSET_DROP, c)
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    if setgroups:
        os.setgroups(list(proc.user.additional_gids))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    if caps is not None:
        sc.capset(caps.mask("effective"), caps.mask("permitted"), caps.mask("inheritable"))
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        for name in caps.ambient:
            try:  # like runc: an ambient cap not in permitted+inheritable is skipped
                sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, spec.CAP_NUMBERS[name])
            except PermissionError:
                pass


def _setgroups_allowed() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def preserved_fds(n: int) -> range:
    """The caller's fds 3 .. 3+N-1, made inheritable for the program."""
    fds = range(3, 3 + n)
    for fd in fds:
        os.set_inheritable(fd, True)
    return fds


def _close_fds_except(keep: set[int]) -> None:
    """No fd of the runtime reaches the container (runc CVE-2024-21626)."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 30)
