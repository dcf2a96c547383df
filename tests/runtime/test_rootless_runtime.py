"""`pyunion run` and `pyunion-runtime` as a real unprivileged user (issue 6, the runtime part).

The user (tests/rootless.py) has subordinate ranges, so `pyunion run` maps the full range through
newuidmap/newgidmap; the runtime tests write a single-id map (0 -> the user) themselves, the case
of a user without ranges. Every test checks that nothing of the user's is left running/mounted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import tests.rootless as rootless_fixture
from snapshotter.runtime import rootless, spec
from tests import imagebuild
from tests.runtime.conftest import APPLETS, BUSYBOX, needs_busybox
from unionfs import mountinfo

pytestmark = [needs_busybox,
              pytest.mark.root]   # creates a user

if shutil.which("newuidmap") is None:
    pytestmark.append(pytest.mark.skip(reason="newuidmap missing (package uidmap)"))


@pytest.fixture(scope="module")
def user():
    """The user, with image bb:1 (tests/imagebuild.py's busybox image) in its own store."""
    with rootless_fixture.unprivileged_user("pyurt") as u:
        img = imagebuild.build_busybox_image(u.home / "img")
        subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", str(img)], check=True, timeout=30)
        u.pyunion("image", "import", str(img), "--name", "bb:1")
        try:
            yield u
        finally:
            _kill_leftovers(u)


def _user_pids(u) -> list[int]:
    """Processes of the user or of its subordinate ids (the container's)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            uid = d.stat().st_uid
        except OSError:
            continue
        if uid == u.uid or u.subid_start <= uid < u.subid_start + rootless_fixture.SUBID_COUNT:
            out.append(int(d.name))
    return out


def _kill_leftovers(u) -> None:
    for pid in _user_pids(u):  # only the test user's: nobody else runs as it
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for m in mountinfo.mounts():
        mp = m.mountpoint
        if mp.startswith(str(u.home)):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True, timeout=30,
                           check=False)


def _describe(pid: int) -> str | None:
    """Command line of a live process; None for a zombie (pid 1 of this host reaps it, which
    is not ours to wait for: a daemon of a finished mount ends as one)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        if "\nState:\tZ" in status:
            return None
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return None


def assert_clean(u) -> None:
    mounts = [m.mountpoint for m in mountinfo.mounts() if m.mountpoint.startswith(str(u.home))]
    assert mounts == []
    left = {p: _describe(p) for p in _user_pids(u)}
    assert {p: d for p, d in left.items() if d is not None} == {}


# -- pyunion run -------------------------------------------------------------------------------

def test_run_maps_user_to_root_with_full_range(user):
    r = user.pyunion("run", "--rm", "bb:1", "sh", "-c",
                     "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map", timeout=60)
    lines = [line.split() for line in r.stdout.splitlines()]
    assert lines[0] == ["0"] and lines[1] == ["0"]
    want = [["0", str(user.uid), "1"], ["1", str(user.subid_start), "65536"]]
    assert lines[2:4] == want
    assert lines[4:6] == [["0", str(user.gid), "1"], ["1", str(user.subid_start), "65536"]]
    assert_clean(user)


def test_run_network_namespace_has_loopback_only_and_up(user):
    r = user.pyunion("run", "--rm", "bb:1", "sh", "-c",
                     "ls /sys/class/net; cat /sys/class/net/lo/flags", timeout=60)
    *names, flags = r.stdout.split()
    assert names == ["lo"]
    assert int(flags, 16) & 1  # IFF_UP
    assert_clean(user)


def test_run_image_owners_and_chown_inside(user):
    """Image owners show as in the image; container root may chown to a subordinate id."""
    r = user.pyunion("run", "--rm", "bb:1", "sh", "-c",
                     "stat -c '%u:%g %a' /etc/passwd /home/app /root; "
                     "touch /home/app/f && chown 1000:1000 /home/app/f && stat -c %u:%g "
                     "/home/app/f", timeout=60)
    assert r.stdout.split("\n")[:4] == ["0:0 644", "1000:1000 755", "0:0 700", "1000:1000"]
    assert_clean(user)


def test_run_commit_as_user(user):
    """A file written in the container is the user's on disk; --commit keeps the change."""
    user.pyunion("run", "--name", "c1", "--commit", "bb:changed", "bb:1", "sh", "-c",
                 "echo hi > /new; rm /etc/motd", timeout=60)
    store = user.home / ".local" / "share" / "pyunion"
    found = list(store.glob("snapshots/*/fs/new"))  # the kept upper and the committed layer
    assert found
    assert {(p.stat().st_uid, p.stat().st_gid) for p in found} == {(user.uid, user.gid)}
    r = user.pyunion("run", "--rm", "bb:changed", "sh", "-c",
                     "cat /new; test -e /etc/motd && echo motd; true", timeout=60)
    assert r.stdout == "hi\n"
    r = user.pyunion("run", "--rm", "bb:1", "sh", "-c", "test -e /new || echo gone; "
                     "test -e /etc/motd && echo motd", timeout=60)
    assert r.stdout == "gone\nmotd\n"  # the lower layers are untouched
    assert_clean(user)


def test_run_failure_leaves_nothing(user):
    r = user.pyunion("run", "--rm", "--name", "bad", "bb:1", "/no/such/program", check=False,
                     timeout=60)
    assert r.returncode != 0
    assert "/no/such/program" in r.stderr
    assert_clean(user)
    assert not (user.home / ".local/share/pyunion/runtime/state/bad").exists()
    assert not (user.home / ".local/share/pyunion/runtime/bundles/bad").exists()


def test_run_refuses_a_non_root_user_clearly(user):
    r = user.pyunion("run", "--rm", "--name", "u1000", "-u", "1000", "bb:1", "id", check=False,
                     timeout=60)
    assert r.returncode == 125
    assert len(r.stderr.strip().splitlines()) == 1 and "runs as root (uid 0) only" in r.stderr
    assert_clean(user)
    runtime = user.home / ".local/share/pyunion/runtime"
    assert not (runtime / "bundles/u1000").exists() and not (runtime / "state/u1000").exists()
    snaps = user.pyunion("snapshot", "ls").stdout
    assert "run-u1000" not in snaps


# -- pyunion-runtime ---------------------------------------------------------------------------

def _bundle(u, name: str, args: list[str], edit=None) -> Path:
    """A busybox bundle owned by the user; the single-id rootless config."""
    bundle = u.home / name
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for a in APPLETS:
        (rootfs / "bin" / a).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (rootfs / d).mkdir()
    subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", str(bundle)], check=True, timeout=30)
    u.pyunion("runtime", "spec", "--rootless", "--bundle", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": u.uid, "size": 1}]
    assert "resources" not in config["linux"]
    config["process"]["args"] = args
    config["root"]["readonly"] = False
    if edit:
        edit(config)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _rt(u, *args: str, check: bool = True):
    return u.pyunion("runtime", "--root", str(u.home / "rt"), *args, check=check, timeout=60)


def _create(u, bundle: Path, cid: str) -> tuple[int, str]:
    """create with stdio on files: the container keeps the runtime's stdio (as with runc), so
    a pipe would stay open as long as it runs. Returns (exit code, stderr)."""
    out, err = u.home / f"{cid}.out", u.home / f"{cid}.err"
    exe = rootless_fixture.user_python()[0]
    script = 'o=$1 e=$2; shift 2; exec "$@" >"$o" 2>"$e" </dev/null'
    r = u.run(["sh", "-c", script, "sh", str(out), str(err), exe, "-m",
               "unionfs", "runtime", "--root", str(u.home / "rt"), "create", "--bundle",
               str(bundle), cid], check=False, timeout=60)
    return r.returncode, err.read_text()


def _state(u, cid: str) -> dict:
    return json.loads(_rt(u, "state", cid).stdout)


def test_runtime_lifecycle_single_id(user):
    def edit(c):  # asks for limits: said once on stderr, not applied
        c["linux"]["resources"] = {"memory": {"limit": 1 << 30}, "pids": {"limit": 100}}
    bundle = _bundle(user, "b1", ["sh", "-c", "cat /proc/self/uid_map > /tmp/map; sleep 30"],
                     edit)
    code, err = _create(user, bundle, "ct1")
    assert code == 0, err
    assert err.count("linux.resources ignored") == 1
    st = _state(user, "ct1")
    assert st["status"] == "created" and st["pid"] > 0
    _rt(user, "start", "ct1")
    assert _state(user, "ct1")["status"] == "running"
    _rt(user, "kill", "ct1", "KILL")
    for _ in range(500):
        if _state(user, "ct1")["status"] == "stopped":
            break
    assert _state(user, "ct1")["status"] == "stopped"
    assert (bundle / "rootfs/tmp/map").read_text().split() == ["0", str(user.uid), "1"]
    _rt(user, "delete", "ct1")
    r = _rt(user, "state", "ct1", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
    assert not (user.home / "rt" / "ct1").exists()
    assert_clean(user)


def test_runtime_device_bound_from_host(user):
    def edit(c):
        c["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    bundle = _bundle(user, "b2", ["sh", "-c", "stat -c '%F %t:%T' /dev/fuse /dev/null"], edit)
    r = _rt(user, "run", "--bundle", str(bundle), "ct2")
    assert r.stdout.splitlines() == ["character special file a:e5",
                                     "character special file 1:3"]
    assert_clean(user)


def test_runtime_sysfs_without_network_namespace_is_a_host_bind(user):
    """The kernel refuses a new sysfs to a user namespace that owns no network namespace:
    the host's /sys is bound instead, read-only as the config asks (rootless runc's way)."""
    def edit(c):
        c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"]
                                    if n["type"] != "network"]
    script = "ls /sys/class/net; touch /sys/x 2>/dev/null && echo writable; true"
    bundle = _bundle(user, "b3", ["sh", "-c", script], edit)
    r = _rt(user, "run", "--bundle", str(bundle), "ct3")
    assert r.stdout.split() == sorted(os.listdir("/sys/class/net"))
    assert "writable" not in r.stdout
    assert_clean(user)


@pytest.mark.parametrize("case", ["missing-device", "no-userns", "unmapped-helper"])
def test_runtime_refusals_leave_nothing(user, case):
    def edit(c):
        if case == "missing-device":
            c["linux"]["devices"] = [{"path": "/dev/pyunion-nope", "type": "c", "major": 10,
                                      "minor": 251}]
        elif case == "no-userns":
            c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"]
                                        if n["type"] != "user"]
            del c["linux"]["uidMappings"], c["linux"]["gidMappings"]
        else:  # a range that is not the user's: newuidmap refuses it
            c["linux"]["uidMappings"].append({"containerID": 1, "hostID": 1, "size": 10})
    bundle = _bundle(user, f"b-{case}", ["true"], edit)
    code, err = _create(user, bundle, "bad")
    assert code != 0
    msg = err.strip()
    assert len(msg.splitlines()) == 1
    assert {"missing-device": "cannot be created in a user namespace",
            "no-userns": "needs a user namespace",
            "unmapped-helper": "newuidmap"}[case] in msg
    assert not (user.home / "rt" / "bad").exists()
    assert_clean(user)


# -- pure parts --------------------------------------------------------------------------------

def test_subid_range_by_name_or_uid():
    text = "alice:100000:65536\n# x\n1001:200000:1000\nbad:line\n"
    assert rootless.subid_range(text, "alice", 1000) == (100000, 65536)
    assert rootless.subid_range(text, "bob", 1001) == (200000, 1000)
    assert rootless.subid_range(text, "carol", 1002) is None


def test_mount_idmap_keeps_own_id_first():
    maps = [{"containerID": 0, "hostID": 1004, "size": 1},
            {"containerID": 1, "hostID": 165536, "size": 65536}]
    assert rootless.mount_idmap(maps, 1004) == "1004:1004:1:0:1004:1:1:165536:65536"


def test_make_rootless_drops_unmapped_devpts_gid_and_resources():
    config = spec.default_spec()
    single = [{"containerID": 0, "hostID": 1004, "size": 1}]
    rootless.make_rootless(config, single, single)
    devpts = next(m for m in config["mounts"] if m["type"] == "devpts")
    assert "gid=5" not in devpts["options"] and "newinstance" in devpts["options"]
    assert "resources" not in config["linux"]
    assert {"type": "user"} in config["linux"]["namespaces"]
    spec.validate(config)
    full = [*single, {"containerID": 1, "hostID": 165536, "size": 65536}]
    config = rootless.make_rootless(spec.default_spec(), full, full)
    assert "gid=5" in next(m for m in config["mounts"] if m["type"] == "devpts")["options"]
