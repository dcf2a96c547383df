"""unionfs/exits.py: the one error boundary of every `pyunion` command (issue 13): usage error 2,
expected failure 1 (`run`: 125), interrupted 130, a reader that went away 141 and quiet, anything
else one line and the failure status; then a sweep that every subcommand's main goes through it."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pyunion import cli
from snapshotter.errors import NotFound, SnapshotterError
from unionfs import exits
from unionfs.exits import Boundary, UsageError

REPO = Path(__file__).resolve().parents[1]


def _raise(e: BaseException):
    def body(*_a, **_k):
        raise e
    return body


def _line(capsys) -> str:
    _out, err = capsys.readouterr()
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


B = Boundary("prog", failures=(SnapshotterError, OSError), usage_label="usage: ",
             usage_hint=" (see --help)", failure_label="error: ")


def test_the_body_s_status_is_the_command_s(capsys):
    assert B.run(lambda: 0) == 0
    assert B.run(lambda: 7) == 7
    assert capsys.readouterr().err == ""


def test_usage_error_is_2_with_label_and_hint(capsys):
    assert B.run(_raise(UsageError("bad flag --x"))) == exits.USAGE == 2
    assert _line(capsys) == "prog: usage: bad flag --x (see --help)"


def test_expected_failure_is_1_with_the_reason(capsys):
    assert B.run(_raise(NotFound("no such\nthing"))) == 1
    assert _line(capsys) == "prog: error: no such\\nthing"      # one line whatever it holds
    e = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/x/y")
    assert B.run(_raise(e)) == 1
    assert _line(capsys) == "prog: error: No such file or directory: /x/y"   # no [Errno 2]


def test_a_command_may_fail_with_its_own_status(capsys):
    run = Boundary("pyunion run", failures=(SnapshotterError,), failure_status=125)
    assert run.run(_raise(SnapshotterError("image 'x' not found"))) == 125
    assert _line(capsys) == "pyunion run: image 'x' not found"
    assert run.run(_raise(ZeroDivisionError("division by zero"))) == 125   # unexpected too
    assert _line(capsys).startswith("pyunion run: internal error: ZeroDivisionError")


def test_unexpected_error_is_one_line_and_1_without_a_traceback(capsys, monkeypatch):
    monkeypatch.delenv(exits.DEBUG_ENV, raising=False)
    assert B.run(_raise(KeyError("k"))) == 1
    assert _line(capsys) == ("prog: internal error: KeyError: 'k' (PYUNION_DEBUG=1 shows the"
                             " traceback)")


def test_debug_env_adds_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv(exits.DEBUG_ENV, "1")
    assert B.run(_raise(KeyError("k"))) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "KeyError: 'k'" in err
    assert err.splitlines()[-1] == "prog: internal error: KeyError: 'k'"


def test_interrupt_is_130(capsys):
    assert B.run(_raise(KeyboardInterrupt())) == exits.INTERRUPTED == 130
    assert _line(capsys) == "prog: interrupted"


def test_system_exit_passes_through():
    with pytest.raises(SystemExit):
        B.run(_raise(SystemExit(0)))


def test_a_broken_pipe_that_is_not_stdout_is_a_failure(capsys):
    """EPIPE from a socket to a dead daemon is a failure to report, not a reader gone away."""
    e = BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
    assert B.run(_raise(e)) == 1
    assert _line(capsys) == "prog: error: Broken pipe"


def _closed_reader(args: list[str]) -> subprocess.CompletedProcess:
    """Run `pyunion ARGS` with stdout a pipe whose reader has already gone (`... | head -0`)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "pyunion", *args], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO,
                              check=False)
    finally:
        os.close(w)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from snapshotter.snapshots import Snapshotter
    root = tmp_path_factory.mktemp("exits") / "root"
    with Snapshotter(root) as sn:
        for i in range(3):
            sn.prepare(f"k{i}")
    return root


@pytest.mark.parametrize("args", [["snapshot", "ls"], ["image", "ls"], ["--help"]])
def test_a_reader_that_went_away_is_quiet(store: Path, args: list[str]):
    """`pyunion snapshot ls | head -0`: no 'Exception ignored ... BrokenPipeError' (the old
    exit 120 and two lines of Python's), but 141 as a program SIGPIPE ended."""
    r = _closed_reader([*args, "--root", str(store)] if args[0] != "--help" else args)
    assert (r.returncode, r.stderr) == (exits.BROKEN_PIPE, "")


# -- the sweep: every subcommand's main runs in a boundary --------------------------------------

def _sweep(tmp: Path) -> dict[str, tuple[list[str], str, str, int]]:
    """name -> (argv after `pyunion`, what to make raise, the line's prefix, failure status).
    The patched function is one the subcommand calls after its arguments parsed."""
    r = ["--root", str(tmp / "root")]
    t = str(tmp)
    return {
        "image": (["image", "ls", *r], "snapshotter.image_cli.run", "pyunion image: ", 1),
        "snapshot": (["snapshot", "ls", *r], "snapshotter.snapshot_cli.run",
                     "pyunion snapshot: ", 1),
        "snapshotter": (["snapshotter", "serve", "--address", f"{t}/s.sock", *r],
                        "snapshotter.grpc_server.serve_forever", "pyunion snapshotter: ", 1),
        "run": (["run", *r, "img"], "snapshotter.run.run", "pyunion run: ", 125),
        "rm": (["rm", *r, "c1"], "snapshotter.run.remove_container", "pyunion rm: ", 1),
        "mount": (["mount", f"{t}/u:{t}/l", f"{t}/m"], "unionfs.mount_cli.mount", "pyunion: ", 1),
        "umount": (["umount", f"{t}/m"], "unionfs.mount_cli.unmount", "pyunion: ", 1),
        "compat": (["-o", f"lowerdir={t}/l", f"{t}/m"], "unionfs.mount_cli.mount", "pyunion: ",
                   1),
        "demo": (["demo"], "unionfs.demo.main", "pyunion: ", 1),
    }


SWEEP = list(_sweep(Path("/x")))
EXPECTED = {"image", "snapshot", "snapshotter", "run", "rm"}   # SnapshotterError is theirs


def _patch(monkeypatch, target: str, e: BaseException) -> None:
    import importlib
    mod, _, name = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(mod), name, _raise(e))


@pytest.mark.parametrize("case", SWEEP)
def test_every_subcommand_s_unexpected_error_is_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(exits.DEBUG_ENV, raising=False)
    argv, target, prefix, status = _sweep(tmp_path)[case]
    _patch(monkeypatch, target, RuntimeError("a bug\nof ours"))
    assert cli.main(argv) == status
    assert _line(capsys) == (f"{prefix}internal error: RuntimeError: a bug\\nof ours"
                             " (PYUNION_DEBUG=1 shows the traceback)")


@pytest.mark.parametrize("case", SWEEP)
def test_every_subcommand_interrupted_is_130(case, tmp_path, capsys, monkeypatch):
    argv, target, prefix, _ = _sweep(tmp_path)[case]
    _patch(monkeypatch, target, KeyboardInterrupt())
    assert cli.main(argv) == 130
    assert _line(capsys) == f"{prefix}interrupted"


@pytest.mark.parametrize("case", sorted(EXPECTED))
@pytest.mark.parametrize("error", ["store", "database", "os"])
def test_every_snapshotter_subcommand_s_runtime_failure_is_one_line(case, error, tmp_path,
                                                                     capsys, monkeypatch):
    """The store's refusal, a broken metadata database and a file system error: each the
    command's failure status (1; `run` 125) and one line naming the reason, for every command."""
    argv, target, prefix, status = _sweep(tmp_path)[case]
    e, reason = {
        "store": (NotFound("snapshot 'k' does not exist"), "snapshot 'k' does not exist"),
        "database": (sqlite3.DatabaseError("file is not a database"),
                     "metadata database: file is not a database"),
        "os": (PermissionError(errno.EACCES, "Permission denied", "/r"), "Permission denied: /r"),
    }[error]
    _patch(monkeypatch, target, e)
    assert cli.main(argv) == status
    line = _line(capsys)
    assert line.startswith(prefix) and line.endswith(reason), line
    assert "internal error" not in line


def test_the_sweep_names_every_subcommand_of_the_router():
    """A new subcommand of pyunion/cli.py joins the sweep (`runtime` keeps runc's error log,
    its own boundary; `unmount` is `umount`)."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(cli.route))
    routed = {c.value for n in ast.walk(tree) if isinstance(n, ast.Compare)
              and isinstance(n.left, ast.Name) and n.left.id == "cmd"
              for c in ast.walk(n.comparators[0]) if isinstance(c, ast.Constant)}
    assert routed - {"runtime", "unmount", "--version", "-V"} == set(SWEEP) - {"compat"}
