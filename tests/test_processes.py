"""tests/processes.py: the one way tests end a process they started."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.processes import stop


def test_a_process_that_exits_on_sigterm_is_not_killed():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop(p, 10) == -signal.SIGTERM


def test_a_process_ignoring_sigterm_is_killed_after_the_grace():
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    assert stop(p, 0.5) == -signal.SIGKILL
    p.stdout.close()


def test_an_exited_process_keeps_its_status():
    p = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    p.wait(30)
    assert stop(p, 1) == 3
