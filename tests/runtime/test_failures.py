"""Errors: runc's message and exit code, and nothing left behind (process, mount, cgroup, state)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from snapshotter.runtime.state import proc_start_time
from tests.runtime.conftest import (
    PYUNION_ARGV,
    REPO,
    cgroup_dir,
    host_mount_lines,
    needs_busybox,
    needs_root,
    needs_runc,
)

pytestmark = [needs_root, needs_busybox]


def err(res) -> str:
    """The message of a runc-style error line."""
    line = res.stderr.strip().splitlines()[-1]
    if "msg=" in line:
        return json.loads(line.split("msg=", 1)[1])
    return line


def assert_nothing_left(rt, cid: str, bundle: Path, pids: list[int] = ()) -> None:
    assert not (rt.root / cid).exists()
    assert host_mount_lines(str(bundle)) == []
    cg = cgroup_dir(cid)
    assert cg is None or not cg.exists()
    for pid in pids:
        assert proc_start_time(pid) is None
    res = rt("state", cid)
    assert res.returncode == 1 and err(res) == "container does not exist"


def wait_status(rt, cid: str, status: str) -> dict:
    for _ in range(1000):
        st = rt.state(cid)
        if st["status"] == status:
            return st
        time.sleep(0.01)
    raise AssertionError(f"{cid} never became {status}: {st}")


def test_unknown_id(anyrt):
    for cmd in (["state", "nope"], ["start", "nope"], ["kill", "nope"], ["delete", "nope"]):
        res = anyrt(*cmd)
        assert res.returncode == 1, cmd
        assert err(res) == "container does not exist"
    assert anyrt("delete", "--force", "nope").returncode == 0


def test_invalid_id(anyrt, bundles):
    bundle = bundles.make(["true"])
    res = anyrt("create", "--bundle", str(bundle), "bad id")
    assert res.returncode == 1 and "invalid container ID format" in err(res)


def test_missing_rootfs(anyrt, bundles):
    bundle = bundles.make(["true"])
    os.rename(bundle / "rootfs", bundle / "elsewhere")
    res = anyrt("create", "--bundle", str(bundle), "m")
    assert res.returncode == 1
    assert f"invalid rootfs: stat {bundle}/rootfs: no such file or directory" in err(res)
    assert_nothing_left(anyrt, "m", bundle)


@pytest.mark.parametrize("text", ["{bad", "[]", '{"ociVersion": "1.0.2"}'])
def test_bad_config(pyrt, bundles, text):
    bundle = bundles.make(["true"])
    (bundle / "config.json").write_text(text)
    res = pyrt("create", "--bundle", str(bundle), "b")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert_nothing_left(pyrt, "b", bundle)


def test_refused_fields(pyrt, bundles):
    for edit, word in [
        (lambda c: c["process"].update(terminal=True), ("cannot allocate tty if runc will "
         "detach without setting console socket")),
        (lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_NOTIFY"}),
         "SCMP_ACT_NOTIFY (a seccomp listener) is not supported"),
        (lambda c: c["linux"]["resources"].update(rdma={"mlx5_1": {"hcaHandles": 3}}),
         "linux.resources.rdma is not supported"),
        (lambda c: c["process"]["capabilities"]["bounding"].append("CAP_NOPE"),
         "unknown capability"),
    ]:
        bundle = bundles.make(["true"], edit)
        res = pyrt("create", "--bundle", str(bundle), "r")
        assert res.returncode == 1 and word in err(res), res.stderr
        assert_nothing_left(pyrt, "r", bundle)


def test_program_not_found(anyrt, bundles):
    bundle = bundles.make(["nosuchprog"])
    res = anyrt("create", "--bundle", str(bundle), "n")
    assert res.returncode == 1
    assert 'exec: "nosuchprog": executable file not found in $PATH' in err(res)
    assert_nothing_left(anyrt, "n", bundle)


@pytest.mark.parametrize("hook", ["prestart", "createRuntime", "createContainer"])
def test_failing_create_hook(anyrt, bundles, hook):
    def edit(c):
        c["hooks"] = {hook: [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}
    bundle = bundles.make(["true"], edit)
    res = anyrt("create", "--bundle", str(bundle), "f")
    assert res.returncode == 1
    assert "error running hook #0" in err(res) and "exit status 3" in err(res)
    assert_nothing_left(anyrt, "f", bundle)


KILL_INIT = "import json, os, sys; os.kill(json.load(sys.stdin)['pid'], int(sys.argv[1]))"


@pytest.mark.parametrize("hook, args", [
    ("prestart", [sys.executable, "-c", KILL_INIT, "9"]),
    ("createRuntime", [sys.executable, "-c", KILL_INIT, "9"]),
    ("createContainer", ["sh", "-c", "kill -TERM 1"]),  # pid 1 of its pid namespace: the init
])
def test_init_killed_during_the_handshake_is_one_line(pyrt, bundles, hook, args):
    """The init dies at a step of the handshake (handshake.py): `create` says so in one line,
    quickly, and leaves nothing (before: the runtime's next Ok to the dead init surfaced as
    '[Errno 32] Broken pipe')."""
    def edit(c):
        c["hooks"] = {hook: [{"path": shutil.which(args[0]), "args": args}]}
    bundle = bundles.make(["true"], edit)
    res = pyrt("create", "--bundle", str(bundle), "k")
    assert res.returncode == 1
    assert err(res) == "container init exited before it was ready"
    assert_nothing_left(pyrt, "k", bundle)


def test_hook_timeout(pyrt, bundles):
    def edit(c):
        c["hooks"] = {"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"],
                                         "timeout": 1}]}
    bundle = bundles.make(["true"], edit)
    res = pyrt("create", "--bundle", str(bundle), "t")
    assert res.returncode == 1 and "timeout" in err(res)
    assert_nothing_left(pyrt, "t", bundle)


def test_double_start_kill_stopped_delete_running(anyrt, bundles):
    bundle = bundles.make(["sleep", "30"])
    assert anyrt("create", "--bundle", str(bundle), "d").returncode == 0
    pid = anyrt.state("d")["pid"]
    assert anyrt("start", "d").returncode == 0
    assert anyrt.state("d")["status"] == "running"
    res = anyrt("start", "d")
    assert res.returncode == 1 and err(res) == "cannot start an already running container"
    res = anyrt("delete", "d")
    assert res.returncode == 1
    assert err(res) == "cannot delete container d that is not stopped: running"
    assert anyrt.state("d")["status"] == "running"
    assert anyrt("kill", "d", "KILL").returncode == 0
    st = wait_status(anyrt, "d", "stopped")
    assert st["pid"] == 0
    res = anyrt("kill", "d")
    assert res.returncode == 1 and err(res) == "container not running"
    assert anyrt("kill", "--all", "d", "9").returncode == 0
    res = anyrt("start", "d")
    assert res.returncode == 1 and err(res) == "cannot start a container that has stopped"
    assert anyrt("delete", "d").returncode == 0
    assert_nothing_left(anyrt, "d", bundle, [pid])


def test_state_sees_outside_kill(anyrt, bundles):
    bundle = bundles.make(["sleep", "30"])
    assert anyrt("create", "--bundle", str(bundle), "o").returncode == 0
    assert anyrt("start", "o").returncode == 0
    os.kill(anyrt.state("o")["pid"], signal.SIGKILL)
    wait_status(anyrt, "o", "stopped")
    assert anyrt("delete", "o").returncode == 0


def test_kill_created(anyrt, bundles):
    bundle = bundles.make(["sleep", "30"])
    assert anyrt("create", "--bundle", str(bundle), "k").returncode == 0
    assert anyrt("kill", "k", "TERM").returncode == 0
    wait_status(anyrt, "k", "stopped")
    assert anyrt("delete", "k").returncode == 0


@needs_runc
def test_delete_created_follows_spec(runc, pyrt, bundles):
    """runtime.md: deleting a container that is not stopped is an error. runc 1.1.5 kills it."""
    for rt in (runc, pyrt):
        bundle = bundles.make(["sleep", "30"])
        assert rt("create", "--bundle", str(bundle), "c").returncode == 0
    assert runc("delete", "c").returncode == 0
    res = pyrt("delete", "c")
    assert res.returncode == 1
    assert err(res) == "cannot delete container c that is not stopped: created"
    assert pyrt.state("c")["status"] == "created"
    pid = pyrt.state("c")["pid"]
    assert pyrt("delete", "--force", "c").returncode == 0
    assert_nothing_left(pyrt, "c", bundle, [pid])


def test_start_container_hook_failure(pyrt, bundles):
    def edit(c):
        c["hooks"] = {"startContainer": [{"path": "/bin/false", "args": ["false"]}]}
    bundle = bundles.make(["sleep", "30"], edit)
    assert pyrt("create", "--bundle", str(bundle), "s").returncode == 0
    res = pyrt("start", "s")
    assert res.returncode == 1 and "error running hook #0: exit status 1" in err(res)
    wait_status(pyrt, "s", "stopped")
    assert pyrt("delete", "s").returncode == 0
    assert_nothing_left(pyrt, "s", bundle)


def test_poststart_failure_stops_container(pyrt, bundles):
    def edit(c):
        c["hooks"] = {"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}]}
    bundle = bundles.make(["sleep", "30"], edit)
    assert pyrt("create", "--bundle", str(bundle), "p").returncode == 0
    res = pyrt("start", "p")
    assert res.returncode == 1 and "exit status 4" in err(res)
    assert pyrt.state("p")["status"] == "stopped"
    assert pyrt("delete", "p").returncode == 0


def test_poststop_failure_is_a_warning(pyrt, bundles, tmp_path):
    marker = tmp_path / "second-ran"

    def edit(c):
        c["hooks"] = {"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 5"]},
                                   {"path": "/bin/touch", "args": ["touch", str(marker)]}]}
    bundle = bundles.make(["true"], edit)
    res = pyrt("run", "--bundle", str(bundle), "w")
    assert res.returncode == 0
    assert marker.exists() and "exit status 5" in res.stderr
    assert_nothing_left(pyrt, "w", bundle)


def test_mount_destination_cannot_escape(pyrt, bundles, tmp_path):
    """A symlink in the rootfs pointing out of it must resolve inside the rootfs."""
    outside = tmp_path / "outside"
    outside.mkdir()

    def edit(c):
        c["mounts"].append({"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"})
        c["root"]["readonly"] = False
    bundle = bundles.make(["sh", "-c", f"grep -q ' {outside}/sub ' /proc/self/mountinfo"], edit)
    (bundle / "rootfs" / "escape").symlink_to(str(outside))
    res = pyrt("run", "--bundle", str(bundle), "e")
    assert res.returncode == 0, res.stderr
    assert not (outside / "sub").exists()  # nothing created on the host
    assert (bundle / "rootfs" / str(outside).lstrip("/") / "sub").is_dir()


def test_run_forwards_signals_and_exit_status(pyrt, bundles):
    script = "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done"
    bundle = bundles.make(["sh", "-c", script])
    proc = pyrt.popen("run", "--bundle", str(bundle), "sig")
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_nothing_left(pyrt, "sig", bundle)


def test_duplicate_id(anyrt, bundles):
    bundle = bundles.make(["sleep", "30"])
    assert anyrt("create", "--bundle", str(bundle), "dup").returncode == 0
    res = anyrt("create", "--bundle", str(bundle), "dup")
    assert res.returncode == 1 and "container with given ID already exists" in err(res)
    assert anyrt.state("dup")["status"] == "created"


def test_state_is_creating_inside_create_hooks(pyrt, bundles, tmp_path):
    out = tmp_path / "seen.json"

    def edit(c):
        cmd = " ".join([*PYUNION_ARGV, "--root", str(pyrt.root), "state", "cr"])
        c["hooks"] = {"createRuntime": [{"path": "/bin/sh",
                                         "args": ["sh", "-c", f"cd {REPO}; {cmd} > {out}"]}]}
    bundle = bundles.make(["true"], edit)
    assert pyrt("create", "--bundle", str(bundle), "cr").returncode == 0
    seen = json.loads(out.read_text())
    assert seen["status"] == "creating" and seen["pid"] == pyrt.state("cr")["pid"]
    assert pyrt("delete", "--force", "cr").returncode == 0


def test_kill_all_and_delete_without_pid_namespace(pyrt, bundles):
    """Without a pid namespace only the tracking cgroup finds the container's other processes."""
    def edit(c):
        c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "pid"]
    bundle = bundles.make(["sh", "-c", "sleep 30 & sleep 30 & wait"], edit)
    assert pyrt("run", "--detach", "--bundle", str(bundle), "ka").returncode == 0
    cg = cgroup_dir("ka")
    if cg is None:
        pytest.skip("no cgroup v2 hierarchy here")
    pids = []
    for _ in range(500):
        pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
        if len(pids) >= 3:
            break
        time.sleep(0.01)
    assert len(pids) == 3
    assert sorted(json.loads(pyrt("ps", "--format", "json", "ka").stdout)) == sorted(pids)
    starts = {p: proc_start_time(p) for p in pids}
    assert pyrt("kill", "--all", "ka", "KILL").returncode == 0
    wait_status(pyrt, "ka", "stopped")
    assert pyrt("delete", "ka").returncode == 0
    assert all(proc_start_time(p) != s for p, s in starts.items())
    assert_nothing_left(pyrt, "ka", bundle)


def test_cwd_cannot_reach_a_runtime_fd(pyrt, bundles):
    """runc CVE-2024-21626: cwd=/proc/self/fd/N must never land in a host directory."""
    for n in range(3, 7):  # the fds the init holds at that point
        def edit(c, n=n):
            c["process"]["cwd"] = f"/proc/self/fd/{n}"
        bundle = bundles.make(["pwd"], edit)
        res = pyrt("run", "--bundle", str(bundle), f"cwd{n}")
        assert res.returncode == 1, (n, res.stdout)
        assert_nothing_left(pyrt, f"cwd{n}", bundle)
