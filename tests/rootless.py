"""A real unprivileged user for rootless tests (CI runs as root and can create one).

`unprivileged_user()` creates a throw-away user with `useradd`, gives it a subordinate uid/gid
range in /etc/subuid and /etc/subgid (with `usermod --add-subuids`, which locks those files),
makes /dev/fuse usable by everyone (mode 0666, the usual distribution default, so `fusermount3`
works for the user), and a HOME in a fresh directory under /tmp that the user owns (pytest's
tmp_path lies below a root-only 0700 directory). Commands run as the user through `setpriv
--reuid --regid --init-groups` with a clean environment. Cleanup removes only what it made: the
user (userdel also drops its group and subordinate ranges) and the directory. /dev/fuse keeps mode 0666 (other rootless tests
may be running; it is the distributions' default anyway).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBID_COUNT = 65536
SUBID_FLOOR = 1_000_000
TOOLS = ("useradd", "userdel", "usermod", "setpriv")


def _world_usable(path: str) -> bool:
    """True when any user may execute PATH: every directory on its real path is o+x."""
    real = os.path.realpath(path)
    try:
        if not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        parts = Path(real).parents
        return all(os.stat(d).st_mode & stat.S_IXOTH for d in parts)
    except OSError:
        return False


def user_python() -> tuple[str, list[str]]:
    """An interpreter the test user can run, and the PYTHONPATH it needs.

    The venv's interpreter may be a link into root's home (pyenv), which other users cannot
    enter; then the system interpreter of the same version runs with the venv's site-packages
    on its path (same ABI, so pyfuse3's extension loads).
    """
    paths = [str(REPO)]
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if _world_usable(sys.executable) and not os.path.realpath(sys.executable).startswith("/root"):
        return sys.executable, paths
    if _world_usable(system):
        return system, paths + [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    return sys.executable, paths


def skip_reason() -> str | None:
    """Why rootless tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create an unprivileged test user (useradd)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian packages passwd, util-linux)"
    return None


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    subid_start: int

    def env(self, **extra: str) -> dict[str, str]:
        exe, pypath = user_python()
        env = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
               "PATH": f"{Path(exe).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
               "PYTHONPATH": ":".join(pypath), "LANG": "C.UTF-8"}
        env.update(extra)
        return env

    def run(self, cmd: Sequence[str], *, timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run CMD as the user (cwd: HOME); on failure with CHECK, raise with its stderr."""
        full = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
                *cmd]
        r = subprocess.run(full, env=env or self.env(), cwd=self.home, capture_output=True,
                           text=True, timeout=timeout, input=input, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} as {self.name} exited {r.returncode}:\n"
                                 f"{r.stderr.strip()}")
        return r

    def python(self, code: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run([user_python()[0], "-c", code, *args], **kw)

    def pyunion(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """`pyunion ARGS` as the user (`python -m unionfs`, as the command's entry point)."""
        return self.run([user_python()[0], "-m", "unionfs", *args], **kw)


def free_subid_start(texts: Sequence[str], floor: int = SUBID_FLOOR) -> int:
    """A start above every range listed in subuid/subgid TEXTS (pure)."""
    end = floor
    for text in texts:
        for line in text.splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                end = max(end, int(parts[1]) + int(parts[2]))
    return end


def own_range(text: str, name: str) -> int | None:
    """Start of NAME's first range of at least SUBID_COUNT ids in a subuid/subgid TEXT (pure)."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == name and parts[1].isdigit() and parts[2].isdigit() \
                and int(parts[2]) >= SUBID_COUNT:
            return int(parts[1])
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


def _fuse_for_all() -> None:
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat("/dev/fuse").st_mode
        if stat.S_IMODE(mode) & 0o666 != 0o666:
            os.chmod("/dev/fuse", 0o666)


@contextlib.contextmanager
def unprivileged_user(prefix: str = "pyurl") -> Iterator[User]:
    """Create the user and its HOME; remove both afterwards (see the module docstring)."""
    reason = skip_reason()
    if reason:
        raise RuntimeError(reason)
    name = f"{prefix}{secrets.token_hex(3)}"
    home = Path(tempfile.mkdtemp(prefix=f"pyunion-rootless-{name}-", dir="/tmp"))
    created = False
    try:
        _sh("useradd", "--no-create-home", "--user-group", "--home-dir", str(home),
            "--shell", "/bin/sh", name)
        created = True
        start = own_range(_read("/etc/subuid"), name)
        if start is None or own_range(_read("/etc/subgid"), name) != start:
            # useradd allocates ranges itself when login.defs says so; otherwise add one
            start = free_subid_start([_read("/etc/subuid"), _read("/etc/subgid")])
            rng = f"{start}-{start + SUBID_COUNT - 1}"
            _sh("usermod", "--add-subuids", rng, "--add-subgids", rng, name)
        uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True,
                                 check=True, timeout=30).stdout)
        gid = int(subprocess.run(["id", "-g", name], capture_output=True, text=True,
                                 check=True, timeout=30).stdout)
        os.chown(home, uid, gid)
        os.chmod(home, 0o700)
        _fuse_for_all()
        yield User(name, uid, gid, home, start)
    finally:
        if created:
            subprocess.run(["userdel", name], capture_output=True, timeout=60, check=False)
        shutil.rmtree(home, ignore_errors=True)
