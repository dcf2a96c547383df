"""The same bundles under runc 1.1.5 and pyunion-runtime: the container sees the same world."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.runtime.conftest import Bundles, needs_busybox, needs_root, needs_runc

pytestmark = [needs_root, needs_busybox, needs_runc]

HOST_NS = {p.name: os.readlink(p) for p in Path("/proc/self/ns").iterdir()}


def both(runc, pyrt, bundles, args, edit=None):
    """Run one bundle under each runtime (foreground `run`); return {name: CompletedProcess}."""
    out = {}
    for rt in (runc, pyrt):
        bundle = bundles.make(args, edit)
        out[rt.name] = rt("run", "--bundle", str(bundle), f"t-{rt.name}")
    return out


def test_id_hostname_exit_code(runc, pyrt, bundles):
    res = both(runc, pyrt, bundles, ["sh", "-c", "id; hostname; exit 3"])
    assert res["runc"].returncode == res["pyunion"].returncode == 3
    assert res["pyunion"].stdout == res["runc"].stdout == "uid=0(root) gid=0(root)\nrunc\n"


def _ns_changed(text: str) -> dict[str, bool]:
    """From `ls -l /proc/self/ns`: which namespaces differ from the host's."""
    out = {}
    for m in re.finditer(r"(\w+) -> (\w+:\[\d+\])", text):
        out[m.group(1)] = HOST_NS[m.group(1)] != m.group(2)
    return out


@pytest.mark.parametrize("extra", [[], ["cgroup"]])
def test_namespaces(runc, pyrt, bundles, extra):
    def edit(c):
        c["linux"]["namespaces"] += [{"type": t} for t in extra]
    res = both(runc, pyrt, bundles, ["ls", "-l", "/proc/self/ns"], edit)
    ours = _ns_changed(res["pyunion"].stdout)
    assert ours == _ns_changed(res["runc"].stdout)
    assert {k for k, v in ours.items() if v} == {"pid", "pid_for_children", "net", "ipc", "uts",
                                                 "mnt", *extra}


def _mounts(text: str) -> list[tuple[str, str, str, str]]:
    """mountinfo reduced to what matters: mount point, fs type, source, per-mount options.
    The root of each mount is left out: runc's v1 cgroup binds show the cgroups it created."""
    rows = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        fstype, source = right.split()[:2]
        opts = ",".join(sorted(set(f[5].split(",")) - {"relatime"}))
        rows.append((f[4], fstype, source if fstype != "ext4" else "-", opts))
    return sorted(rows)


def _devices(text: str) -> list[tuple[str, ...]]:
    """`ls -l /dev` reduced to mode, name, device numbers / link target (no dates)."""
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 9 or f[0] == "total":
            continue
        if f[0].startswith("c"):
            rows.append((f[0], f[-1], f[4] + f[5]))
        elif f[0].startswith("l"):
            rows.append((f[0][0], f[-3], f[-1]))
        else:
            rows.append((f[0][0], f[-1]))
    return sorted(rows)


def test_mountinfo_and_devices(runc, pyrt, bundles):
    res = both(runc, pyrt, bundles, ["sh", "-c", "cat /proc/self/mountinfo; echo ---; ls -l /dev"])
    mounts = {k: v.stdout.split("---\n")[0] for k, v in res.items()}
    devs = {k: _devices(v.stdout.split("---\n")[1]) for k, v in res.items()}
    assert devs["pyunion"] == devs["runc"]
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        assert any(d[1] == name and d[0] == "crw-rw-rw-" for d in devs["pyunion"])
    assert ("l", "ptmx", "pts/ptmx") in devs["pyunion"]
    assert ("l", "fd", "/proc/self/fd") in devs["pyunion"]
    ours = _mounts(mounts["pyunion"])
    assert ours == _mounts(mounts["runc"])
    points = [r[0] for r in ours]
    for p in ("/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
              "/proc/kcore", "/proc/sys", "/sys/firmware"):
        if p != "/proc/kcore" or os.path.exists("/proc/kcore"):
            assert p in points
    assert next(r for r in ours if r[0] == "/")[3].startswith("ro")


def test_process_settings(runc, pyrt, bundles):
    def edit(c):
        c["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10], "umask": 0o27}
        c["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 200, "soft": 123}]
        c["process"]["cwd"] = "/home/user"
        c["process"]["oomScoreAdj"] = 500
        c["process"]["env"] = ["PATH=/bin", "FOO=bar baz"]
    script = ("id; ulimit -n; umask; pwd; echo $FOO; cat /proc/self/oom_score_adj; "
              "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status; ls /proc/self/fd")
    res = both(runc, pyrt, bundles, ["sh", "-c", script], edit)
    assert res["pyunion"].returncode == 0, res["pyunion"].stderr
    assert res["pyunion"].stdout == res["runc"].stdout
    lines = res["pyunion"].stdout.splitlines()
    assert lines[0] == "uid=1000(user) gid=1000(user) groups=10(wheel)"
    assert lines[1:6] == ["123", "0027", "/home/user", "bar baz", "500"]
    assert "NoNewPrivs:\t1" in lines
    assert lines[-4:] == ["0", "1", "2", "3"]  # no fd of the runtime leaked (3 is ls's dir)


@pytest.fixture
def open_bundles(rootfs_template):
    """Bundles under a directory every uid may traverse (the user-namespace root is not host
    root, and pytest's tmp dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="pyunion-rt-"))
    base.chmod(0o755)
    yield Bundles(base, rootfs_template)
    shutil.rmtree(base, ignore_errors=True)


def test_user_namespace(runc, pyrt, open_bundles):
    bundles = open_bundles

    def edit(c):
        c["linux"]["namespaces"].append({"type": "user"})
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        c["mounts"] = [m for m in c["mounts"] if m["type"] != "cgroup"]
    script = "id; cat /proc/self/uid_map /proc/self/gid_map; readlink /proc/self/ns/user"
    res = both(runc, pyrt, bundles, ["sh", "-c", script], edit)
    assert res["pyunion"].returncode == 0, res["pyunion"].stderr
    strip = [ln for ln in res["pyunion"].stdout.splitlines()]
    assert strip[:3] == [ln for ln in res["runc"].stdout.splitlines()][:3]
    assert strip[0] == "uid=0(root) gid=0(root)"
    assert strip[1].split() == ["0", "100000", "65536"]
    assert strip[3] != HOST_NS["user"]


def test_domainname(runc, pyrt, bundles):
    """config.md's domainname is set; runc 1.1.5 ignores the field (a documented difference:
    runc 1.2 sets it too)."""
    res = both(runc, pyrt, bundles, ["cat", "/proc/sys/kernel/domainname"],
               lambda c: c.update(domainname="example.org"))
    assert res["pyunion"].stdout == "example.org\n"
    assert res["runc"].stdout == "(none)\n"


def test_sysctl_and_hostname(runc, pyrt, bundles):
    def edit(c):
        c["hostname"] = "box"
        c["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    res = both(runc, pyrt, bundles,
               ["sh", "-c", ("hostname; cat /proc/sys/net/ipv4/ip_forward; "
                             "echo 0 > /proc/sys/net/ipv4/ip_forward || echo ro")], edit)
    assert res["pyunion"].stdout == res["runc"].stdout
    assert res["pyunion"].stdout.split("\n")[:2] == ["box", "1"]
    assert res["pyunion"].stdout.rstrip().endswith("ro")


def test_readonly_root_and_bind_mount(runc, pyrt, bundles, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host\n")

    def edit(c):
        c["mounts"].append({"destination": "/data", "type": "bind", "source": str(shared),
                            "options": ["rbind", "ro", "nosuid"]})
        c["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                            "options": ["nodev", "size=1m"]})
    script = ("cat /data/in; touch /x 2>/dev/null || echo root-ro; "
              "touch /data/y 2>/dev/null || echo data-ro; touch /scratch/z && echo scratch-rw")
    res = both(runc, pyrt, bundles, ["sh", "-c", script], edit)
    assert res["pyunion"].returncode == res["runc"].returncode == 0, res["pyunion"].stderr
    assert res["pyunion"].stdout == res["runc"].stdout
    assert res["pyunion"].stdout == "from host\nroot-ro\ndata-ro\nscratch-rw\n"


def test_join_namespace_by_path(anyrt, bundles):
    def holder(c):
        c["hostname"] = "holder"
    first = bundles.make(["sleep", "30"], holder)
    assert anyrt("create", "--bundle", str(first), "holder").returncode == 0
    pid = anyrt.state("holder")["pid"]

    def joiner(c):
        c["hostname"] = ""
        for ns in c["linux"]["namespaces"]:
            if ns["type"] in ("uts", "network"):
                ns["path"] = f"/proc/{pid}/ns/{'net' if ns['type'] == 'network' else 'uts'}"
    second = bundles.make(["sh", "-c", "hostname; readlink /proc/self/ns/net"], joiner)
    res = anyrt("run", "--bundle", str(second), "joiner")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["holder", os.readlink(f"/proc/{pid}/ns/net")]
    assert anyrt("delete", "--force", "holder").returncode == 0


def test_state_json_fields(runc, pyrt, bundles):
    states = {}
    for rt in (runc, pyrt):
        bundle = bundles.make(["sleep", "30"])
        res = rt("create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), "s")
        assert res.returncode == 0, res.stderr
        st = rt.state("s")
        assert st["pid"] == int((bundle / "pid").read_text())
        assert st["bundle"] == str(bundle) and st["rootfs"] == str(bundle / "rootfs")
        states[rt.name] = st
        assert rt("delete", "--force", "s").returncode == 0
    assert set(states["pyunion"]) == set(states["runc"])
    assert states["pyunion"]["status"] == states["runc"]["status"] == "created"


def _hook_config(log: Path):
    """Every hook appends `<name> <status> <pid> <cwd>` to `log` (outside: via the bundle)."""
    def edit(c):
        def entry(name, path="/bin/sh", out=str(log)):
            script = ('read -r s; st=$(echo "$s" | grep -o \'"status": *"[a-z]*"\' | '
                      'grep -o \'[a-z]*"$\' | tr -d \'"\'); '
                      'pid=$(echo "$s" | grep -o \'"pid": *[0-9]*\' | grep -o \'[0-9]*$\'); '
                      f'echo "{name} $st ${{pid:-none}} $(pwd)" >> {out}')
            return {"path": path, "args": ["sh", "-c", script]}
        c["hooks"] = {n: [entry(n)] for n in ("prestart", "createRuntime", "createContainer",
                                              "poststart", "poststop")}
        # startContainer runs inside the container: its sh is the container's busybox and the
        # log is reached through a bind mount of the log's directory.
        c["hooks"]["startContainer"] = [entry("startContainer", out="/hooklog/" + log.name)]
        c["mounts"].append({"destination": "/hooklog", "type": "bind", "source": str(log.parent),
                            "options": ["rbind"]})
    return edit


def _hook_lines(log: Path, bundle: Path) -> list[list[str]]:
    rows = [line.split() for line in log.read_text().splitlines()]
    for r in rows:
        r[2] = "1" if r[2] == "1" else ("host" if r[2] != "none" else "none")
        r[3] = r[3].replace(str(bundle), "BUNDLE")
    return rows


def test_hooks_order_and_state(runc, pyrt, bundles, tmp_path):
    """Spec order for pyunion. runc 1.1.5 runs poststart inside `create` (with status created);
    everything else must be the same."""
    results = {}
    for rt in (runc, pyrt):
        logdir = tmp_path / f"log-{rt.name}"
        logdir.mkdir()
        log = logdir / "hooks.log"
        log.touch()
        bundle = bundles.make(["true"], _hook_config(log))
        res = rt("create", "--bundle", str(bundle), "h")
        assert res.returncode == 0, res.stderr
        after_create = len(log.read_text().splitlines())
        assert rt("start", "h").returncode == 0
        for _ in range(500):
            if rt.state("h")["status"] == "stopped":
                break
        assert rt("delete", "h").returncode == 0
        results[rt.name] = (after_create, _hook_lines(log, bundle))
    ours_n, ours = results["pyunion"]
    assert ours == [
        ["prestart", "creating", "host", "BUNDLE"],
        ["createRuntime", "creating", "host", "BUNDLE"],
        ["createContainer", "creating", "1", "BUNDLE/rootfs"],
        ["startContainer", "created", "1", "/"],
        ["poststart", "running", "host", "BUNDLE"],
        ["poststop", "stopped", "none", ours[-1][3]],
    ]
    assert ours_n == 3  # poststart is part of `start` (spec), not of `create`
    runc_n, theirs = results["runc"]
    assert runc_n == 4 and theirs[3][0] == "poststart"  # the runc 1.1.5 deviation
    theirs_spec_order = theirs[:3] + [theirs[4], theirs[3], theirs[5]]
    for a, b in zip(ours, theirs_spec_order, strict=False):
        assert a[:3] == b[:3] or (a[0] == b[0] == "poststart")
        assert a[3] == b[3] or a[0] == "poststop"


def test_list_json(anyrt, bundles):
    bundle = bundles.make(["sleep", "30"])
    assert json.loads(anyrt("list", "--format", "json").stdout) is None
    assert anyrt("create", "--bundle", str(bundle), "l1").returncode == 0
    rows = json.loads(anyrt("list", "--format", "json").stdout)
    assert [(r["id"], r["status"]) for r in rows] == [("l1", "created")]
    assert "l1" in anyrt("list").stdout


def test_tmpcopyup(runc, pyrt, bundles):
    """runc's tmpcopyup (podman puts it on --tmpfs and --read-only's /run, /tmp, /var/tmp): the
    tmpfs starts with the image's files, with their modes and owners, symlinks not followed."""
    def edit(c):
        c["mounts"].append({"destination": "/etc", "type": "tmpfs", "source": "tmpfs",
                            "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]})
        c["mounts"].append({"destination": "/home", "type": "tmpfs", "source": "tmpfs",
                            "options": ["tmpcopyup", "mode=755"]})

    def prepare(bundle):
        etc = bundle / "rootfs" / "etc"
        (etc / "sub").mkdir()
        (etc / "sub" / "secret").write_text("s\n")
        os.chown(etc / "sub" / "secret", 1000, 10)
        (etc / "sub" / "secret").chmod(0o4750)
        (etc / "link").symlink_to("/proc/self/status")
    script = ("mount | grep -E ' /(etc|home) ' | cut -d' ' -f1-5; ls -ln /etc /etc/sub /home |"
              " cut -c1-31,43-; readlink /etc/link; head -1 /etc/passwd; touch /etc/new && echo rw")
    out = {}
    for rt in (runc, pyrt):
        bundle = bundles.make(["sh", "-c", script], edit)
        prepare(bundle)
        res = rt("run", "--bundle", str(bundle), f"tc-{rt.name}")
        assert res.returncode == 0, (rt.name, res.stderr)
        out[rt.name] = res.stdout
        assert not (bundle / "rootfs" / "etc" / "new").exists()
    assert out["pyunion"] == out["runc"]
    assert "-rwsr-x---    1 1000     10" in out["pyunion"]
    assert "root:x:0:0:root:/root:/bin/sh\nrw\n" in out["pyunion"]
