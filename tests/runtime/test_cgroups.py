"""linux.resources in cgroups, side by side with runc 1.1.5 on this host's layout (cgroup v1
hybrid: controllers on v1, a controller-less cgroup2 at /sys/fs/cgroup/unified).

cgroup v2 limits cannot be exercised here: every controller is bound to a v1 hierarchy, and a
controller can be attached to one hierarchy only, so a cgroup2 mounted in a private mount
namespace has no controllers either. v2 is covered by the translation (`v2_writes`, pure) and
by the one v2 file that needs no controller, cgroup.freeze, on the real unified hierarchy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from snapshotter.runtime import cgroups
from snapshotter.runtime.errors import ContainerError
from tests.runtime.conftest import needs_busybox, needs_root
from tests.runtime.test_failures import err, wait_status

pytestmark = [needs_root, needs_busybox]
V1 = Path("/sys/fs/cgroup")
hybrid = pytest.mark.skipif(cgroups.is_unified() or not (V1 / "memory").is_dir(),
                            reason="needs this host's cgroup v1 layout")


@pytest.fixture(autouse=True, scope="module")
def _remove_test_parents():
    """runc leaves the parents of cgroupsPath behind; so the tests remove /pyunion-test."""
    yield
    for d in V1.glob("*/pyunion-test"):
        try:
            d.rmdir()
        except OSError:
            pass


def _block_device() -> str:
    for line in Path("/proc/partitions").read_text().splitlines()[2:]:
        major, minor = line.split()[:2]
        return f"{major}:{minor}"
    pytest.skip("no block device")


def _resources():
    major, minor = (int(x) for x in _block_device().split(":"))
    return {
        "memory": {"limit": 96 << 20, "reservation": 32 << 20, "swap": 128 << 20,
                   "swappiness": 10, "disableOOMKiller": False},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 20},
        "blockIO": {"weight": 300, "throttleReadBpsDevice": [{"major": major, "minor": minor,
                                               "rate": 10485760}],
                    "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 300}]},
        "devices": [{"allow": False, "access": "rwm"}],
    }


READ = ("cd /sys/fs/cgroup; for f in memory/memory.limit_in_bytes memory/memory.soft_limit_in_bytes"
        " memory/memory.memsw.limit_in_bytes memory/memory.swappiness cpu/cpu.shares"
        " cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpuset/cpuset.cpus cpuset/cpuset.mems"
        " pids/pids.max blkio/blkio.throttle.read_bps_device"
        " blkio/blkio.throttle.write_iops_device blkio/blkio.bfq.weight devices/devices.list; do echo $f: $(cat $f);"
        " done")


def _edit(name, resources, path=None):
    def edit(c):
        c["linux"]["resources"] = resources
        c["linux"]["cgroupsPath"] = path or f"/pyunion-test/{name}"
    return edit


@hybrid
def test_limits_seen_inside_as_under_runc(runc, pyrt, bundles):
    out = {}
    for rt in (runc, pyrt):
        bundle = bundles.make(["sh", "-c", READ], _edit(f"lim-{rt.name}", _resources()))
        res = rt("run", "--bundle", str(bundle), f"lim-{rt.name}")
        assert res.returncode == 0, res.stderr
        out[rt.name] = res.stdout
    assert out["pyunion"] == out["runc"]
    lines = out["pyunion"].splitlines()
    assert f"memory/memory.limit_in_bytes: {96 << 20}" in lines
    assert "pids/pids.max: 20" in lines and "cpu/cpu.cfs_quota_us: 50000" in lines
    assert f"blkio/blkio.throttle.read_bps_device: {_block_device()} 10485760" in lines
    if (V1 / "blkio" / "blkio.weight").exists():
        pass  # CFQ's file: the weight went there
    else:  # no CFQ: the weight goes to BFQ's file, as runc does
        assert "blkio/blkio.bfq.weight: 300" in lines
    assert "devices/devices.list: b *:* m c *:* m c 1:3 rwm c 1:5 rwm" in out["pyunion"]
    for name in ("runc", "pyunion"):
        assert not (V1 / "memory" / "pyunion-test" / f"lim-{name}").exists()


@hybrid
def test_pids_limit_enforced(runc, pyrt, bundles):
    script = "for i in 1 2 3 4 5 6; do sleep 5 & done 2>&1; echo done"
    out = {}
    for rt in (runc, pyrt):
        bundle = bundles.make(["sh", "-c", script], _edit(f"pid-{rt.name}", {"pids": {"limit": 4}}))
        out[rt.name] = rt("run", "--bundle", str(bundle), f"pid-{rt.name}", timeout=60)
    assert out["pyunion"].stdout == out["runc"].stdout
    assert "can't fork: Resource temporarily unavailable" in out["pyunion"].stdout


@hybrid
def test_update_pause_resume_events_ps_delete_force(runc, pyrt, bundles):
    for rt in (runc, pyrt):
        cid = f"up-{rt.name}"
        bundle = bundles.make(["sh", "-c", "sleep 60 & sleep 60"],
                              _edit(cid, {"memory": {"limit": 64 << 20}, "pids": {"limit": 10}}))
        assert rt("run", "--detach", "--bundle", str(bundle), cid).returncode == 0
        mem, pids, frz = (V1 / c / "pyunion-test" / cid for c in ("memory", "pids", "freezer"))
        res = rt("update", "--memory", "100M", "--pids-limit", "7", cid)
        assert res.returncode == 0, (rt.name, res.stderr)
        assert (mem / "memory.limit_in_bytes").read_text() == f"{100 << 20}\n"
        assert (pids / "pids.max").read_text() == "7\n"
        res = rt("update", "--resources", "-", cid,
                 stdin=_file(json.dumps({"cpu": {"shares": 300}})))
        assert res.returncode == 0, (rt.name, res.stderr)
        assert (V1 / "cpu" / "pyunion-test" / cid / "cpu.shares").read_text() == "300\n"

        assert rt("pause", cid).returncode == 0
        assert rt.state(cid)["status"] == "paused"
        assert (frz / "freezer.state").read_text() == "FROZEN\n"
        res = rt("pause", cid)
        assert res.returncode == 1 and "container not running" in err(res), rt.name
        assert rt("resume", cid).returncode == 0
        assert rt.state(cid)["status"] == "running"
        res = rt("resume", cid)
        assert res.returncode == 1 and "container not paused" in err(res), rt.name

        res = rt("events", "--stats", cid)
        assert res.returncode == 0, res.stderr
        ev = json.loads(res.stdout)
        assert ev["type"] == "stats" and ev["id"] == cid
        assert ev["data"]["memory"]["usage"]["limit"] == 100 << 20
        assert ev["data"]["pids"] == {"current": 2, "limit": 7}  # sh execs the last sleep
        assert ev["data"]["cpu"]["usage"]["total"] > 0

        res = rt("ps", "--format", "json", cid)
        pids_ = json.loads(res.stdout)
        assert len(pids_) == 2
        table = rt("ps", cid).stdout.splitlines()
        assert table[0].split()[:2] == ["UID", "PID"] and len(table) == 3
        assert sum("sleep 60" in ln for ln in table) == 2

        assert rt("pause", cid).returncode == 0
        res = rt("delete", "--force", cid)  # a paused container: killed, thawed, removed
        assert res.returncode == 0, res.stderr
        for p in pids_:
            assert not Path(f"/proc/{p}").exists() or _zombie(p)
        assert not mem.exists() and not frz.exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except OSError:
        return True


def _file(text: str):
    import tempfile
    f = tempfile.TemporaryFile("w+")  # noqa: SIM115 - handed to subprocess as stdin
    f.write(text)
    f.seek(0)
    return f


@hybrid
def test_kill_all_reaches_every_process(anyrt, bundles):
    cid = f"ka-{anyrt.name}"
    bundle = bundles.make(["sh", "-c", "sleep 60 & sleep 60 & wait"], _edit(cid, {}))
    assert anyrt("run", "--detach", "--bundle", str(bundle), cid).returncode == 0
    for _ in range(200):
        pids = json.loads(anyrt("ps", "--format", "json", cid).stdout)
        if len(pids) == 3:
            break
        time.sleep(0.02)
    assert anyrt("kill", "--all", cid, "KILL").returncode == 0
    wait_status(anyrt, cid, "stopped")
    assert anyrt("delete", cid).returncode == 0


@hybrid
def test_hugepages_and_network_refused_without_their_controllers(runc, pyrt, bundles):
    """This host mounts no hugetlb, net_cls or net_prio hierarchy: runc fails too."""
    for res_, word in (({"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 22}]}, "hugetlb"),
                       ({"network": {"classID": 0x100001}}, "net_cls")):
        if (V1 / word).exists():
            continue
        for rt in (runc, pyrt):
            bundle = bundles.make(["true"], _edit(f"hp-{rt.name}", res_))
            res = rt("run", "--bundle", str(bundle), f"hp-{rt.name}")
            assert res.returncode != 0, (rt.name, word)
        assert f"cannot set {word} limit" in err(res)
        assert not (rt.root / f"hp-{rt.name}").exists()


@hybrid
def test_unified_on_v1_refused(runc, pyrt, bundles):
    for rt in (runc, pyrt):
        bundle = bundles.make(["true"], _edit(f"un-{rt.name}", {"unified": {"pids.max": "3"}}))
        res = rt("run", "--bundle", str(bundle), f"un-{rt.name}")
        assert res.returncode == 1
        assert "cannot use unified on cgroup v1" in err(res), rt.name


@hybrid
def test_init_oom_killed_is_named(runc, pyrt, bundles):
    """At 1 MiB the kernel OOM-kills stage A or B at any step of the handshake. When it took A
    after its fork, B kept the socket open and `run` hung (about 1 run in 4 here, before the
    runtime watched a pidfd of the process whose message is due): so pyunion-runtime runs
    it ten times, each bounded by the runner's 30 s timeout, and every run names the kill."""
    bundle = bundles.make(["true"], _edit("oom-runc", {"memory": {"limit": 1 << 20}}))
    assert runc("run", "--bundle", str(bundle), "oom-runc").returncode != 0
    for i in range(10):
        cid = f"oom-pyrt{i}"
        bundle = bundles.make(["true"], _edit(cid, {"memory": {"limit": 1 << 20}}))
        res = pyrt("run", "--bundle", str(bundle), cid)
        assert res.returncode == 1, res.stderr
        assert err(res) == "container init was OOM-killed (memory limit too low?)"
        assert not (pyrt.root / cid).exists()


STUCK_OR_REFUSED = (
    ("container init is stuck at its memory limit (the OOM killer is disabled: memory limit "
     "too low?)"),
    "container init exited before it was ready, at its memory limit (memory limit too low?)",
)


@hybrid
def test_init_at_its_limit_without_oom_killer_is_an_error_not_a_hang(pyrt, bundles):
    """disableOOMKiller at 1 MiB: the init either waits in the kernel at the limit for ever
    (the runtime waited with it: `run` hung) or has an allocation refused and exits with its
    error message lost. Either way: one line naming the limit, quickly, nothing left."""
    for i in range(5):
        cid = f"noom-pyrt{i}"
        bundle = bundles.make(["true"], _edit(cid, {"memory": {"limit": 1 << 20,
                                                               "disableOOMKiller": True}}))
        res = pyrt("run", "--bundle", str(bundle), cid)
        assert res.returncode == 1, res.stderr
        assert err(res) in STUCK_OR_REFUSED
        assert not (pyrt.root / cid).exists()
        assert not (V1 / "memory" / "pyunion-test" / cid).exists()


@hybrid
@pytest.mark.parametrize("path, where", [
    ("system.slice:pyunion:sd1", "system.slice/pyunion-sd1.scope"),
    ("machine-pod.slice:libpod:sd1", "machine.slice/machine-pod.slice/libpod-sd1.scope"),
    ("rel/sd1", "rel/sd1"),
])
def test_cgroups_path_forms(pyrt, bundles, path, where):
    bundle = bundles.make(["sleep", "30"], _edit("x", {"pids": {"limit": 9}}, path))
    assert pyrt("run", "--detach", "--bundle", str(bundle), "sd1").returncode == 0
    own = cgroups.own_cgroups()["pids"] if path.startswith("rel") else "/"
    d = V1 / "pids" / own.lstrip("/") / where
    assert (d / "pids.max").read_text() == "9\n"
    assert pyrt("delete", "--force", "sd1").returncode == 0
    assert not d.exists()
    assert not (V1 / "pids" / where.split("/")[0]).exists()


def test_systemd_path():
    assert cgroups.systemd_path("system.slice:docker:abc") == "/system.slice/docker-abc.scope"
    assert cgroups.systemd_path("a-b-c.slice::x") == "/a.slice/a-b.slice/a-b-c.slice/x.scope"
    assert cgroups.systemd_path("-.slice:p:x") == "/p-x.scope"
    with pytest.raises(ContainerError, match="invalid slice"):
        cgroups.systemd_path("notaslice:p:x")


def test_v2_translation():
    r = {"memory": {"limit": 100, "swap": 300, "reservation": 50},
         "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1"},
         "pids": {"limit": -1}, "blockIO": {"weight": 500, "throttleReadBpsDevice": [
             {"major": 8, "minor": 0, "rate": 1000}]},
         "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
         "unified": {"memory.high": "90"}}
    assert cgroups.v2_writes(r) == [
        ("memory", "memory.swap.max", "200"), ("memory", "memory.max", "100"),
        ("memory", "memory.low", "50"), ("cpu", "cpu.weight", "39"),
        ("cpu", "cpu.max", "50000 100000"), ("cpuset", "cpuset.cpus", "0-1"),
        ("pids", "pids.max", "max"), ("io", "io.weight", "4950"),
        ("io", "io.max", "8:0 rbps=1000"), ("hugetlb", "hugetlb.2MB.max", str(4 << 20)),
        ("memory", "memory.high", "90")]
    with pytest.raises(ContainerError, match="net_cls"):
        cgroups.v2_writes({"network": {"classID": 1}})
    with pytest.raises(ContainerError, match="may not be set"):
        cgroups.v2_writes({"unified": {"cgroup.procs": "1"}})


@pytest.mark.skipif(cgroups.unified_root() is None, reason="no cgroup2 mount")
def test_v2_freezer_on_the_real_unified_hierarchy(tmp_path):
    """cgroup.freeze needs no controller: the v2 freezer path runs for real on this host."""
    d = cgroups.unified_root() / "pyunion-test-freeze"
    d.mkdir(exist_ok=True)
    cg = cgroups.Cgroup({"": str(d)}, [str(d)])
    proc = subprocess.Popen(["sleep", "30"])
    try:
        cg.add(proc.pid)
        assert cg.can_freeze() and not cg.frozen()
        cg.freeze(True)
        assert cg.frozen() and "frozen 1" in (d / "cgroup.events").read_text()
        cg.freeze(False)
        assert not cg.frozen()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(100):
            if not cg.procs():
                break
            time.sleep(0.01)
        cg.remove()
    assert not d.exists()
    os.sync()


@hybrid
def test_a_cgroup_in_use_is_not_adopted(pyrt, bundles):
    """delete kills everything in the container's cgroup, so create refuses a cgroup that
    already holds processes (runc 1.1.5 only warns, and its delete then cannot remove it)."""
    busy = V1 / "pids" / "pyunion-test" / "busy"
    busy.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        bundle = bundles.make(["true"], _edit("busy", {}))
        res = pyrt("run", "--bundle", str(bundle), "busy")
        assert res.returncode == 1
        assert err(res) == f"container's cgroup is not empty: 1 process(es) found in {busy}"
        assert sleeper.poll() is None  # still alive
        assert not (pyrt.root / "busy").exists()
        assert not (V1 / "memory" / "pyunion-test" / "busy").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for _ in range(100):
            try:
                busy.rmdir()
                break
            except OSError:
                time.sleep(0.02)


@pytest.mark.skipif(cgroups.unified_root() is None, reason="no cgroup2 mount")
def test_v2_limits_through_a_real_v2_controller():
    """hugetlb is bound to no v1 hierarchy here, so this host's cgroup2 offers it: the v2 path
    (enabling the controller in the parent's subtree_control, then hugetlb.<size>.max from
    hugepageLimits and from `unified`) runs for real. The host's subtree_control is restored."""
    root = cgroups.unified_root()
    if "hugetlb" not in (root / "cgroup.controllers").read_text().split():
        pytest.skip("no hugetlb controller on cgroup2 here")
    before = (root / "cgroup.subtree_control").read_text().split()
    d = root / "pyunion-test-v2"
    try:
        cgroups._enable_controllers(root, d)
        assert "hugetlb" in (root / "cgroup.subtree_control").read_text().split()
        d.mkdir()
        cg = cgroups.Cgroup({"": str(d)}, [str(d)])
        cg.set({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]})
        assert (d / "hugetlb.2MB.max").read_text() == f"{4 << 20}\n"
        cg.set({"unified": {"hugetlb.2MB.max": str(8 << 20)}})
        assert (d / "hugetlb.2MB.max").read_text() == f"{8 << 20}\n"
        with pytest.raises(ContainerError, match="failed to write"):
            cg.set({"pids": {"limit": 5}})  # no pids controller on this cgroup2
    finally:
        if d.exists():
            d.rmdir()
        if "hugetlb" not in before:
            (root / "cgroup.subtree_control").write_text("-hugetlb")


@hybrid
def test_exec_at_the_limit_without_oom_killer_is_an_error_not_a_hang(pyrt, bundles):
    """The same wait on `exec`'s side: the container is lowered to 1 MiB with the OOM killer
    off, so the joining Python stage cannot answer; exec fails in one line instead of hanging,
    and the container keeps running."""
    bundle = bundles.make(["sleep", "60"], _edit("noom-exec", {"memory": {
        "limit": 64 << 20, "disableOOMKiller": True}}))
    assert pyrt("run", "--detach", "--bundle", str(bundle), "noom-exec").returncode == 0
    assert pyrt("update", "--memory", str(1 << 20), "noom-exec").returncode == 0
    for _ in range(3):
        res = pyrt("exec", "noom-exec", "true")
        assert res.returncode == 255, res.stderr
        assert err(res) in (
            ("exec failed: exec process is stuck at its memory limit (the OOM killer is "
             "disabled: memory limit too low?)"),
            "exec failed: exec process exited before it started"), err(res)
        assert pyrt.state("noom-exec")["status"] == "running"
