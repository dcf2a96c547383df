"""The README's demo command: it must run start to finish and leave nothing behind."""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile

import pytest

from tests.mounting import PYUNION
from unionfs import mountinfo


def _mounts() -> str:
    return "\n".join(f"{m.source} {m.mountpoint} {m.root}" for m in mountinfo.mounts())


@pytest.mark.root   # the container half of the demo
def test_demo_runs_and_cleans_up():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "pyunion-demo-*")))
    r = subprocess.run([*PYUNION, "demo"], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # the union part: whiteout and copy-up shown in the upper
    assert "bin/.wh.tool" in out
    assert "welcome to the updated image | edited in the conta" in out
    # the container part: layer 2 wins, the commit keeps the change, the base image does not
    assert "hello from layer 2" in out
    assert "committed demo:changed" in out
    assert "made in the container" in out
    assert "/new: not in demo:base" in out
    changed = out.split("--rm demo:changed")[1].split("$ pyunion")[0]
    assert "remove-me" not in changed
    assert "pyunion-demo-" not in _mounts()
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "pyunion-demo-*")))
    assert after == before
