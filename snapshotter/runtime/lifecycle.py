"""The runtime side of the OCI lifecycle (runtime.md): create, start, state, kill, delete, run.

Every failure inside `create` or a failing create hook destroys what was made (process tree,
cgroup, state directory); the mounts live only in the container's mount namespace, so they go
with its last process.
"""

from __future__ import annotations

import builtins
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snapshotter.runtime import cgroups, console, exec_init, hooks, init, rootless, spec
from snapshotter.runtime import handshake as hs
from snapshotter.runtime import syscalls as sc
from snapshotter.runtime.config import Config, Process
from snapshotter.runtime.errors import ContainerError
from snapshotter.runtime.state import (
    DEFAULT_ROOT,
    OCI_VERSION,
    State,
    StateDir,
    now_rfc3339,
    proc_start_time,
)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)


def parse_signal(text: str) -> int:
    """"TERM", "SIGTERM", "15" -> 15 (runc accepts all three)."""
    if text.isdigit():
        num = int(text)
        if 0 < num < signal.NSIG:
            return num
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise ContainerError(f"unknown signal {text!r}")


def _wait_gone(pid: int, start: int | None, timeout: float = 10.0) -> None:
    """Reap `pid` if it is our child, else wait until it no longer exists as that process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if start is None or proc_start_time(pid) != start:
                return
        time.sleep(0.01)


def hook_state(st: State, status: str, pid: int | None) -> dict[str, Any]:
    """The state a hook reads on stdin: exactly runtime.md's fields."""
    out: dict[str, Any] = {"ociVersion": OCI_VERSION, "id": st.id, "status": status}
    if pid:
        out["pid"] = pid
    out["bundle"] = st.bundle
    if st.annotations:
        out["annotations"] = st.annotations
    return out


def _wants_terminal(bundle: str) -> bool:
    try:
        raw = json.loads((Path(bundle) / "config.json").read_text())
        return bool(raw["process"].get("terminal"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # create reports the real problem


class Runtime:
    def __init__(self, root: str | Path = DEFAULT_ROOT,
                 warn: Callable[[str], None] | None = None) -> None:
        self.sd = StateDir(root)
        self.warn = warn or (lambda msg: None)

    # -- create -----------------------------------------------------------------------------
    def create(self, cid: str, bundle: str, pid_file: str | None = None,
               console_socket: str | socket.socket | None = None,
               preserve_fds: int = 0) -> State:
        """CONSOLE_SOCKET: a path (--console-socket) or a connected socket (our own relay)."""
        if not spec.valid_id(cid):
            raise ContainerError("invalid container ID format")
        bundle = os.path.abspath(bundle)
        if not os.path.isdir(bundle):
            raise ContainerError(f"chdir {bundle}: no such file or directory")
        rootless_ = rootless.is_rootless()
        config = Config.load(bundle, rootless=rootless_)
        nss = config.namespaces
        if rootless_ and "user" not in nss:
            raise ContainerError(f"running as uid {os.geteuid()} needs a user namespace in "
                                 "config.json (linux.namespaces: user, with uidMappings)")
        if "user" in nss:
            rootless.check_devices(config.linux.get("devices") or [])
        rootfs = config.rootfs(bundle)
        if not os.path.isdir(rootfs):
            raise ContainerError(f"invalid rootfs: stat {rootfs}: no such file or directory")
        for t, p in nss.items():
            if p and not os.path.exists(p):
                raise ContainerError(f"{t} namespace path {p}: no such file or directory")
        terminal = config.process.terminal
        if terminal and console_socket is None:
            raise ContainerError("cannot allocate tty if runc will detach without setting "
                                 "console socket")
        if not terminal and console_socket is not None:
            raise ContainerError("cannot use console socket if runc will not detach or "
                                 "allocate tty")
        csock = (console.connect(console_socket) if isinstance(console_socket, str)
                 else console_socket)
        sdir = self.sd.claim(cid)
        me = os.getpid()
        st = State(id=cid, bundle=bundle, rootfs=rootfs, created=now_rfc3339(), config=config,
                   annotations=config.annotations,
                   creator=(me, proc_start_time(me)))
        pid_a = 0
        try:
            self.sd.write(st)
            fifo = self.sd.fifo(cid)
            os.mkfifo(fifo, 0o600)
            os.chmod(fifo, 0o600)  # only the container's user may open it (through a dir fd)
            try:
                os.chown(fifo, *config.host_ids())
            except PermissionError:  # rootless, the process runs as a subordinate id
                os.chmod(fifo, 0o622)
            resources = config.linux.get("resources") or {}
            cg = cgroups.Cgroup.create(cid, config.linux.get("cgroupsPath"), resources,
                                       rootless=rootless_)
            if rootless_ and resources:
                why = ("no cgroup is delegated to this user" if cg is None
                       else "pyunion-runtime sets no cgroup limits rootless")
                self.warn(f"linux.resources ignored: {why}, so no limits are applied")
            st.cgroup = cg.to_state() if cg else None
            self.sd.write(st)
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # the init re-parents to us: run can wait
            # Opened here, as root in the host's namespaces: the init may be another user.
            statefd = os.open(sdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            pid_a = os.fork()
            if pid_a == 0:
                parent.close()
                init.stage_a(hs.Channel(child), config, bundle, rootfs, statefd, cid, csock,
                             preserve_fds)
            os.close(statefd)
            if csock is not None:
                csock.close()
            child.close()
            with parent:
                ch = hs.Channel(parent)
                if cg:
                    try:
                        cg.add(pid_a)
                    except OSError as e:  # e.g. a delegated hierarchy we may not use
                        if not rootless_:
                            raise ContainerError(f"joining cgroup {cg.paths}: {e.strerror}") \
                                from None
                        self.warn(f"not tracking the container in cgroup {cg.paths}: "
                                  f"{e.strerror}")
                        cg.remove()
                        st.cgroup = None
                        self.sd.write(st)
                    else:
                        if not rootless_ and resources:
                            cg.set(resources, self.warn)
                self._handshake(ch, st, pid_a, config)
            st.status = "created"
            st.creator = None
            self.sd.write(st)
            if pid_file:
                tmp = f"{pid_file}.tmp"
                Path(tmp).write_text(str(st.pid))
                os.replace(tmp, pid_file)
        except BaseException:
            self._destroy(st, extra=[pid_a] if pid_a else [])
            raise
        return st

    def _handshake(self, ch: hs.Channel, st: State, pid_a: int,
                   config: Config) -> None:
        """The runtime's side of handshake.py's `create` diagram. Each wait watches the process
        whose message is due (stage A until Pid, then the init), so a dead one ends it."""
        linux = config.linux
        watched = hs.watch(pid_a)
        try:
            self._send(ch, hs.Ok(), st)
            while True:
                try:
                    msg = ch.recv(watch=watched, check=lambda: self._check_not_stuck(st))
                except hs.PeerGone:
                    raise self._init_died(st) from None
                if isinstance(msg, hs.UserNs):
                    try:
                        rootless.write_id_maps(pid_a, linux.get("uidMappings") or [],
                                               linux.get("gidMappings") or [])
                    except (ContainerError, OSError) as e:
                        self._send(ch, hs.Error(str(e)), st)
                        raise
                elif isinstance(msg, hs.Pid):
                    st.pid = msg.pid
                    st.pid_start = proc_start_time(msg.pid)
                    self.sd.write(st)
                    os.close(watched)
                    watched = hs.watch(msg.pid)  # before A is reaped: B is A's or our child
                    os.waitpid(pid_a, 0)
                    if config.process.oom_score_adj is not None:
                        # From here (host root): the init is non-dumpable, and in a user
                        # namespace its own /proc/self files are not its to write.
                        try:
                            Path(f"/proc/{st.pid}/oom_score_adj").write_text(
                                str(config.process.oom_score_adj))
                        except PermissionError:
                            if not rootless.is_rootless():
                                raise
                            self.warn("process.oomScoreAdj ignored: lowering it needs root")
                elif isinstance(msg, hs.Hooks):
                    state = hook_state(st, "creating", st.pid)
                    try:
                        hooks.run_hooks(config.hooks_of("prestart"), state, cwd=st.bundle)
                        hooks.run_hooks(config.hooks_of("createRuntime"), state,
                                        cwd=st.bundle)
                    except ContainerError as e:
                        self._send(ch, hs.Error(str(e)), st)
                        raise
                elif isinstance(msg, hs.Ready):
                    return
                elif isinstance(msg, hs.Error):
                    raise ContainerError(msg.msg or "container init failed")
                else:
                    raise ContainerError(f"unexpected handshake message {msg}")
                self._send(ch, hs.Ok(), st)
        finally:
            os.close(watched)

    def _send(self, ch: hs.Channel, msg: hs.Message, st: State) -> None:
        try:
            ch.send(msg)
        except hs.PeerGone:
            raise self._init_died(st) from None

    @staticmethod
    def _check_not_stuck(st: State, who: str = "container init") -> None:
        """A live process that can never answer: at its memory limit with the OOM killer off."""
        cg = cgroups.Cgroup.from_state(st.cgroup)
        if cg and cg.stuck_at_limit():
            raise ContainerError(f"{who} is stuck at its memory limit (the OOM killer is "
                                 "disabled: memory limit too low?)")

    @staticmethod
    def _init_died(st: State) -> ContainerError:
        cg = cgroups.Cgroup.from_state(st.cgroup)
        if cg and cg.oom_kills():
            return ContainerError("container init was OOM-killed (memory limit too low?)")
        if cg and cg.limit_hits():  # e.g. an allocation refused with the OOM killer disabled
            return ContainerError("container init exited before it was ready, at its memory "
                                  "limit (memory limit too low?)")
        return ContainerError("container init exited before it was ready")

    def _kill_everything(self, st: State,
                         extra: list[int] | tuple[int, ...] = ()) -> list[tuple[int, int | None]]:
        """SIGKILL the init (if it is still the same process), `extra` and the whole cgroup."""
        victims: list[tuple[int, int | None]] = []
        for p in [*extra, st.pid]:
            if not p:
                continue
            start = proc_start_time(p)
            if p == st.pid and start != st.pid_start:
                start = None  # a different process reusing the pid: not ours
            if start is not None:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            victims.append((p, start))
        cg = cgroups.Cgroup.from_state(st.cgroup)
        if cg:
            cg.kill_all(signal.SIGKILL)
            if cg.frozen():
                cg.freeze(False)  # frozen tasks die only once thawed
        return victims

    def _destroy(self, st: State, extra: list[int] | tuple[int, ...] = ()) -> None:
        """Undo create: no process, cgroup or state directory is left."""
        for p, start in self._kill_everything(st, extra):
            _wait_gone(p, start)
        cg = cgroups.Cgroup.from_state(st.cgroup)
        if cg:
            deadline = time.monotonic() + 5
            while cg.procs() and time.monotonic() < deadline:
                cg.kill_all(signal.SIGKILL)
                time.sleep(0.01)
            try:
                cg.remove()
            except OSError as e:
                self.warn(f"could not remove cgroup {e.filename}: {e.strerror}")
        self.sd.remove(st.id)

    # -- start ------------------------------------------------------------------------------
    def start(self, cid: str) -> None:
        st = self.sd.read(cid)
        status = self.sd.status(st)
        if status != "created":
            raise ContainerError({
                "running": "cannot start an already running container",
                "stopped": "cannot start a container that has stopped",
            }.get(status, f"cannot start a container in the {status} state"))
        try:
            fd = os.open(self.sd.fifo(cid), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ContainerError("cannot start an already running container") from None
        try:
            data = self._await_exec(fd, st)
        finally:
            os.close(fd)
            # Only now: the init may not have reached its open() of the fifo before.
            self.sd.fifo(cid).unlink(missing_ok=True)
        if not data:
            raise ContainerError("cannot start a container that has stopped")
        if data != b"0":
            self._kill_everything(st)
            raise ContainerError(data[1:].decode(errors="replace").removeprefix("error: "))
        state = hook_state(st, "running", st.pid)
        try:
            hooks.run_hooks(st.config.hooks_of("poststart"), state, cwd=st.bundle)
        except ContainerError:
            for p, start in self._kill_everything(st):
                _wait_gone(p, start)
            raise

    def _await_exec(self, fd: int, st: State) -> bytes:
        """Read the fifo until EOF: b"0" then EOF = exec happened; b"0error: ..." = it failed."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        data = b""
        while True:
            if poller.poll(100):
                chunk = os.read(fd, 4096)
                if chunk:
                    data += chunk
                    continue
                if data:
                    return data
            if proc_start_time(st.pid) != st.pid_start:
                # init gone: collect anything it wrote before dying
                try:
                    data += os.read(fd, 4096)
                except BlockingIOError:
                    pass
                return data
            if not data:
                time.sleep(0.005)

    # -- state / kill / delete / list -------------------------------------------------------
    def state(self, cid: str) -> dict[str, Any]:
        return self.sd.public(self.sd.read(cid))

    def list(self) -> builtins.list[dict[str, Any]]:
        out = []
        for cid in self.sd.ids():
            try:
                out.append(self.state(cid))
            except ContainerError:
                continue
        return out

    def pids(self, cid: str) -> builtins.list[int]:
        """Host pids in the container (its cgroup; without one, just the init)."""
        st = self.sd.read(cid)
        if self.sd.status(st) not in ("created", "running", "paused"):
            return []
        cg = cgroups.Cgroup.from_state(st.cgroup)
        return cg.procs() if cg else [st.pid]

    def kill(self, cid: str, sig: str = "TERM", all_: bool = False) -> None:
        signum = parse_signal(sig)
        st = self.sd.read(cid)
        status = self.sd.status(st)
        if status not in ("created", "running", "paused"):
            if all_ and status == "stopped":
                return  # as runc: nothing left to signal
            raise ContainerError("container not running")
        cg = cgroups.Cgroup.from_state(st.cgroup)
        if all_ and cg:
            paused = cg.frozen()
            freeze = cg.can_freeze()
            if freeze and not paused and signum == signal.SIGKILL:
                cg.freeze(True)  # as runc: no fork escapes between listing and killing
            cg.kill_all(signum)
            if freeze and (signum == signal.SIGKILL or not paused):
                cg.freeze(False)
        else:
            try:
                os.kill(st.pid, signum)
            except ProcessLookupError:
                raise ContainerError("container not running") from None

    def delete(self, cid: str, force: bool = False) -> None:
        try:
            st = self.sd.read(cid)
        except ContainerError:
            if force:
                return
            raise
        status = self.sd.status(st)
        if status != "stopped" and not force:
            raise ContainerError(f"cannot delete container {cid} that is not stopped: {status}")
        self._destroy(st)
        state = hook_state(st, "stopped", None)
        hooks.run_poststop(st.config.hooks_of("poststop"), state, self.warn)

    # -- exec -------------------------------------------------------------------------------
    def exec(self, cid: str, process_json: dict[str, Any], detach: bool = False,
             pid_file: str | None = None, console_socket: str | None = None,
             ignore_paused: bool = False, preserve_fds: int = 0) -> int:
        """Run PROCESS_JSON (an OCI process, validated here) in the running container; with
        DETACH return once it has exec'd."""
        st = self.sd.read(cid)
        status = self.sd.status(st)
        if status == "paused" and not ignore_paused:
            raise ContainerError("cannot exec in a paused container (use --ignore-paused to "
                                 "override)")
        if status not in ("created", "running", "paused"):
            raise ContainerError("cannot exec in a stopped container")
        process = Process.from_json(process_json)
        terminal = process.terminal
        if terminal and console_socket is None and detach:
            raise ContainerError("cannot allocate tty if runc will detach without setting "
                                 "console socket")
        if not terminal and console_socket is not None:
            raise ContainerError("cannot use console socket if runc will not detach or "
                                 "allocate tty")
        config = st.config
        ours = None
        csock: socket.socket | None
        if terminal and console_socket is None:
            ours, csock = console.socketpair_for_relay()
        else:
            csock = console.connect(console_socket) if console_socket else None
        ns_fds: dict[str, int] = {}
        try:
            for t in config.namespaces:
                if t == "user" and os.readlink(f"/proc/{st.pid}/ns/user") == \
                        os.readlink("/proc/self/ns/user"):
                    continue  # setns into one's own user namespace is EINVAL
                ns_fds[t] = os.open(f"/proc/{st.pid}/ns/{spec.NAMESPACE_PROC[t]}",
                                    os.O_RDONLY | os.O_CLOEXEC)
            if proc_start_time(st.pid) != st.pid_start:
                raise ContainerError("cannot exec in a stopped container")
            if not detach:
                sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # B re-parents to us: we wait for it
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid_a = os.fork()
            if pid_a == 0:
                parent.close()
                exec_init.stage_a(hs.Channel(child), ns_fds, config, process, csock,
                                  preserve_fds)
        finally:
            for fd in ns_fds.values():
                os.close(fd)
            if csock is not None:
                csock.close()
        child.close()
        pids = [pid_a]  # and B's, once known
        try:
            with parent:
                ch = hs.Channel(parent)
                cg = cgroups.Cgroup.from_state(st.cgroup)
                if cg:
                    cg.add(pid_a)
                self._exec_handshake(ch, pids, st)
                pid_b = pids[1]
        except BaseException:
            for p in pids:
                if p:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    _wait_gone(p, None, timeout=2)
            if ours is not None:
                ours.close()
            raise
        if pid_file:
            tmp = f"{pid_file}.tmp"
            Path(tmp).write_text(str(pid_b))
            os.replace(tmp, pid_file)
        if detach:
            return 0
        if ours is not None:
            with ours:
                master = console.receive_master(ours)
            return console.relay(master, pid_b)
        old = {s: signal.getsignal(s) for s in FORWARDED_SIGNALS}

        def forward(signum: int, _frame: Any) -> None:
            try:
                os.kill(pid_b, signum)
            except ProcessLookupError:
                pass
        try:
            for s in FORWARDED_SIGNALS:
                signal.signal(s, forward)
            return self._wait_exit(pid_b)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _exec_handshake(self, ch: hs.Channel, pids: builtins.list[int], st: State) -> None:
        """The runtime's side of handshake.py's `exec` diagram. PIDS: [A]; B is appended once
        known, and on return B has exec'd."""
        watched = hs.watch(pids[0])

        def check() -> None:
            self._check_not_stuck(st, "exec process")
        try:
            ch.send(hs.Ok())
            while True:
                msg = ch.recv(watch=watched, check=check)
                if isinstance(msg, hs.Pid) and len(pids) == 1:
                    pids.append(msg.pid)
                    os.close(watched)
                    watched = hs.watch(msg.pid)
                    os.waitpid(pids[0], 0)
                elif isinstance(msg, hs.Exec) and len(pids) == 2:
                    try:  # EOF once execve has closed B's end (close-on-exec)
                        msg = ch.recv(watch=watched, check=check)
                    except hs.PeerGone:
                        return
                if isinstance(msg, hs.Error):
                    raise ContainerError("unable to start container process: "
                                         + (msg.msg or "failed"))
                if not isinstance(msg, hs.Pid | hs.Exec):
                    raise ContainerError(f"unexpected handshake message {msg}")
        except hs.PeerGone:
            raise ContainerError("exec process exited before it started") from None
        finally:
            os.close(watched)

    # -- cgroup operations -----------------------------------------------------------------
    def _live_cgroup(self, cid: str) -> tuple[State, cgroups.Cgroup]:
        st = self.sd.read(cid)
        status = self.sd.status(st)
        if status not in ("created", "running", "paused"):
            raise ContainerError("container not running")
        cg = cgroups.Cgroup.from_state(st.cgroup)
        if cg is None:
            raise ContainerError("container has no cgroup (rootless without delegation)")
        return st, cg

    def update(self, cid: str, resources: dict[str, Any]) -> None:
        """Write new limits into a running container's cgroup and remember them (runc merges
        the given fields into the container's config)."""
        spec._validate_resources(resources)
        st, cg = self._live_cgroup(cid)
        cg.set(resources, self.warn)
        linux = st.config.raw.setdefault("linux", {})
        merged = linux.setdefault("resources", {})
        for key, value in resources.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
        st.config = Config.parse(st.config.raw)
        self.sd.write(st)

    def pause(self, cid: str) -> None:
        st, cg = self._live_cgroup(cid)
        if self.sd.status(st) != "running":
            raise ContainerError("container not running")
        cg.freeze(True)

    def resume(self, cid: str) -> None:
        st, cg = self._live_cgroup(cid)
        if self.sd.status(st) != "paused":
            raise ContainerError("container not paused")
        cg.freeze(False)

    def stats(self, cid: str) -> dict[str, Any]:
        _, cg = self._live_cgroup(cid)
        return {"type": "stats", "id": cid, "data": cgroups.stats(cg)}

    # -- run --------------------------------------------------------------------------------
    def run(self, cid: str, bundle: str, pid_file: str | None = None,
            detach: bool = False, console_socket: str | None = None,
            preserve_fds: int = 0) -> int:
        """create + start; in the foreground also wait, forward signals, and delete. A terminal
        without --console-socket in the foreground: we take the master and relay our stdio."""
        ours = None
        if not detach and console_socket is None and _wants_terminal(bundle):
            ours, theirs = console.socketpair_for_relay()
            st = self.create(cid, bundle, pid_file, theirs, preserve_fds)
        else:
            st = self.create(cid, bundle, pid_file, console_socket, preserve_fds)
        pid = st.pid
        if detach:
            self.start(cid)
            return 0
        old = {s: signal.getsignal(s) for s in FORWARDED_SIGNALS}

        def forward(signum: int, _frame: Any) -> None:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

        try:
            for s in FORWARDED_SIGNALS:
                signal.signal(s, forward)
            if ours is not None:
                with ours:
                    master = console.receive_master(ours)
                self.start(cid)
                return console.relay(master, pid)
            self.start(cid)
            return self._wait_exit(pid)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            try:
                self.delete(cid, force=True)
            except ContainerError as e:
                self.warn(str(e))

    @staticmethod
    def _wait_exit(pid: int) -> int:
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)
