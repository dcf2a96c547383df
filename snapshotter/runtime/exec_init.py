"""The container side of `exec`: join a running container and execve a process in it.

The runtime opens the init's /proc/PID/ns/* files (as root, in the host) and forks stage A,
which it puts in the container's cgroups. A joins the user namespace first, then the others,
and forks stage B (only a child lands in the joined pid namespace). B is in the container's
mount namespace, so its root is the container's root: it sets up the terminal from the
container's /dev/ptmx, applies the process (rlimits, cwd, user, capabilities, no_new_privs) and
loads the container's seccomp filter last, as runc does, then execs. The channel socket is
close-on-exec: EOF after "exec" means execve succeeded; an "error" message means it did not.
Non-dumpable from the start, with every other fd closed (runc CVE-2019-5736, CVE-2024-21626).
"""

from __future__ import annotations

import os
import signal
import socket
from typing import NoReturn

from snapshotter.runtime import init, seccomp, spec
from snapshotter.runtime import syscalls as sc
from snapshotter.runtime.config import Config, Process
from snapshotter.runtime.handshake import Channel, Exec, Pid

# setns order: user first (it grants the rights to join the rest), mount last but one so
# /proc paths are not needed after it, cgroup after mount as runc's nsexec does.
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "mount", "cgroup")


def stage_a(ch: Channel, ns_fds: dict[str, int], config: Config, process: Process,
            csock: socket.socket | None, preserve: int = 0) -> NoReturn:
    try:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        ch.expect_ok()  # the runtime put us in the container's cgroups
        for t in JOIN_ORDER:
            if t in ns_fds:
                sc.setns(ns_fds[t], spec.NAMESPACE_FLAGS[t])
                os.close(ns_fds[t])
                if t == "user":
                    os.setresgid(0, 0, 0)
                    os.setresuid(0, 0, 0)
        pid = os.fork()
        if pid == 0:
            _stage_b(ch, config, process, csock, preserve)
        ch.send(Pid(pid))
        os._exit(0)
    except BaseException as e:  # noqa: BLE001 - reaches the runtime as one line
        init._fail(ch, e)


def _stage_b(ch: Channel, config: Config, process: Process,
             csock: socket.socket | None, preserve: int = 0) -> NoReturn:
    try:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        init._close_fds_except({ch.sock.fileno(), *([csock.fileno()] if csock else []),
                                *init.preserved_fds(preserve)})
        seccomp_json = config.linux.get("seccomp")
        filt = seccomp.compile(seccomp_json) if seccomp_json is not None else None
        os.chdir("/")
        if process.terminal and csock is not None:
            init.setup_terminal(csock, process, console_mount=False)
        init.set_rlimits(process)
        os.chdir(process.cwd)
        exe = init._lookup(process.args[0], process)
        with open("/proc/sys/kernel/cap_last_cap") as f:
            cap_last = int(f.read())
        nnp = process.no_new_privileges
        if filt is not None and not nnp:
            filt.load()
        init._set_user(process, cap_last, init._setgroups_allowed())
        if nnp:
            sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        os.umask(0o022 if process.user.umask is None else process.user.umask)
        for s in range(1, signal.NSIG):  # SIGPIPE ignored by Python would survive execve
            try:
                signal.signal(s, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        ch.send(Exec())
        if filt is not None and nnp:
            filt.load()
        os.execve(exe, process.args, process.environ())
    except BaseException as e:  # noqa: BLE001
        init._fail(ch, e)
    raise AssertionError("unreachable")
