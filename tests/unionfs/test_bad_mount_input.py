"""Issue 14, the union mount: a refused mount changes nothing (no work directory in a lower or
the upper), bad option values and id maps are refused at mount time, in one line, exit 2 for a
bad command line and 1 for a refused operation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.badinput import refused
from tests.mounting import mounted, pyunion


@pytest.fixture
def layers(oracle_base: Path) -> Path:
    for d in ("u", "l", "l2", "mnt"):
        (oracle_base / d).mkdir()
    (oracle_base / "l" / "f").write_text("lower\n")
    (oracle_base / "l2" / "g").write_text("lower2\n")
    return oracle_base


def _watch(s: Path) -> list[Path]:
    return [s]


# -- case 1: a refused mount writes into a lower ---------------------------------------------

@pytest.mark.parametrize("workdir, reason", [
    ("l/w", "inside lower directory"),
    ("l/inner/deep/er", "inside lower directory"),
    ("u/w", "overlap"),
    ("mnt/w", "overlaps layer directory"),
])
def test_refused_workdir_creates_nothing(layers: Path, workdir: str, reason: str) -> None:
    s = layers
    refused(["mount", "-o", f"workdir={s / workdir}", f"{s / 'u'}:{s / 'l'}", str(s / "mnt")],
            1, watch=_watch(s), contains=reason)


def test_refused_mount_after_workdir_check_creates_nothing(layers: Path) -> None:
    """The default work directory is not made when a later check refuses the mount."""
    s = layers
    refused(["mount", f"{s / 'u'}:{s / 'l'}", str(s / "l" / "f")], 1, watch=_watch(s),
            contains="not a directory")
    refused(["mount", f"{s / 'u'}:{s / 'l'}", str(s / "l")], 1, watch=_watch(s),
            contains="overlaps layer directory")
    assert not (s / ".u.pyunion-work").exists()


# -- case 8: -o log= naming a directory or a file in a missing directory ----------------------

@pytest.mark.parametrize("log, reason", [
    ("mnt", "is a directory"),
    ("missing/dir/log", "does not exist"),
])
def test_bad_log_file_is_one_line(layers: Path, log: str, reason: str) -> None:
    s = layers
    refused(["mount", "-o", f"log={s / log}", f"{s / 'u'}:{s / 'l'}", str(s / "mnt")], 1,
            watch=_watch(s), contains=reason)


def test_log_file_the_daemon_cannot_open_is_one_line(layers: Path) -> None:
    """Refused after the fork too: the daemon reports it on the ready pipe, not a traceback."""
    s = layers
    (s / "ro").mkdir()
    (s / "ro" / "log").symlink_to(s / "nowhere" / "log")   # dangling: its directory is missing
    (s / "w").mkdir()
    refused(["mount", "-o", f"workdir={s / 'w'},log={s / 'ro' / 'log'}", f"{s / 'u'}:{s / 'l'}",
             str(s / "mnt")], 1, watch=_watch(s), contains="cannot open log file")


# -- case 9: id maps, timeouts, option values -------------------------------------------------

@pytest.mark.parametrize("opt", [
    "uidmapping=0:-1:5", "uidmapping=0:4294967295:10", "gidmapping=4294967290:0:10",
    "uidmapping=0:1000:0",
    "uidmapping=a:b:c", "timeout=-5", "timeout=nan", "timeout=inf", "timeout=", "workdir",
    "lowerdir", "fsync=maybe", "xattr_permissions=7", "debug=1", "volatile=yes", "log=",
    "max_read=lots", "ro=1",
])
def test_bad_option_value_is_a_usage_error(layers: Path, opt: str) -> None:
    s = layers
    refused(["mount", "-o", opt, f"{s / 'u'}:{s / 'l'}", str(s / "mnt")], 2, watch=_watch(s))


@pytest.mark.parametrize("opt", ["uidmapping=:0:100000:65536", "gidmapping=0:1000:1:1:100000:65536",
                                 "uidmapping=1004:1004:1:0:1004:1:1:231072:65536",  # first wins
                                 "timeout=0", "timeout=2.5", "fsync=0", "fsync=1",
                                 "xattr_permissions=2"])
def test_good_option_values_still_mount(layers: Path, opt: str) -> None:
    s = layers
    with mounted(s / "u", [s / "l"], s / "mnt", [opt]) as m:
        assert os.listdir(m) == ["f"]


# -- case 12: the smaller ones ----------------------------------------------------------------

def test_empty_target_is_a_usage_error(layers: Path) -> None:
    s = layers
    line = refused(["mount", f"{s / 'u'}:{s / 'l'}", ""], 2, watch=_watch(s), cwd=s / "mnt")
    assert "empty" in line and "overlaps" not in line


def test_same_lower_twice_is_refused(layers: Path) -> None:
    """overlayfs: 'conflicting lowerdir'."""
    s = layers
    refused(["mount", f"{s / 'u'}:{s / 'l'}:{s / 'l'}", str(s / "mnt")], 1, watch=_watch(s),
            contains="twice")
    refused(["mount", f"{s / 'u'}:{s / 'l'}:{s / 'l2'}:{s / 'l'}/", str(s / "mnt")], 1,
            watch=_watch(s), contains="twice")


def test_tilde_in_layer_spec_as_the_readme_writes_it(layers: Path) -> None:
    """`pyunion mount ~/upper:~/image-layer ~/merged`: the shell expands only the first `~`."""
    s = layers
    env = {**os.environ, "HOME": str(s)}
    r = subprocess.run(["sh", "-c", f"{' '.join(pyunion_cmd())} mount ~/u:~/l ~/mnt"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    try:
        assert r.returncode == 0, r.stderr
        assert (s / "mnt" / "f").read_text() == "lower\n"
    finally:
        pyunion("umount", str(s / "mnt"), check=False)
    assert not (s / "~").exists()


def pyunion_cmd() -> list[str]:
    import shlex
    import sys
    return [shlex.quote(sys.executable), "-m", "unionfs"]
