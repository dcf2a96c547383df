"""Issue 14, case 11: an ordinary user's refused mount shows fusermount3's own reason (libfuse
alone says only "fuse_session_mount failed"), in one line, and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.badinput import Watch, one_line
from tests.rootless import skip_reason, unprivileged_user

REASON = skip_reason() if os.geteuid() == 0 else "creates a user: needs root"


@pytest.fixture(scope="module")
def user():
    if REASON:
        pytest.skip(REASON)
    with unprivileged_user("pyu14") as u:
        yield u


def _fuse_conf_allows_other() -> bool:
    try:
        return any(line.strip() == "user_allow_other"
                   for line in Path("/etc/fuse.conf").read_text().splitlines())
    except OSError:
        return False


def _layers(user, name: str) -> Path:
    base = user.home / name
    user.run(["mkdir", "-p", str(base / "u"), str(base / "l"), str(base / "m")])
    return base


def test_allow_other_refused_with_fusermount3s_reason(user):
    if _fuse_conf_allows_other():
        pytest.skip("/etc/fuse.conf allows user_allow_other here")
    b = _layers(user, "ao")
    w = Watch([b])
    r = user.pyunion("mount", "-o", "allow_other", f"{b / 'u'}:{b / 'l'}", str(b / "m"),
                     check=False)
    line = one_line(r)
    assert r.returncode == 1
    assert "user_allow_other" in line and "fuse_session_mount failed" not in line, line
    w.assert_unchanged()


def test_target_the_user_does_not_own_refused_with_fusermount3s_reason(user, tmp_path):
    b = _layers(user, "own")
    target = user.home / "roots-dir"
    target.mkdir(mode=0o755)          # root's, inside the user's home
    w = Watch([b, target])
    r = user.pyunion("mount", f"{b / 'u'}:{b / 'l'}", str(target), check=False)
    line = one_line(r)
    assert r.returncode == 1
    assert "fuse_session_mount failed" not in line and "no write access" in line, line
    w.assert_unchanged()


@pytest.mark.parametrize("xdg", [True, False])
def test_user_pid_record_is_where_the_docs_say(user, xdg):
    """docs/union.md: `$XDG_RUNTIME_DIR/pyunion/mounts/`, else `/tmp/pyunion-UID/pyunion/mounts/`."""
    readme = (Path(__file__).resolve().parents[2] / "docs" / "union.md").read_text()
    b = _layers(user, f"rec{int(xdg)}")
    runtime = user.home / "xdg-runtime"
    user.run(["mkdir", "-p", "-m", "700", str(runtime)])
    env = user.env(XDG_RUNTIME_DIR=str(runtime)) if xdg else user.env()
    where = (runtime if xdg else Path(f"/tmp/pyunion-{user.uid}")) / "pyunion" / "mounts"
    said = "`$XDG_RUNTIME_DIR/pyunion/mounts/`" if xdg else "`/tmp/pyunion-UID/pyunion/mounts/`"
    assert said in readme
    user.pyunion("mount", f"{b / 'u'}:{b / 'l'}", str(b / "m"), env=env)
    try:
        records = list(where.glob("*.json"))
        assert any(str(b / "m") in p.read_text() for p in records), (where, records)
    finally:
        user.pyunion("umount", str(b / "m"), env=env, check=False)
