"""The suite's one rule for what a machine must offer: a test marked `root` needs euid 0, a test
marked `fuse` needs /dev/fuse and fusermount3. CI (`.ci/run`) runs as root on a machine set up
by scripts/setup.sh, so nothing is skipped there; elsewhere each skip says which rule."""

from __future__ import annotations

import os
import shutil

import pytest


def _missing(item: pytest.Item) -> str | None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        return "needs root (CI runs as root)"
    if item.get_closest_marker("fuse") and (not os.path.exists("/dev/fuse")
                                            or shutil.which("fusermount3") is None):
        return "needs FUSE (/dev/fuse and fusermount3: scripts/setup.sh)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    why = _missing(item)
    if why:
        pytest.skip(why)
