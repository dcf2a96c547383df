"""`exec` side by side with runc 1.1.5: the process joins the container's namespaces, cgroup,
seccomp filter and capabilities; --process, --detach, --pid-file, --tty + --console-socket."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from snapshotter.runtime import seccomp
from tests.runtime.conftest import needs_busybox, needs_root, needs_runc
from tests.runtime.console_socket import ConsoleSocket, read_until_eof
from tests.runtime.seccomp_profiles import PODMAN_PROFILE, podman_default
from tests.runtime.test_failures import err, wait_status

pytestmark = [needs_root, needs_busybox, needs_runc]
CAPS = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _container(c):
    c["process"]["args"] = ["sleep", "60"]
    c["linux"]["namespaces"].append({"type": "cgroup"})
    c["root"]["readonly"] = False
    for k in c["process"]["capabilities"]:
        c["process"]["capabilities"][k] = list(CAPS)
    if seccomp.available() and PODMAN_PROFILE.exists():
        c["linux"]["seccomp"] = podman_default(CAPS)


def _started(rt, bundles, cid):
    bundle = bundles.make(["sleep", "60"], _container)
    (bundle / "rootfs" / "tmp").chmod(0o1777)
    res = rt("run", "--detach", "--bundle", str(bundle), cid)
    assert res.returncode == 0, res.stderr
    return bundle


SAME = ("for n in ipc mnt net pid uts cgroup; do [ $(readlink /proc/self/ns/$n) = "
        "$(readlink /proc/1/ns/$n) ] && echo $n same; done; cat /proc/self/cgroup | sort;"
        " grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status;"
        " busybox chroot / true 2>&1; exit 5")


def test_exec_joins_the_container(runc, pyrt, bundles):
    out = {}
    for rt in (runc, pyrt):
        cid = f"ex-{rt.name}"
        _started(rt, bundles, cid)
        res = rt("exec", cid, "sh", "-c", SAME)
        assert res.returncode == 5, (rt.name, res.stderr)
        out[rt.name] = res.stdout
    assert out["pyunion"] == out["runc"]
    text = out["pyunion"]
    for n in ("ipc", "mnt", "net", "pid", "uts", "cgroup"):
        assert f"{n} same" in text
    assert "NoNewPrivs:\t1" in text and "CapEff:\t0000000000000420" in text
    if seccomp.available() and PODMAN_PROFILE.exists():
        assert "Seccomp:\t2" in text
        assert "can't change root directory to '/': Operation not permitted" in text


def test_exec_process_file_detach_pid_file(runc, pyrt, bundles, tmp_path):
    for rt in (runc, pyrt):
        cid = f"ep-{rt.name}"
        bundle = _started(rt, bundles, cid)
        proc = json.loads((bundle / "config.json").read_text())["process"]
        proc.update(args=["sh", "-c", ("id > /tmp/out; pwd >> /tmp/out; echo $X >> /tmp/out;"
                          " sleep 30")],
                    cwd="/home/user", env=["PATH=/bin", "X=from-process-json"],
                    user={"uid": 1000, "gid": 1000})
        pfile, pidfile = tmp_path / f"p-{rt.name}.json", tmp_path / f"pid-{rt.name}"
        pfile.write_text(json.dumps(proc))
        res = rt("exec", "--process", str(pfile), "--detach", "--pid-file", str(pidfile), cid)
        assert res.returncode == 0, (rt.name, res.stderr)
        pid = int(pidfile.read_text())
        assert Path(f"/proc/{pid}/status").read_text().count("1000") >= 2
        assert pid in json.loads(rt("ps", "--format", "json", cid).stdout)
        rootfs = bundle / "rootfs"
        out = rootfs / "tmp" / "out"
        for _ in range(500):
            if out.exists() and out.read_text().endswith("from-process-json\n"):
                break
            time.sleep(0.02)
        assert (rootfs / "tmp/out").read_text() == (
            "uid=1000(user) gid=1000(user)\n/home/user\nfrom-process-json\n")
        assert rt("delete", "--force", cid).returncode == 0
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_exec_tty_console_socket(runc, pyrt, bundles, tmp_path):
    out = {}
    for rt in (runc, pyrt):
        cid = f"et-{rt.name}"
        _started(rt, bundles, cid)
        sock = ConsoleSocket(tmp_path / f"{rt.name}.sock")
        try:
            res = rt("exec", "--tty", "--detach", "--console-socket", str(sock.path), cid,
                     "sh", "-c", "tty; test -t 0 && echo tty-stdin")
            assert res.returncode == 0, (rt.name, res.stderr)
            master, _ = sock.receive()
        finally:
            sock.close()
        try:
            out[rt.name] = read_until_eof(master)
        finally:
            os.close(master)
    assert out["pyunion"] == out["runc"] == "/dev/pts/0\ntty-stdin\n"


def test_exec_refusals(runc, pyrt, bundles):
    for rt in (runc, pyrt):
        cid = f"er-{rt.name}"
        _started(rt, bundles, cid)
        res = rt("exec", cid, "nosuch")
        assert res.returncode == 255
        assert err(res) == ('exec failed: unable to start container process: exec: "nosuch": '
                            "executable file not found in $PATH"), rt.name
        assert rt("pause", cid).returncode == 0
        res = rt("exec", cid, "true")
        assert res.returncode == 255 and err(res) == (
            "exec failed: cannot exec in a paused container (use --ignore-paused to override)")
        assert rt("resume", cid).returncode == 0
        assert rt("kill", cid, "KILL").returncode == 0
        wait_status(rt, cid, "stopped")
        res = rt("exec", cid, "true")
        assert res.returncode == 255 and "cannot exec in a stopped container" in err(res), \
            (rt.name, err(res))
        assert rt("delete", cid).returncode == 0
        res = rt("exec", cid, "true")
        assert res.returncode == 255 and err(res) == "exec failed: container does not exist"


def test_kill_and_delete_force_running(anyrt, bundles):
    cid = f"kd-{anyrt.name}"
    _started(anyrt, bundles, cid)
    assert anyrt("exec", "-d", cid, "sleep", "50").returncode == 0
    assert anyrt("kill", cid, "KILL").returncode == 0
    wait_status(anyrt, cid, "stopped")
    assert anyrt("delete", cid).returncode == 0
    cid = f"df-{anyrt.name}"
    _started(anyrt, bundles, cid)
    assert anyrt("delete", "--force", cid).returncode == 0
    res = anyrt("state", cid)
    assert res.returncode == 1 and err(res) == "container does not exist"


def test_exec_in_a_user_namespace(runc, pyrt, rootfs_template):
    """The exec'd process joins the container's user namespace first (ids mapped as init's)."""
    import shutil
    import tempfile

    from tests.runtime.conftest import Bundles
    base = Path(tempfile.mkdtemp(prefix="pyunion-rt-"))
    base.chmod(0o755)
    try:
        bundles = Bundles(base, rootfs_template)
        out = {}
        for rt in (runc, pyrt):
            def edit(c):
                c["linux"]["namespaces"].append({"type": "user"})
                c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000,
                                              "size": 65536}]
                c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000,
                                              "size": 65536}]
                c["mounts"] = [m for m in c["mounts"] if m["type"] != "cgroup"]
            bundle = bundles.make(["sleep", "60"], edit)
            cid = f"eu-{rt.name}"
            assert rt("run", "--detach", "--bundle", str(bundle), cid).returncode == 0
            res = rt("exec", cid, "sh", "-c", "id; cat /proc/self/uid_map; [ $(readlink "
                     "/proc/self/ns/user) = $(readlink /proc/1/ns/user) ] && echo same-userns")
            assert res.returncode == 0, (rt.name, res.stderr)
            out[rt.name] = res.stdout
            host = Path(f"/proc/{rt.state(cid)['pid']}/status").read_text()
            assert "Uid:\t100000" in host
        assert out["pyunion"] == out["runc"]
        assert out["pyunion"].splitlines()[0] == "uid=0(root) gid=0(root)"
        assert out["pyunion"].splitlines()[-1] == "same-userns"
    finally:
        for rt in (runc, pyrt):
            rt("delete", "--force", f"eu-{rt.name}")
        shutil.rmtree(base, ignore_errors=True)


def test_preserve_fds(runc, pyrt, bundles, tmp_path):
    """--preserve-fds N: the caller's fds 3..N+2 reach the program, nothing else does."""
    import shlex
    import subprocess
    out = {}
    for rt in (runc, pyrt):
        bundle = bundles.make(
            ["sh", "-c", "echo via-fd3 >&3; echo via-fd4 >&4; ls /proc/self/fd"])
        f3, f4 = tmp_path / f"{rt.name}.3", tmp_path / f"{rt.name}.4"
        cmd = shlex.join([*rt.argv, "--root", str(rt.root), "run", "--preserve-fds", "2",
                          "--bundle", str(bundle), f"pf-{rt.name}"])
        rt.ids.add(f"pf-{rt.name}")
        res = subprocess.run(["sh", "-c", f"exec 3>{f3} 4>{f4}; {cmd}"], capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 0, (rt.name, res.stderr)
        out[rt.name] = res.stdout
        assert f3.read_text() == "via-fd3\n" and f4.read_text() == "via-fd4\n"
    assert out["pyunion"] == out["runc"] == "0\n1\n2\n3\n4\n5\n"  # 5: ls's directory


def test_preserve_fds_not_open_is_refused(pyrt, bundles):
    bundle = bundles.make(["true"])
    res = pyrt("run", "--preserve-fds", "40", "--bundle", str(bundle), "pn")
    assert res.returncode == 1 and err(res) == "--preserve-fds 40: fd 3 is not open"
    assert not (pyrt.root / "pn").exists()
