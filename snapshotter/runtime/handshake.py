"""The runtime <-> init handshake: its messages, their encoding, and a channel that cannot hang.

`create` (init.py)::

    runtime                          stage A                        stage B (container pid 1)
    fork A, put A in the cgroup
    Ok  ───────────────────────────▶ unshare the user ns (if new)
        ◀─────────────────────────── UserNs
    write the id maps; Ok ─────────▶ join/unshare the rest; fork B ─▶ (waits for Ok)
        ◀─────────────────────────── Pid(B); exit
    waitpid(A), oomScoreAdj; Ok ───────────────────────────────────▶ mounts, devices
        ◀─────────────────────────────────────────────────────────── Hooks
    prestart + createRuntime; Ok ──────────────────────────────────▶ createContainer, pivot, user
        ◀─────────────────────────────────────────────────────────── Ready; close the socket

`exec` (exec_init.py): Ok ▶ A joins the namespaces, forks B ◀ Pid(B); B sets the process up
◀ Exec, then execve; the socket is close-on-exec, so EOF after Exec means the exec happened.

Either side may send Error(msg) instead of its next message; the handshake ends there. Stage A
and B share one end of the socket pair, so the runtime cannot rely on EOF to learn that the
process it waits for has died (a live sibling keeps the end open: stage A OOM-killed after its
fork left B and the runtime both in recv). So the runtime waits on the socket *and* on a pidfd
of the process whose message is due (`Channel.recv(watch=...)`), and a send to a dead peer is
the same `PeerGone` as EOF.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass

from snapshotter.runtime.errors import ContainerError


@dataclass(frozen=True)
class Ok:
    """runtime -> init: go on with the next step."""


@dataclass(frozen=True)
class Error:
    """Either way: the step failed; MSG is one line for the user."""
    msg: str


@dataclass(frozen=True)
class UserNs:
    """stage A -> runtime: the new user namespace exists; write its id maps."""


@dataclass(frozen=True)
class Pid:
    """stage A -> runtime: stage B (the container's init, or the exec'd process) is PID."""
    pid: int


@dataclass(frozen=True)
class Hooks:
    """stage B -> runtime: the root is built; run prestart and createRuntime hooks."""


@dataclass(frozen=True)
class Ready:
    """stage B -> runtime: set up; next it waits on the exec fifo for `start`."""


@dataclass(frozen=True)
class Exec:
    """exec's stage B -> runtime: all set, execve next (EOF follows when it succeeds)."""


Message = Ok | Error | UserNs | Pid | Hooks | Ready | Exec
TAGS: dict[str, type[Message]] = {"ok": Ok, "error": Error, "userns": UserNs, "pid": Pid,
                                  "hooks": Hooks, "ready": Ready, "exec": Exec}
_TAG_OF = {cls: tag for tag, cls in TAGS.items()}


class PeerGone(ContainerError):
    """The other side closed its end or died before its next message."""


def encode(msg: Message) -> bytes:
    return json.dumps({"t": _TAG_OF[type(msg)], **dataclasses.asdict(msg)}).encode()


def decode(raw: bytes) -> Message:
    """bytes -> a message; anything else (unknown tag, missing or wrong fields) is an error."""
    try:
        obj = json.loads(raw)
        cls = TAGS[obj.pop("t")]
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        if set(obj) != set(fields):
            raise ValueError(sorted(obj))
        for name, value in obj.items():
            if type(value).__name__ != fields[name]:
                raise ValueError(name)
        return cls(**obj)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ContainerError(f"bad handshake message {raw[:80]!r}: {e}") from None


class Channel:
    """One end of the SOCK_SEQPACKET pair: one message per datagram."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, msg: Message) -> None:
        try:
            self.sock.send(encode(msg))
        except (BrokenPipeError, ConnectionResetError):
            raise PeerGone("the other side of the handshake went away") from None

    def recv(self, watch: int | None = None, check: Callable[[], None] | None = None,
             interval: float = 0.5) -> Message:
        """The next message. WATCH: a pidfd of the process that is to send it; once it has
        exited and nothing is queued, PeerGone (instead of waiting for an EOF that a process
        sharing its end may never give). CHECK (with WATCH): called after each INTERVAL
        seconds of silence; it raises to end a wait that cannot end otherwise."""
        if watch is not None:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            poller.register(watch, select.POLLIN)
            timeout = None if check is None else int(interval * 1000)
            while True:
                try:
                    ready = {fd for fd, _ in poller.poll(timeout)}
                except InterruptedError:
                    continue
                if not ready and check is not None:
                    check()
                    continue
                if self.sock.fileno() in ready:
                    break
                if watch in ready:
                    try:  # a message sent just before the exit still counts
                        return self._recv(socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        raise PeerGone("the process the handshake waited for exited") from None
        return self._recv(0)

    def _recv(self, flags: int) -> Message:
        try:
            raw = self.sock.recv(1 << 16, flags)
        except ConnectionResetError:
            raw = b""
        if not raw:
            raise PeerGone("the other side of the handshake went away")
        return decode(raw)

    def expect_ok(self) -> None:
        msg = self.recv()
        if isinstance(msg, Error):
            raise ContainerError(msg.msg or "aborted by the runtime")
        if not isinstance(msg, Ok):
            raise ContainerError(f"unexpected handshake message {msg}")


def watch(pid: int) -> int:
    """A descriptor for `Channel.recv(watch=...)` that turns readable when PID exits (a pidfd;
    for a process already reaped, a pipe with no writer, which is readable at once)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        r, w = os.pipe2(os.O_CLOEXEC)
        os.close(w)
        return r
