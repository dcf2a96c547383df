"""podman and containerd driving pyunion-runtime (and runc, the same commands, for comparison)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.imagebuild import build_busybox_image
from tests.runtime.clients import PYUNION_RUNTIME, RUNC, Containerd, Podman
from tests.runtime.seccomp_profiles import PODMAN_PROFILE

needs = pytest.mark.skipif
pytestmark = [
    needs(not Path(PYUNION_RUNTIME).exists(), reason="no .venv/bin/pyunion-runtime"),
    needs(shutil.which("runc") is None, reason="runc missing"),
]
IMAGE = "localhost/pyunion-test/busybox:latest"
V1 = Path("/sys/fs/cgroup")


@pytest.fixture(scope="module")
def image_tar(tmp_path_factory):
    return build_busybox_image(tmp_path_factory.mktemp("img") / "busybox.tar", fmt="docker")


@pytest.fixture(scope="module", params=["pyunion", "runc"])
def podman(request, image_tar):
    if shutil.which("podman") is None:
        pytest.skip("podman missing (scripts/setup.sh installs it)")
    base = Path(tempfile.mkdtemp(prefix="pyunion-podman-"))
    pm = Podman(base, PYUNION_RUNTIME if request.param == "pyunion" else RUNC)
    pm.name = request.param
    res = pm("load", "-i", str(image_tar))
    assert res.returncode == 0, res.stderr
    yield pm
    pm.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def test_podman_run_limits_and_seccomp(podman, tmp_path):
    res = podman.run("--rm", "--memory", "64m", "--pids-limit", "33", IMAGE, "sh", "-c",
                     "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                     "/sys/fs/cgroup/pids/pids.max; grep Seccomp: /proc/self/status; id")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{64 << 20}\n33\nSeccomp:\t2\nuid=0(root) gid=0(root)\n"


@pytest.mark.skipif(not PODMAN_PROFILE.exists(), reason="containers-common's profile missing")
def test_podman_profile_errno_reaches_the_container(podman, tmp_path):
    """podman's own profile with mkdir denied by a rule: the rule's errno (ENOMSG) inside."""
    profile = json.loads(PODMAN_PROFILE.read_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n not in ("mkdir", "mkdirat")]
    profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
    profile["syscalls"].append({"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                                "errnoRet": 42})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    res = podman.run("--rm", "--security-opt", f"seccomp={path}", IMAGE, "mkdir", "/tmp/x")
    assert res.returncode == 1
    assert "mkdir: can't create directory '/tmp/x': No message of desired type" in res.stderr


def test_podman_read_only_and_tmpfs(podman):
    """--read-only: podman adds tmpfs on /run, /tmp, /var/tmp with runc's tmpcopyup option."""
    res = podman.run("--rm", "--read-only", "--tmpfs", "/scratch:size=1m", IMAGE, "sh", "-c",
                     "touch /x 2>&1; touch /tmp/y /scratch/z && echo writable;"
                     " cat /usr/share/hello.txt >/dev/null && echo image-files")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "touch: /x: Read-only file system\nwritable\nimage-files\n"


def test_podman_run_t(podman):
    res = podman.run("--rm", "-t", IMAGE, "sh", "-c", "test -t 0 && test -t 1 && echo tty;"
                     " readlink /proc/self/fd/1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.replace("\r\n", "\n") == "tty\n/dev/pts/0\n"


def _status(podman, name):
    res = podman("inspect", "--format", "{{.State.Status}}", name)
    return res.stdout.strip()


def test_podman_exec_top_pause_stop(podman):
    name = f"life-{podman.name}"
    res = podman.run("-d", "--name", name, IMAGE, "sh", "-c",
                     "trap 'exit 3' TERM; sleep 300 & wait")
    assert res.returncode == 0, res.stderr
    try:
        res = podman("exec", name, "sh", "-c", "echo in-exec; grep Seccomp: /proc/self/status;"
                     " cat /proc/1/cmdline | tr '\\0' ' '")
        assert res.returncode == 0, res.stderr
        assert res.stdout == "in-exec\nSeccomp:\t2\nsh -c trap 'exit 3' TERM; sleep 300 & wait "
        res = podman("exec", "-t", name, "sh", "-c", "test -t 1 && echo exec-tty")
        assert res.returncode == 0 and res.stdout.strip() == "exec-tty", res.stderr
        res = podman("exec", name, "nosuchcommand")
        assert res.returncode == 127, (res.returncode, res.stderr)
        res = podman("update", "--memory", "100m", "--cpu-shares", "300", name)
        assert res.returncode == 0, res.stderr
        res = podman("exec", name, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                     "/sys/fs/cgroup/cpu/cpu.shares")
        assert res.stdout == f"{100 << 20}\n300\n", res.stderr
        res = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name)
        # podman reads the cgroup itself; its limit column is the host's memory under runc too
        assert res.returncode == 0 and " / " in res.stdout, (res.stdout, res.stderr)
        res = podman("top", name)
        assert res.returncode == 0, res.stderr
        assert "sleep 300" in res.stdout and "COMMAND" in res.stdout.splitlines()[0]
        assert podman("pause", name).returncode == 0
        assert _status(podman, name) == "paused"
        assert podman("unpause", name).returncode == 0
        assert _status(podman, name) == "running"
        t0 = time.monotonic()
        res = podman("stop", "-t", "20", name)
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - t0 < 15  # TERM reached the trap; no 20 s wait for KILL
        assert _status(podman, name) == "exited"
        res = podman("inspect", "--format", "{{.State.ExitCode}}", name)
        assert res.stdout.strip() == "3"
    finally:
        podman("rm", "-f", "-t", "0", name)


@pytest.fixture(scope="module")
def containerd(image_tar):
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd missing (scripts/setup.sh installs it)")
    base = Path(tempfile.mkdtemp(prefix="pyunion-containerd-"))
    ctd = Containerd(base)
    try:
        ctd.start()
        res = ctd.ctr("images", "import", "--snapshotter", "native", str(image_tar))
        assert res.returncode == 0, res.stderr
        yield ctd
    finally:
        ctd.stop()
        shutil.rmtree(base, ignore_errors=True)


CTR_IMAGE = "docker.io/pyunion-test/busybox:latest"


@pytest.mark.parametrize("binary", ["pyunion", "runc"])
def test_containerd_run_exec_ps_pause_kill(containerd, binary):
    rt = PYUNION_RUNTIME if binary == "pyunion" else RUNC
    cid = f"c-{binary}"
    run = ["run", "--snapshotter", "native", "--runc-binary", rt]
    res = containerd.ctr(*run, "--rm", "--memory-limit", str(64 << 20), "--seccomp", CTR_IMAGE,
                         f"{cid}-fg", "sh", "-c", "echo hello; grep Seccomp: /proc/self/status;"
                         " busybox unshare -U true 2>&1; cat /proc/self/cgroup | grep memory")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ("hello\nSeccomp:\t2\nunshare: unshare(0x10000000): Operation not "
                          f"permitted\n4:memory:/{containerd.ns}/{cid}-fg\n")

    res = containerd.ctr(*run, "-d", "--memory-limit", str(64 << 20), CTR_IMAGE, cid,
                         "sleep", "300")
    assert res.returncode == 0, res.stderr
    limit = V1 / "memory" / containerd.ns / cid / "memory.limit_in_bytes"
    if limit.parent.parent.parent.is_dir():
        assert limit.read_text() == f"{64 << 20}\n"
    res = containerd.ctr("task", "exec", "--exec-id", "e1", cid, "sh", "-c",
                         "echo in-exec; cat /proc/1/cmdline | tr '\\0' ' '; exit 4")
    assert res.returncode == 4 and res.stdout == "in-exec\nsleep 300 ", res.stderr
    res = containerd.ctr("task", "metrics", "--format", "json", cid)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["memory"]["usage"]["limit"] == 64 << 20
    res = containerd.ctr("task", "ps", cid)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 2, res.stdout
    assert containerd.ctr("task", "pause", cid).returncode == 0
    assert f"{cid} " in containerd.ctr("task", "ls").stdout
    assert "PAUSED" in _task_line(containerd, cid)
    assert containerd.ctr("task", "resume", cid).returncode == 0
    assert "RUNNING" in _task_line(containerd, cid)
    assert containerd.ctr("task", "kill", "-s", "KILL", cid).returncode == 0
    for _ in range(100):
        if "STOPPED" in _task_line(containerd, cid):
            break
        time.sleep(0.1)
    assert "STOPPED" in _task_line(containerd, cid)
    assert containerd.ctr("task", "delete", cid).returncode == 0
    assert containerd.ctr("container", "delete", cid).returncode == 0
    assert not limit.parent.exists()


def _task_line(containerd, cid):
    for line in containerd.ctr("task", "ls").stdout.splitlines():
        if line.split()[:1] == [cid]:
            return line
    return ""
