"""process.terminal: a pty from the container's own devpts, its master handed to the client.

As runc does (and as conmon and containerd's shim expect, runtime-tools' command-line-interface):
the runtime connects to the unix socket given by --console-socket before the container runs;
the container's process opens /dev/ptmx *inside* the container (its devpts instance), makes the
slave its controlling terminal and stdio, bind-mounts it on /dev/console (init only), and sends
the master over the socket with SCM_RIGHTS (the message text is the pty's name). Without a
console socket, a foreground `run`/`exec` relays the master to its own stdio (`relay`).
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys
import termios
import tty

from snapshotter.runtime.errors import ContainerError

_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_TIOCGPTPEER = 0x5441


def connect(path: str) -> socket.socket:
    """The runtime's end of --console-socket (connected before the container runs)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise ContainerError(f"failed to connect to console socket {path}: {e.strerror}") \
            from None
    return sock


def open_pty() -> tuple[int, int, str]:
    """(master, slave, slave name) from /dev/ptmx of the current mount namespace and root."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    num = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
    # The peer of this master, not a path lookup someone could have swapped.
    slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    return master, slave, f"/dev/pts/{num}"


def set_size(fd: int, size: tuple[int, int] | None) -> None:
    """SIZE: (height, width); None or a zero leaves the kernel's default."""
    if size and size[0] and size[1]:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


def send_master(sock: socket.socket, master: int, name: str) -> None:
    socket.send_fds(sock, [name.encode()], [master])


def become_session_leader(slave: int, uid: int, gid: int) -> None:
    """setsid, the slave as controlling terminal and as fds 0, 1 and 2, owned by the user."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    os.fchown(slave, uid, gid)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def bind_console(slave_name: str) -> None:
    """/dev/console: the pty slave bind-mounted on an empty file (after pivot_root)."""
    from snapshotter.runtime import syscalls as sc
    fd = os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        sc.mount(slave_name, f"/proc/self/fd/{fd}", None, sc.MS_BIND)
    finally:
        os.close(fd)


def receive_master(sock: socket.socket) -> int:
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    if not fds:
        raise ContainerError("the container sent no pty master on the console socket")
    return fds[0]


def relay(master: int, pid: int) -> int:
    """Copy our stdin to the pty and the pty to our stdout until PID exits; its status."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    old = None
    if os.isatty(stdin):
        old = termios.tcgetattr(stdin)
        tty.setraw(stdin, termios.TCSANOW)  # TCSAFLUSH would drop typed-ahead input
        try:
            size = fcntl.ioctl(stdin, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
        except OSError:
            pass
    fds = [master, stdin]
    status = None
    try:
        while True:
            if status is None:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = st
            try:
                ready, _, _ = select.select(fds, [], [], 0.05)
            except InterruptedError:
                continue
            if not ready and status is not None:
                break
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd closed
                    data = b""
                if not data:
                    if status is None:
                        _, status = os.waitpid(pid, 0)
                    break
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if data:
                    os.write(master, data)
                else:
                    fds.remove(stdin)
    finally:
        if old is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, old)
        os.close(master)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def socketpair_for_relay() -> tuple[socket.socket, socket.socket]:
    """Our own console socket for a foreground terminal without --console-socket."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

