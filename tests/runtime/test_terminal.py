"""process.terminal with --console-socket, side by side with runc 1.1.5."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from tests.runtime.conftest import needs_busybox, needs_root, needs_runc
from tests.runtime.console_socket import ConsoleSocket, read_until_eof
from tests.runtime.test_failures import err, wait_status

pytestmark = [needs_root, needs_busybox, needs_runc]

SCRIPT = ("tty; test -t 0 && test -t 1 && echo stdio-tty; stat -c '%t:%T %a' /dev/console;"
          " stty size; ps -o pid,tty | head -2 | tail -1 | grep -q pts && echo; echo end")


def _terminal(c):
    c["process"]["terminal"] = True
    c["process"]["consoleSize"] = {"height": 33, "width": 101}


def test_console_socket_receives_the_master(runc, pyrt, bundles, tmp_path):
    out = {}
    for rt in (runc, pyrt):
        sock = ConsoleSocket(tmp_path / f"{rt.name}.sock")
        try:
            bundle = bundles.make(["sh", "-c", SCRIPT], _terminal)
            res = rt("create", "--bundle", str(bundle), "--console-socket", str(sock.path),
                     f"tt-{rt.name}")
            assert res.returncode == 0, res.stderr
            master, name = sock.receive()
        finally:
            sock.close()
        try:
            assert name.startswith("/dev/pt"), name
            assert rt("start", f"tt-{rt.name}").returncode == 0
            out[rt.name] = read_until_eof(master)
        finally:
            os.close(master)
        wait_status(rt, f"tt-{rt.name}", "stopped")
        assert rt("delete", f"tt-{rt.name}").returncode == 0
    assert out["pyunion"] == out["runc"]
    lines = out["pyunion"].splitlines()
    assert lines[:4] == ["/dev/pts/0", "stdio-tty", "88:0 620", "33 101"]


def test_interactive_input_through_the_master(pyrt, bundles, tmp_path):
    sock = ConsoleSocket(tmp_path / "i.sock")
    try:
        bundle = bundles.make(["sh", "-c", "read x; echo got=$x"], _terminal)
        assert pyrt("create", "--bundle", str(bundle), "--console-socket", str(sock.path),
                    "ti").returncode == 0
        master, _ = sock.receive()
    finally:
        sock.close()
    try:
        assert pyrt("start", "ti").returncode == 0
        os.write(master, b"hello\n")
        assert "got=hello" in read_until_eof(master)
    finally:
        os.close(master)
    wait_status(pyrt, "ti", "stopped")
    assert pyrt("delete", "ti").returncode == 0


@pytest.mark.parametrize("terminal, flag, message", [
    (True, False, "cannot allocate tty if runc will detach without setting console socket"),
    (False, True, "cannot use console socket if runc will not detach or allocate tty"),
])
def test_terminal_and_socket_must_match(anyrt, bundles, tmp_path, terminal, flag, message):
    bundle = bundles.make(["true"], lambda c: c["process"].update(terminal=terminal))
    sock = ConsoleSocket(tmp_path / "m.sock")
    try:
        args = ["--console-socket", str(sock.path)] if flag else []
        res = anyrt("create", "--bundle", str(bundle), *args, "m")
    finally:
        sock.close()
    assert res.returncode == 1 and err(res).endswith(message)
    assert not (anyrt.root / "m").exists()


def test_foreground_run_relays_the_terminal(runc, pyrt, bundles, tmp_path):
    """`run` with process.terminal and no --console-socket, at a terminal (script(1) gives one):
    the runtime keeps the master and relays its own stdio through it, as `runc run` does."""
    out = {}
    for rt in (runc, pyrt):
        bundle = bundles.make(["sh", "-c", "read x; echo got=$x; tty; exit 4"], _terminal)
        cmd = shlex.join([*rt.argv, "--root", str(rt.root), "run", "--bundle", str(bundle),
                          f"fg-{rt.name}"])
        rt.ids.add(f"fg-{rt.name}")
        res = subprocess.run(["script", "-qec", cmd, "/dev/null"], input="hello\n",
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 4, (rt.name, res.stdout, res.stderr)
        out[rt.name] = res.stdout.replace("\r\n", "\n")
    assert out["pyunion"] == out["runc"]
    assert "got=hello\n/dev/pts/0\n" in out["pyunion"]
