"""Bundles made from the host's static busybox, and the two runtimes under test side by side."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from snapshotter.runtime import spec
from unionfs import mountinfo

BUSYBOX = "/usr/bin/busybox"
REPO = Path(__file__).resolve().parents[2]
APPLETS = ["sh", "id", "hostname", "cat", "ls", "echo", "sleep", "touch", "grep", "readlink",
           "pwd", "mkdir", "rm", "true", "false", "env", "stat", "mount", "umask", "test", "kill"]

needs_root = pytest.mark.root
needs_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static missing")
needs_runc = pytest.mark.skipif(shutil.which("runc") is None, reason="runc missing")


def make_rootfs(path: Path) -> Path:
    """A minimal root: busybox + applet links, /etc/passwd and /etc/group, mount points."""
    (path / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for a in APPLETS:
        (path / "bin" / a).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc", "home/user"):
        (path / d).mkdir(parents=True, exist_ok=True)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "user:x:1000:1000:user:/home/user:/bin/sh\n")
    (path / "etc" / "group").write_text("root:x:0:\nwheel:x:10:user\nuser:x:1000:\n")
    return path


@pytest.fixture(scope="session")
def rootfs_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rootfs(tmp_path_factory.mktemp("rootfs-template") / "rootfs")


class Bundles:
    """Makes bundle directories under tmp_path with a busybox rootfs and a config.json."""

    def __init__(self, base: Path, template: Path) -> None:
        self.base, self.template, self.n = base, template, 0

    def make(self, args: list[str], edit: Any = None, name: str | None = None) -> Path:
        self.n += 1
        bundle = self.base / (name or f"bundle{self.n}")
        bundle.mkdir()
        shutil.copytree(self.template, bundle / "rootfs", symlinks=True)
        config = copy.deepcopy(spec.default_spec())
        config["process"]["args"] = args
        if edit:
            edit(config)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle


@pytest.fixture
def bundles(tmp_path: Path, rootfs_template: Path) -> Bundles:
    return Bundles(tmp_path, rootfs_template)


class Runtime:
    """One runtime's command line with its own --root; remembers IDs to clean up."""

    def __init__(self, name: str, argv: list[str], root: Path) -> None:
        self.name, self.argv, self.root = name, argv, root
        self.ids: set[str] = set()

    def __call__(self, *args: str, timeout: float = 30, stdin: Any = subprocess.DEVNULL,
                 **kw: Any) -> subprocess.CompletedProcess:
        """Run a command; output goes through files, not pipes: a created or detached
        container inherits them and would keep a pipe open long after the runtime exits."""
        if len(args) > 1 and args[0] in ("create", "run"):
            self.ids.add(args[-1])
        cmd = [*self.argv, "--root", str(self.root), *args]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(cmd, stdin=stdin, stdout=out, stderr=err, text=True,
                                  timeout=timeout, check=False, **kw)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen:
        if args[0] in ("create", "run"):
            self.ids.add(args[-1])
        return subprocess.Popen([*self.argv, "--root", str(self.root), *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kw)

    def state(self, cid: str) -> dict[str, Any]:
        res = self("state", cid)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def cleanup(self) -> None:
        for cid in self.ids:
            self("delete", "--force", cid)


PYUNION_ARGV = [sys.executable, "-m", "snapshotter.runtime.cli"]


def _runtime(name: str, tmp_path: Path) -> Runtime:
    argv = ["runc"] if name == "runc" else PYUNION_ARGV
    return Runtime(name, argv, tmp_path / f"{name}-root")


@pytest.fixture
def pyrt(tmp_path: Path):
    rt = _runtime("pyunion", tmp_path)
    yield rt
    rt.cleanup()


@pytest.fixture
def runc(tmp_path: Path):
    rt = _runtime("runc", tmp_path)
    yield rt
    rt.cleanup()


@pytest.fixture(params=["runc", "pyunion"])
def anyrt(request: pytest.FixtureRequest, tmp_path: Path):
    """Both runtimes, for behaviour they must share."""
    if request.param == "runc" and shutil.which("runc") is None:
        pytest.skip("runc missing")
    rt = _runtime(request.param, tmp_path)
    yield rt
    rt.cleanup()


def host_mount_lines(needle: str) -> list[str]:
    return [f"{m.mountpoint} ({m.fstype} {m.source} {m.root})" for m in mountinfo.mounts()
            if any(needle in f for f in (m.mountpoint, m.source, m.root))]


def cgroup_dir(cid: str) -> Path | None:
    from snapshotter.runtime import cgroups
    root = cgroups.unified_root()
    return None if root is None else root / cgroups.PARENT / cid
