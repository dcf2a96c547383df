"""The union mount run by a real unprivileged user: foreign owners, copy-up, devices, chown.

The test user is created here (CI runs as root) with subordinate id ranges; /dev/fuse is made
0666 as usual distributions ship it. The user must reach this checkout's interpreter, so the
fixture grants search permission on its ancestors for the test and takes it back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from unionfs import mountinfo
from unionfs.ownership import OVERRIDE_XATTR, parse_override

pytestmark = [pytest.mark.root, pytest.mark.fuse]   # creates a user

USER = "pyunion-fs"
REPO = Path(__file__).resolve().parents[2]


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
    pw = pwd.getpwnam(USER)
    for f in ("/etc/subuid", "/etc/subgid"):
        text = Path(f).read_text() if Path(f).exists() else ""
        if not any(line.startswith(f"{USER}:") for line in text.splitlines()):
            with open(f, "a") as fh:
                fh.write(f"{USER}:300000:65536\n")
    return pw


@contextlib.contextmanager
def _searchable(paths: list[Path]):
    """o+x on every ancestor of `paths` for the duration, restored after."""
    changed: dict[Path, int] = {}
    for p in paths:
        for d in [p, *p.parents]:
            if d in changed or not d.exists() or not d.is_dir():
                continue
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH:
                changed[d] = mode
                os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for d, mode in changed.items():
            os.chmod(d, stat.S_IMODE(mode))


@contextlib.contextmanager
def _fuse_open_to_all():
    mode = os.stat("/dev/fuse").st_mode
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", stat.S_IMODE(mode))


@pytest.fixture
def rootless(tmp_path_factory):
    pw = _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="pyunion-rootless-"))
    os.chmod(base, 0o755)
    python = Path(sys.executable)
    with _searchable([REPO, python.parent, python.resolve().parent]), _fuse_open_to_all():
        yield pw, base
    for m in mountinfo.mounts():
        mnt = m.mountpoint
        if mnt.startswith(str(base)):
            subprocess.run(["umount", "-l", mnt], check=False)
    shutil.rmtree(base, ignore_errors=True)


def as_user(pw, script: str, userns: bool = False) -> subprocess.CompletedProcess:
    """Run a shell script as the test user (optionally as root of a user namespace that maps
    the user's subordinate ids, as rootless podman does)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": pw.pw_dir, "PYTHONPATH": str(REPO)}
    inner = ["sh", "-ec", script]
    if userns:
        inner = ["unshare", "--user", "--map-root-user", "--map-auto", "--mount", *inner]
    cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", *inner]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def layout(base: Path, owner: pwd.struct_passwd) -> tuple[Path, Path, Path, Path]:
    low, up, work, mnt = (base / n for n in ("low", "up", "work", "mnt"))
    low.mkdir()
    (low / "rootfile").write_text("root's")
    (low / "shared").write_text("shared")
    os.chown(low / "shared", 1234, 1234)
    os.chmod(low / "shared", 0o666)
    (low / "d").mkdir()
    os.chmod(low / "d", 0o777)
    for d in (up, work, mnt):
        d.mkdir()
        os.chown(d, owner.pw_uid, owner.pw_gid)
    return low, up, work, mnt


def test_unprivileged_mount_keeps_foreign_owners_through_copy_up(rootless):
    pw, base = rootless
    low, up, work, mnt = layout(base, pw)
    py = shlex.quote(sys.executable)
    r = as_user(pw, f"""
        {py} -m unionfs mount -o workdir={work} {up}:{low} {mnt}
        trap '{py} -m unionfs umount {mnt}' EXIT
        stat -c '%n %u:%g %a' {mnt}/rootfile {mnt}/shared
        echo more >> {mnt}/shared
        stat -c 'after %u:%g %a' {mnt}/shared
        if echo x >> {mnt}/rootfile 2>/dev/null; then echo WROTE-ROOTFILE; fi
        echo new > {mnt}/d/new
        stat -c 'new %u %a' {mnt}/d/new
        getfattr -d -m - {mnt}/shared 2>/dev/null | grep -c override_stat || true
    """)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"{mnt}/rootfile 0:0 644" in out and f"{mnt}/shared 1234:1234 666" in out
    assert "after 1234:1234 666" in out, out
    assert "WROTE-ROOTFILE" not in out
    assert f"new {pw.pw_uid} " in out
    assert out.strip().endswith("0"), "the override xattr must not show through the mount"
    # On disk the copy belongs to the user and says whose it really is.
    st = os.lstat(up / "shared")
    assert st.st_uid == pw.pw_uid
    ov = parse_override(os.getxattr(up / "shared", OVERRIDE_XATTR), st.st_mode)
    assert (ov.uid, ov.gid, stat.S_IMODE(ov.mode)) == (1234, 1234, 0o666)
    assert (up / "shared").read_text() == "sharedmore\n"
    assert (low / "shared").read_text() == "shared"


def test_user_namespace_root_chowns_and_sees_recorded_devices(rootless):
    """As rootless podman runs it: the daemon is root of a user namespace with the user's
    subordinate ids. chown to mapped ids is real; a device node that a rootless image store
    recorded in the xattr (no one may mknod in a user namespace) shows as the device, and a
    chmod of it is recorded too."""
    pw, base = rootless
    low, up, work, mnt = layout(base, pw)
    (low / "null").touch()
    os.setxattr(low / "null", OVERRIDE_XATTR, b"0:0:0666:char-1-3")
    py = shlex.quote(sys.executable)
    r = as_user(pw, f"""
        {py} -m unionfs mount -o workdir={work} {up}:{low} {mnt}
        trap '{py} -m unionfs umount {mnt}' EXIT
        echo x > {mnt}/f
        chown 5:6 {mnt}/f
        chmod 0620 {mnt}/null
        stat -c '%n %u:%g %a %F %t:%T' {mnt}/f {mnt}/null
    """, userns=True)
    assert r.returncode == 0, r.stderr
    assert f"{mnt}/f 5:6 644 regular file" in r.stdout
    assert f"{mnt}/null 0:0 620 character special file 1:3" in r.stdout
    sub = int(next(line.split(":")[1] for line in Path("/etc/subuid").read_text().splitlines()
                   if line.startswith(f"{USER}:")))
    st = os.lstat(up / "f")
    assert st.st_uid == sub + 4, "uid 5 of the namespace is the 5th subordinate id on disk"
    nst = os.lstat(up / "null")
    assert stat.S_ISREG(nst.st_mode), "the copy-up of a recorded device stays a record"
    ov = parse_override(os.getxattr(up / "null", OVERRIDE_XATTR), nst.st_mode)
    assert stat.S_ISCHR(ov.mode) and ov.rdev == os.makedev(1, 3)
    assert stat.S_IMODE(ov.mode) == 0o620
