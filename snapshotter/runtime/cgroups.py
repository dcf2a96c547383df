"""The container's cgroups: v1 (legacy/hybrid) or v2 (unified), chosen from the host's mounts as
runc's cgroupfs driver does, and linux.resources written into them.

A container's cgroup is one directory per hierarchy: {key: path}, where key names the hierarchy
by its controllers as /proc/self/cgroup does ("cpu", "cpu,cpuacct", "name=systemd", and "" for
cgroup2). On a hybrid host (v1 controllers plus a controller-less cgroup2) the container joins
all of them, as runc does. `v1_writes`/`v2_writes` translate linux.resources into ordered
(controller, file, value) writes and are pure; `Cgroup.set` performs them.

Paths (linux.cgroupsPath): "/a/b" is below each hierarchy's root; "a/b" below the runtime's own
cgroup (runc's rule); "slice:prefix:name" is laid out as systemd would place that unit
(/system.slice/prefix-name.scope, nested slices expanded), though no systemd unit is made; empty
means /pyunion/<id>. Only the directories create made are removed.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from snapshotter.runtime.errors import ContainerError
from unionfs import mountinfo

PARENT = "pyunion"
# linux.resources keys -> the v1 controller they need.
_V1_CONTROLLER = {"memory": "memory", "cpu": "cpu", "pids": "pids", "blockIO": "blkio",
                  "hugepageLimits": "hugetlb", "devices": "devices"}


def mounts() -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, super options) of the host's cgroup hierarchies, from mountinfo."""
    try:
        table = mountinfo.mounts()
    except OSError:
        return []
    return [(m.mountpoint, m.fstype, m.super_options) for m in table
            if m.fstype in ("cgroup", "cgroup2")]


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """hierarchy key (e.g. "cpu,cpuacct", "name=systemd", "" for v2) -> the process's path."""
    own = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        own[ctrls] = path
    return own


def unified_root() -> Path | None:
    for mp, fstype, _ in mounts():
        if fstype == "cgroup2":
            return Path(mp)
    return None


def hierarchies() -> dict[str, Path]:
    """key -> mountpoint for each hierarchy this process is in (first mount of each)."""
    own = own_cgroups()
    out: dict[str, Path] = {}
    for mp, fstype, superopts in mounts():
        if fstype == "cgroup2":
            out.setdefault("", Path(mp))
            continue
        opts = set(superopts.split(","))
        key = next((k for k in own if k and set(k.split(",")) <= opts), None)
        if key is not None:
            out.setdefault(key, Path(mp))
    return out


def is_unified(hier: dict[str, Path] | None = None) -> bool:
    """cgroup v2 only (no v1 controller hierarchy)."""
    hier = hierarchies() if hier is None else hier
    return "" in hier and len(hier) == 1


def systemd_path(cgroups_path: str) -> str:
    """"slice:prefix:name" -> the path systemd gives that scope (runc's systemd driver)."""
    slice_, prefix, name = cgroups_path.split(":")
    slice_ = slice_ or "system.slice"
    if not slice_.endswith(".slice") or "/" in slice_:
        raise ContainerError(f"invalid slice name: {slice_}")
    parts = []
    if slice_ != "-.slice":
        stem = slice_[:-len(".slice")]
        words = stem.split("-")
        parts = ["-".join(words[:i + 1]) + ".slice" for i in range(len(words))]
    unit = name if name.endswith(".slice") else (f"{prefix}-{name}.scope" if prefix
                                                 else f"{name}.scope")
    return "/" + "/".join([*parts, unit])


def relative_path(cid: str, cgroups_path: str | None) -> tuple[str, bool]:
    """(path, absolute?) of the container's cgroup inside each hierarchy."""
    if not cgroups_path:
        return f"/{PARENT}/{cid}", True
    if cgroups_path.count(":") == 2:
        return systemd_path(cgroups_path), True
    clean = os.path.normpath("/" + cgroups_path)
    return clean, cgroups_path.startswith("/")


class Cgroup:
    """The directories of one container's cgroup, one per hierarchy."""

    def __init__(self, paths: dict[str, str], made: list[str] | None = None) -> None:
        self.paths = paths
        self.made = made or []  # directories create made, deepest last

    # -- state ----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"paths": self.paths, "made": self.made}

    @classmethod
    def from_state(cls, st: dict[str, Any] | None) -> Cgroup | None:
        return cls(st["paths"], st.get("made")) if st else None

    @property
    def unified(self) -> bool:
        return list(self.paths) == [""]

    def dir(self, controller: str) -> Path | None:
        """The directory of the hierarchy holding CONTROLLER ("" = cgroup2)."""
        if self.unified:
            return Path(self.paths[""])
        for key, path in self.paths.items():
            if controller in key.split(","):
                return Path(path)
        return None

    def _tracking(self) -> Path:
        """The hierarchy whose cgroup.procs lists the container's processes."""
        for c in ("pids", "freezer", "memory", "cpu", "devices", ""):
            d = self.dir(c) if c else (Path(self.paths[""]) if "" in self.paths else None)
            if d is not None:
                return d
        return Path(next(iter(self.paths.values())))

    # -- create / join / remove -----------------------------------------------------------
    @classmethod
    def create(cls, cid: str, cgroups_path: str | None, resources: dict[str, Any] | None,
               rootless: bool = False) -> Cgroup | None:
        """Make (or join) the container's cgroup in every hierarchy. A controller the resources
        need and the host lacks is an error, as runc's `cannot set X limit`. Rootless: no
        limits, and None when no hierarchy could be used at all (no delegation)."""
        hier = hierarchies()
        own = own_cgroups()
        rel, absolute = relative_path(cid, cgroups_path)
        need: set[str] = set()
        if resources and not rootless:
            writes = v2_writes(resources) if is_unified(hier) else v1_writes(resources)
            need = {c for c, _, _ in writes}
        if not is_unified(hier):
            for c in sorted(need):
                if not any(c in k.split(",") for k in hier):
                    raise ContainerError(f"cannot set {c} limit: the {c} cgroup controller is "
                                         "not mounted on this host")
        paths: dict[str, str] = {}
        made: list[str] = []
        try:
            for key, mp in hier.items():
                base = mp if absolute else mp / own.get(key, "/").lstrip("/")
                path = base / rel.lstrip("/")
                busy = _procs_of(path)
                if busy:
                    # delete kills what is in the container's cgroup: never adopt others'
                    raise ContainerError(f"container's cgroup is not empty: {len(busy)} "
                                         f"process(es) found in {path}")
                try:
                    made += _mkdirs(path, key)
                    if key == "" and is_unified(hier):
                        _enable_controllers(mp, path)
                except OSError as e:
                    if rootless or (not need and key in ("", "name=systemd")):
                        continue  # tracking only: run without it, as before
                    raise ContainerError(f"cgroup {path}: {e.strerror}") from None
                paths[key] = str(path)
        except BaseException:
            for d in reversed(made):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            raise
        return cls(paths, made) if paths else None

    def add(self, pid: int) -> None:
        for path in self.paths.values():
            Path(path, "cgroup.procs").write_text(f"{pid}\n")

    def procs(self) -> list[int]:
        try:
            return [int(x) for x in (self._tracking() / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self, sig: int) -> None:
        for pid in self.procs():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir what create made: each leaf once its processes are gone (they may take a
        moment), then the parents create made if nothing else lives in them now."""
        deadline = time.monotonic() + timeout
        leaves = set(self.paths.values())
        for d in reversed(self.made):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if d not in leaves:
                        break  # a parent shared with another container: not ours to wait on
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer took from this cgroup."""
        d = self.dir("memory")
        name = "memory.events" if self.unified else "memory.oom_control"
        return _kv(d, name).get("oom_kill", 0)

    def limit_hits(self) -> int:
        """How often usage reached the memory limit (v1 memory.failcnt, v2 memory.events max)."""
        d = self.dir("memory")
        if self.unified:
            return _kv(d, "memory.events").get("max", 0)
        return _read_int(d, "memory.failcnt")

    def stuck_at_limit(self) -> bool:
        """At its memory limit with the OOM killer disabled (v1 disableOOMKiller): its tasks
        wait in the kernel until memory is freed or they are killed."""
        if self.unified:
            return False  # v2 has no switch for the OOM killer
        oom = _kv(self.dir("memory"), "memory.oom_control")
        return bool(oom.get("oom_kill_disable") and oom.get("under_oom"))

    # -- freezer --------------------------------------------------------------------------
    def can_freeze(self) -> bool:
        if not self.unified and self.dir("freezer") is not None:
            return True
        return "" in self.paths and Path(self.paths[""], "cgroup.freeze").exists()

    def frozen(self) -> bool:
        if self.unified or self.dir("freezer") is None:
            f = Path(self.paths.get("", ""), "cgroup.freeze")
            try:
                return "" in self.paths and f.read_text().strip() == "1"
            except OSError:
                return False
        freezer = self.dir("freezer")
        try:
            return freezer is not None and \
                (freezer / "freezer.state").read_text().strip() != "THAWED"
        except OSError:
            return False

    def freeze(self, on: bool, timeout: float = 10.0) -> None:
        d = self.dir("freezer")
        if d is not None and not self.unified:
            state = "FROZEN" if on else "THAWED"
            deadline = time.monotonic() + timeout
            while True:
                (d / "freezer.state").write_text(state)
                if (d / "freezer.state").read_text().strip() == state:
                    return
                if time.monotonic() > deadline:
                    raise ContainerError(f"unable to freeze: freezer.state stays "
                                         f"{(d / 'freezer.state').read_text().strip()}")
                time.sleep(0.01)
        if "" not in self.paths:
            raise ContainerError("cannot pause: no freezer cgroup for this container")
        u = Path(self.paths[""])
        (u / "cgroup.freeze").write_text("1" if on else "0")
        deadline = time.monotonic() + timeout
        want = f"frozen {1 if on else 0}"
        while want not in (u / "cgroup.events").read_text().splitlines():
            if time.monotonic() > deadline:
                raise ContainerError("unable to freeze: cgroup.events does not say frozen")
            time.sleep(0.01)

    # -- resources ------------------------------------------------------------------------
    def set(self, resources: dict[str, Any], warn: Any = None) -> None:
        writes = (v2_writes(resources) if self.unified else v1_writes(resources, warn))
        for controller, name, value in writes:
            d = self.dir(controller if not self.unified else "")
            if d is None:
                raise ContainerError(f"cannot set {controller} limit: container could not join "
                                     "or create cgroup")
            _write(d, name, value)


def _procs_of(path: Path) -> list[str]:
    try:
        return (path / "cgroup.procs").read_text().split()
    except OSError:
        return []


def _mkdirs(path: Path, key: str) -> list[str]:
    """mkdir -p, returning what was made; cpuset dirs get their parent's cpus/mems (else
    nothing could join them)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        d.mkdir()
        made.append(str(d))
        if "cpuset" in key.split(","):
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())
    return made


def _enable_controllers(root: Path, path: Path) -> None:
    """cgroup v2: a child can only use the controllers its parent lists in
    cgroup.subtree_control; enable every available one from ROOT down to PATH's parent, as
    runc does (one at a time: a controller the kernel refuses here is skipped)."""
    d = root
    for part in path.relative_to(root).parts:
        try:
            available = (d / "cgroup.controllers").read_text().split()
        except OSError:
            return
        for c in available:
            try:
                (d / "cgroup.subtree_control").write_text(f"+{c}")
            except OSError:
                pass
        d = d / part


def _write(d: Path, name: str, value: str) -> None:
    path = d / name
    if name == "memory.limit_in_bytes+swap":  # see v1_writes: order against memsw
        limit, swap = value.split()
        try:
            _write(d, "memory.limit_in_bytes", limit)
            _write(d, "memory.memsw.limit_in_bytes", swap)
        except ContainerError:
            _write(d, "memory.memsw.limit_in_bytes", swap)
            _write(d, "memory.limit_in_bytes", limit)
        return
    if name == "blkio.weight" and not path.exists() and (d / "blkio.bfq.weight").exists():
        path = d / "blkio.bfq.weight"
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        what = "no such file (not supported by this kernel/host)" \
            if e.errno == errno.ENOENT else e.strerror
        raise ContainerError(f"failed to write {value!r} to {path}: {what}") from None


def _dev(d: dict[str, Any]) -> str:
    return f"{d['major']}:{d['minor']}"


def _num(v: int) -> str:
    return str(v)


# linux.resources.cpu key -> cgroup v1 file, in runc's order; True where 0 is a value to write
# (burst, idle) rather than "not set".
_V1_CPU = (("shares", "cpu.shares", False), ("period", "cpu.cfs_period_us", False),
           ("quota", "cpu.cfs_quota_us", False), ("burst", "cpu.cfs_burst_us", True),
           ("realtimePeriod", "cpu.rt_period_us", False),
           ("realtimeRuntime", "cpu.rt_runtime_us", False), ("idle", "cpu.idle", True))


def v1_writes(r: dict[str, Any], warn: Any = None) -> list[tuple[str, str, str]]:
    """linux.resources -> [(controller, file, value)] for cgroup v1, in runc's order."""
    if r.get("unified"):
        raise ContainerError("invalid configuration: cannot use unified on cgroup v1")
    if r.get("rdma"):
        raise ContainerError("linux.resources.rdma is not supported")
    w: list[tuple[str, str, str]] = []
    if r.get("devices") is not None:
        w += device_writes(r["devices"])
    mem = r.get("memory") or {}
    if mem.get("limit") and mem.get("swap"):
        w.append(("memory", "memory.limit_in_bytes+swap", f"{mem['limit']} {mem['swap']}"))
    elif mem.get("limit"):
        w.append(("memory", "memory.limit_in_bytes", _num(mem["limit"])))
    elif mem.get("swap"):
        w.append(("memory", "memory.memsw.limit_in_bytes", _num(mem["swap"])))
    if mem.get("reservation"):
        w.append(("memory", "memory.soft_limit_in_bytes", _num(mem["reservation"])))
    if mem.get("kernel") and warn:
        warn("linux.resources.memory.kernel ignored: kernel memory limits are deprecated "
             "(as runc 1.1)")
    if mem.get("kernelTCP"):
        w.append(("memory", "memory.kmem.tcp.limit_in_bytes", _num(mem["kernelTCP"])))
    if mem.get("useHierarchy") is not None:
        w.append(("memory", "memory.use_hierarchy", "1" if mem["useHierarchy"] else "0"))
    if mem.get("disableOOMKiller"):
        w.append(("memory", "memory.oom_control", "1"))
    if mem.get("swappiness") is not None and 0 <= mem["swappiness"] <= 100:
        w.append(("memory", "memory.swappiness", _num(mem["swappiness"])))
    elif mem.get("swappiness") is not None and mem["swappiness"] != -1:
        raise ContainerError(f"invalid memory swappiness {mem['swappiness']}: 0..100")
    cpu = r.get("cpu") or {}
    for key, name, zero_counts in _V1_CPU:
        if cpu.get(key) or (zero_counts and cpu.get(key) is not None):
            w.append(("cpu", name, _num(cpu[key])))
    if cpu.get("cpus"):
        w.append(("cpuset", "cpuset.cpus", cpu["cpus"]))
    if cpu.get("mems"):
        w.append(("cpuset", "cpuset.mems", cpu["mems"]))
    pids = r.get("pids") or {}
    if pids.get("limit"):
        w.append(("pids", "pids.max", "max" if pids["limit"] < 0 else _num(pids["limit"])))
    bio = r.get("blockIO") or {}
    if bio.get("weight"):
        w.append(("blkio", "blkio.weight", _num(bio["weight"])))
    if bio.get("leafWeight"):
        w.append(("blkio", "blkio.leaf_weight", _num(bio["leafWeight"])))
    for d in bio.get("weightDevice") or []:
        if d.get("weight"):
            w.append(("blkio", "blkio.weight_device", f"{_dev(d)} {d['weight']}"))
        if d.get("leafWeight"):
            w.append(("blkio", "blkio.leaf_weight_device", f"{_dev(d)} {d['leafWeight']}"))
    for key, name in (("throttleReadBpsDevice", "read_bps_device"),
                      ("throttleWriteBpsDevice", "write_bps_device"),
                      ("throttleReadIOPSDevice", "read_iops_device"),
                      ("throttleWriteIOPSDevice", "write_iops_device")):
        for d in bio.get(key) or []:
            w.append(("blkio", f"blkio.throttle.{name}", f"{_dev(d)} {d['rate']}"))
    for h in r.get("hugepageLimits") or []:
        w.append(("hugetlb", f"hugetlb.{h['pageSize']}.limit_in_bytes", _num(h["limit"])))
    net = r.get("network") or {}
    if net.get("classID"):
        w.append(("net_cls", "net_cls.classid", _num(net["classID"])))
    for p in net.get("priorities") or []:
        w.append(("net_prio", "net_prio.ifpriomap", f"{p['name']} {p['priority']}"))
    return w


_DEFAULT_ALLOWED = [  # runc's AllowedDevices, appended after the config's rules
    {"allow": True, "type": "c", "access": "m"}, {"allow": True, "type": "b", "access": "m"},
    *({"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
      for ma, mi in ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 2), (10, 200))),
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
]


def device_writes(rules: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The rules plus runc's default allowed devices, reduced as runc's device emulator does
    to a deny-all followed by the remaining allow rules in sorted order."""
    allowed: dict[tuple[str, int, int], str] = {}
    default_allow = False
    for rule in [*rules, *_DEFAULT_ALLOWED]:
        typ = rule.get("type") or "a"
        key = (typ, -1 if rule.get("major") is None else rule["major"],
               -1 if rule.get("minor") is None else rule["minor"])
        access = rule.get("access") or "rwm"
        if typ == "a":
            allowed.clear()
            default_allow = bool(rule.get("allow"))
            continue
        if rule.get("allow"):
            allowed[key] = "".join(c for c in "rwm" if c in allowed.get(key, "") + access)
        elif key in allowed:
            left = "".join(c for c in allowed[key] if c not in access)
            if left:
                allowed[key] = left
            else:
                del allowed[key]
    if default_allow:
        return [("devices", "devices.allow", "a")]

    def num(n: int) -> str:
        return "*" if n < 0 else str(n)
    return [("devices", "devices.deny", "a")] + [
        ("devices", "devices.allow", f"{t} {num(ma)}:{num(mi)} {acc}")
        for (t, ma, mi), acc in sorted(allowed.items())]


def _max(v: int) -> str:
    return "max" if v < 0 else str(v)


def v2_writes(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """linux.resources -> [(controller, file, value)] for cgroup v2 (runc's conversions:
    shares -> weight, blkio weight -> io.weight, swap is memory+swap in the spec but swap alone
    in memory.swap.max). Device rules need an eBPF program on v2: not applied (see docs)."""
    if r.get("rdma"):
        raise ContainerError("linux.resources.rdma is not supported")
    if r.get("network"):
        raise ContainerError("linux.resources.network: net_cls/net_prio do not exist on "
                             "cgroup v2")
    w: list[tuple[str, str, str]] = []
    mem = r.get("memory") or {}
    if mem.get("swap"):
        swap = mem["swap"]
        if swap > 0 and not mem.get("limit"):
            raise ContainerError("cgroup v2: memory.swap needs memory.limit")
        w.append(("memory", "memory.swap.max",
                  "max" if swap < 0 else str(swap - mem["limit"])))
    if mem.get("limit"):
        w.append(("memory", "memory.max", _max(mem["limit"])))
    if mem.get("reservation"):
        w.append(("memory", "memory.low", _num(mem["reservation"])))
    cpu = r.get("cpu") or {}
    if cpu.get("shares"):
        w.append(("cpu", "cpu.weight", str(1 + ((cpu["shares"] - 2) * 9999) // 262142)))
    if cpu.get("quota") or cpu.get("period"):
        quota = cpu.get("quota") or -1
        w.append(("cpu", "cpu.max", f"{_max(quota)} {cpu.get('period') or 100000}"))
    if cpu.get("idle") is not None:
        w.append(("cpu", "cpu.idle", _num(cpu["idle"])))
    if cpu.get("cpus"):
        w.append(("cpuset", "cpuset.cpus", cpu["cpus"]))
    if cpu.get("mems"):
        w.append(("cpuset", "cpuset.mems", cpu["mems"]))
    pids = r.get("pids") or {}
    if pids.get("limit"):
        w.append(("pids", "pids.max", _max(pids["limit"])))
    bio = r.get("blockIO") or {}
    if bio.get("weight"):
        w.append(("io", "io.weight", str(1 + (bio["weight"] - 10) * 9999 // 990)))
    for key, name in (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
                      ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops")):
        for d in bio.get(key) or []:
            w.append(("io", "io.max", f"{_dev(d)} {name}={d['rate']}"))
    for h in r.get("hugepageLimits") or []:
        w.append(("hugetlb", f"hugetlb.{h['pageSize']}.max", _num(h["limit"])))
    for k, v in (r.get("unified") or {}).items():
        if "/" in k or k.startswith("cgroup."):
            raise ContainerError(f"linux.resources.unified: {k!r} may not be set")
        w.append((k.split(".")[0], k, v))
    return w


# -- stats (runc's `events --stats` JSON) -------------------------------------------------------
def _read_int(d: Path | None, name: str) -> int:
    if d is None:
        return 0
    try:
        text = (d / name).read_text().strip()
    except OSError:
        return 0
    return 0 if text == "max" else int(text)


def _kv(d: Path | None, name: str) -> dict[str, int]:
    if d is None:
        return {}
    try:
        lines = (d / name).read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (ln.split() for ln in lines if len(ln.split()) == 2)}


def stats(cg: Cgroup) -> dict[str, Any]:
    """The container's usage in the layout of runc's `events --stats` (types/events.go)."""
    if cg.unified:
        d = Path(cg.paths[""])
        cpu = _kv(d, "cpu.stat")
        return {
            "cpu": {"usage": {"total": cpu.get("usage_usec", 0) * 1000,
                              "kernel": cpu.get("system_usec", 0) * 1000,
                              "user": cpu.get("user_usec", 0) * 1000},
                    "throttling": {"periods": cpu.get("nr_periods", 0),
                                   "throttled_periods": cpu.get("nr_throttled", 0),
                                   "throttled_time": cpu.get("throttled_usec", 0) * 1000}},
            "memory": {"usage": {"usage": _read_int(d, "memory.current"),
                                 "limit": _read_int(d, "memory.max")},
                       "raw": _kv(d, "memory.stat")},
            "pids": {"current": _read_int(d, "pids.current"), "limit": _read_int(d, "pids.max")},
        }
    acct, cpud, mem, pids = cg.dir("cpuacct"), cg.dir("cpu"), cg.dir("memory"), cg.dir("pids")
    ticks = os.sysconf("SC_CLK_TCK")
    times = _kv(acct, "cpuacct.stat")
    try:
        percpu = [int(x) for x in (acct / "cpuacct.usage_percpu").read_text().split()] \
            if acct else []
    except OSError:
        percpu = []
    throttle = _kv(cpud, "cpu.stat")

    def memdata(prefix: str) -> dict[str, int]:
        return {"usage": _read_int(mem, f"{prefix}.usage_in_bytes"),
                "max": _read_int(mem, f"{prefix}.max_usage_in_bytes"),
                "failcnt": _read_int(mem, f"{prefix}.failcnt"),
                "limit": _read_int(mem, f"{prefix}.limit_in_bytes")}
    raw = _kv(mem, "memory.stat")
    return {
        "cpu": {"usage": {"total": _read_int(acct, "cpuacct.usage"), "percpu": percpu,
                          "kernel": times.get("system", 0) * 10**9 // ticks,
                          "user": times.get("user", 0) * 10**9 // ticks},
                "throttling": {"periods": throttle.get("nr_periods", 0),
                               "throttled_periods": throttle.get("nr_throttled", 0),
                               "throttled_time": throttle.get("throttled_time", 0)}},
        "memory": {"cache": raw.get("total_cache", raw.get("cache", 0)),
                   "usage": memdata("memory"), "swap": memdata("memory.memsw"),
                   "kernel": memdata("memory.kmem"), "kernelTCP": memdata("memory.kmem.tcp"),
                   "raw": raw},
        "pids": {"current": _read_int(pids, "pids.current"),
                 "limit": _read_int(pids, "pids.max")},
        "blkio": {},
        "hugetlb": {},
    }
