"""config.json: load, validate, and translate into kernel terms. Pure (no syscalls), so it tests
without a container.

Unknown properties are ignored (config.md requires it); known properties this runtime cannot apply
are refused with an error, as runtime.md requires of `create`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from snapshotter.runtime import lsm, seccomp
from snapshotter.runtime import syscalls as sc
from snapshotter.runtime.errors import ContainerError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ID_RE = re.compile(r"^[\w+.-]+$", re.ASCII)

NAMESPACE_FLAGS = {
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "user": sc.CLONE_NEWUSER,
    "cgroup": sc.CLONE_NEWCGROUP,
}
# The name of each namespace under /proc/PID/ns.
NAMESPACE_PROC = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
                  "user": "user", "cgroup": "cgroup"}

CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]
CAP_NUMBERS = {f"CAP_{name}": i for i, name in enumerate(CAPABILITIES)}

# option -> (flags to set, flags to clear)
_MOUNT_FLAGS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (sc.MS_RDONLY, 0), "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0), "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0), "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0), "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0), "async": (0, sc.MS_SYNCHRONOUS),
    "dirsync": (sc.MS_DIRSYNC, 0),
    "mand": (sc.MS_MANDLOCK, 0), "nomand": (0, sc.MS_MANDLOCK),
    "noatime": (sc.MS_NOATIME, 0), "atime": (0, sc.MS_NOATIME),
    "nodiratime": (sc.MS_NODIRATIME, 0), "diratime": (0, sc.MS_NODIRATIME),
    "relatime": (sc.MS_RELATIME, 0), "norelatime": (0, sc.MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0), "nostrictatime": (0, sc.MS_STRICTATIME),
    "nosymfollow": (sc.MS_NOSYMFOLLOW, 0),
    "remount": (sc.MS_REMOUNT, 0),
    "bind": (sc.MS_BIND, 0), "rbind": (sc.MS_BIND | sc.MS_REC, 0),
}
MOUNT_FLAG_NAMES = (*_MOUNT_FLAGS, "tmpcopyup")
# runc's mount_setattr(AT_RECURSIVE) options, not applied here.
_RECURSIVE_ATTRS = {f"r{o}" for o in ("ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec",
                                      "exec", "noatime", "atime", "nodiratime", "diratime",
                                      "relatime", "norelatime", "strictatime", "nostrictatime",
                                      "nosymfollow", "symfollow")}
PROPAGATION = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE, "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")
# linux.resources: key -> the JSON type of its value (cgroups.py applies them).
_RESOURCES = {"memory": dict, "cpu": dict, "pids": dict, "blockIO": dict, "network": dict,
              "hugepageLimits": list, "devices": list, "unified": dict, "rdma": dict}
_REFUSED_LINUX = ("intelRdt", "personality", "timeOffsets")
_REFUSED_PROCESS = ("ioPriority", "scheduler", "execCPUAffinity")
# Ignored while the LSM is disabled on the host (as runc), refused when it is enabled.
_LSM_FIELDS = (("process", "apparmorProfile", "apparmor"), ("process", "selinuxLabel", "selinux"),
               ("linux", "mountLabel", "selinux"))


class MountOptions:
    """A config.json mount's options split the way mount(2) wants them."""

    def __init__(self) -> None:
        self.flags = 0
        self.propagation: list[int] = []
        self.data = ""
        self.tmpcopyup = False  # runc's extension: the image's files copied into the tmpfs

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND)


def valid_id(cid: str) -> bool:
    """IDs as runc accepts them (libcontainer/factory_linux.go)."""
    return bool(_ID_RE.match(cid)) and cid not in (".", "..")


def parse_mount_options(options: list[str]) -> MountOptions:
    out = MountOptions()
    data: list[str] = []
    for opt in options:
        if opt in _MOUNT_FLAGS:
            set_, clear = _MOUNT_FLAGS[opt]
            out.flags = (out.flags | set_) & ~clear
        elif opt in PROPAGATION:
            out.propagation.append(PROPAGATION[opt])
        elif opt == "tmpcopyup":
            out.tmpcopyup = True
        else:
            data.append(opt)
    out.data = ",".join(data)
    return out


def capability_mask(names: list[str] | None, what: str) -> int:
    mask = 0
    for name in names or []:
        if name not in CAP_NUMBERS:
            raise ContainerError(f"unknown capability {name!r} in process.capabilities.{what}")
        mask |= 1 << CAP_NUMBERS[name]
    return mask


def load(bundle: str | Path, rootless: bool = False) -> dict[str, Any]:
    """Read and validate BUNDLE/config.json; messages follow runc's where runc has one."""
    path = Path(bundle) / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ContainerError("JSON specification file config.json not found") from None
    except OSError as e:
        raise ContainerError(f"open {path}: {e.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ContainerError(f"config.json: {e}") from None
    validate(config, rootless)
    return config


def _type(value: Any, typ: type | tuple[type, ...], where: str) -> None:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ContainerError(f"config.json: {where} has the wrong type")


def _str_list(value: Any, where: str) -> None:
    _type(value, list, where)
    for item in value:
        _type(item, str, where)


def validate(config: Any, rootless: bool = False) -> None:
    """Raise ContainerError for anything malformed or anything asked for that is not supported.

    ROOTLESS: linux.resources are accepted (the runtime says it ignores them) as rootless runc
    does without a delegated cgroup."""
    _type(config, dict, "the top level")
    _type(config.get("ociVersion"), str, "ociVersion")
    if not config["ociVersion"].startswith("1."):
        raise ContainerError(f"config.json: unsupported ociVersion {config['ociVersion']!r}")
    root = config.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        raise ContainerError("config.json: root.path is required")
    _type(root.get("readonly", False), bool, "root.readonly")
    _validate_process(config.get("process"))
    if "hostname" in config:
        _type(config["hostname"], str, "hostname")
    if "domainname" in config:
        _type(config["domainname"], str, "domainname")
    for i, m in enumerate(config.get("mounts") or []):
        _validate_mount(m, i)
    _validate_hooks(config.get("hooks") or {})
    annotations = config.get("annotations") or {}
    _type(annotations, dict, "annotations")
    for k, v in annotations.items():
        _type(v, str, f"annotations[{k!r}]")
    _validate_linux(config, rootless)
    for where, key, name in _LSM_FIELDS:
        value = (config.get(where) or {}).get(key)
        if value and lsm.enabled(name):
            raise ContainerError(f"config.json: {where}.{key}: {name} is enabled on this host "
                                 "and pyunion-runtime cannot apply it")


def _validate_process(proc: Any) -> None:
    if proc is None:
        raise ContainerError("config.json: process is required")
    _type(proc, dict, "process")
    _type(proc.get("terminal", False), bool, "process.terminal")
    size = proc.get("consoleSize")
    if size is not None:
        _type(size, dict, "process.consoleSize")
        for k in ("height", "width"):
            _type(size.get(k), int, f"process.consoleSize.{k}")
    args = proc.get("args")
    if not isinstance(args, list) or not args:
        raise ContainerError("args must not be empty")
    _str_list(args, "process.args")
    _str_list(proc.get("env") or [], "process.env")
    cwd = proc.get("cwd")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise ContainerError("cwd property must not be empty and must be an absolute path")
    user = proc.get("user") or {}
    _type(user, dict, "process.user")
    for key in ("uid", "gid", "umask"):
        if key in user:
            _type(user[key], int, f"process.user.{key}")
    for gid in user.get("additionalGids") or []:
        _type(gid, int, "process.user.additionalGids")
    caps = proc.get("capabilities") or {}
    _type(caps, dict, "process.capabilities")
    for what in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        _str_list(caps.get(what) or [], f"process.capabilities.{what}")
        capability_mask(caps.get(what), what)
    for rl in proc.get("rlimits") or []:
        _type(rl, dict, "process.rlimits[]")
        name = rl.get("type")
        if not isinstance(name, str) or not name.startswith("RLIMIT_"):
            raise ContainerError(f"config.json: bad rlimit type {name!r}")
        _type(rl.get("hard"), int, f"rlimit {name} hard")
        _type(rl.get("soft"), int, f"rlimit {name} soft")
    if "oomScoreAdj" in proc:
        _type(proc["oomScoreAdj"], int, "process.oomScoreAdj")
    for key in _REFUSED_PROCESS:
        if proc.get(key):
            raise ContainerError(f"config.json: process.{key} is not supported")


def validate_process(proc: Any) -> None:
    """An `exec` process (process.json or built from the command line)."""
    _validate_process(proc)


def _validate_mount(m: Any, i: int) -> None:
    _type(m, dict, f"mounts[{i}]")
    dest = m.get("destination")
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise ContainerError(f"config.json: mounts[{i}].destination must be an absolute path")
    _str_list(m.get("options") or [], f"mounts[{i}].options")
    opts = parse_mount_options(m.get("options") or [])
    mtype = m.get("type") or ("bind" if opts.is_bind else "")
    if not mtype:
        raise ContainerError(f"config.json: mounts[{i}] ({dest}) has no type")
    recursive = [o for o in m.get("options") or [] if o in _RECURSIVE_ATTRS]
    if recursive:  # a bind mount would silently ignore them as data: refuse instead
        raise ContainerError(f"config.json: mounts[{i}] ({dest}): recursive mount attribute "
                             f"{recursive[0]!r} is not supported")
    if m.get("uidMappings") or m.get("gidMappings"):
        raise ContainerError(f"config.json: mounts[{i}]: idmapped mounts are not supported")


def _validate_hooks(hooks: Any) -> None:
    _type(hooks, dict, "hooks")
    for name, entries in hooks.items():
        if name not in HOOK_NAMES:
            continue
        _type(entries, list, f"hooks.{name}")
        for j, h in enumerate(entries):
            _type(h, dict, f"hooks.{name}[{j}]")
            path = h.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise ContainerError(f"config.json: hooks.{name}[{j}].path must be absolute")
            _str_list(h.get("args") or [], f"hooks.{name}[{j}].args")
            _str_list(h.get("env") or [], f"hooks.{name}[{j}].env")
            if "timeout" in h:
                _type(h["timeout"], int, f"hooks.{name}[{j}].timeout")
                if h["timeout"] <= 0:
                    raise ContainerError(f"config.json: hooks.{name}[{j}].timeout must be > 0")


def _validate_linux(config: dict, rootless: bool = False) -> None:
    linux = config.get("linux") or {}
    _type(linux, dict, "linux")
    seen: set[str] = set()
    for ns in linux.get("namespaces") or []:
        _type(ns, dict, "linux.namespaces[]")
        t = ns.get("type")
        if t not in NAMESPACE_FLAGS:
            raise ContainerError(f"config.json: namespace type {t!r} is not supported")
        if t in seen:
            raise ContainerError(f"malformed spec file: duplicated ns {t!r}")
        seen.add(t)
        if ns.get("path") is not None:
            _type(ns["path"], str, f"linux.namespaces[{t}].path")
            if not ns["path"].startswith("/"):
                raise ContainerError(f"config.json: namespace {t} path must be absolute")
    if "mount" not in seen:
        raise ContainerError("config.json: a mount namespace is required (pivot_root needs one)")
    if config.get("hostname") and "uts" not in seen:
        raise ContainerError("unable to set hostname without a private UTS namespace")
    if config.get("domainname") and "uts" not in seen:
        raise ContainerError("unable to set domainname without a private UTS namespace")
    user_new = "user" in seen and not _ns_path(linux, "user")
    for key in ("uidMappings", "gidMappings"):
        maps = linux.get(key) or []
        _type(maps, list, f"linux.{key}")
        for m in maps:
            _type(m, dict, f"linux.{key}[]")
            for f in ("containerID", "hostID", "size"):
                _type(m.get(f), int, f"linux.{key}[].{f}")
        if maps and "user" not in seen:
            raise ContainerError("user namespaces aren't enabled in the config but mappings are")
        if user_new and not maps:
            raise ContainerError(f"user namespaces enabled, but no {key[:3]} mappings found")
    for key in ("maskedPaths", "readonlyPaths"):
        _str_list(linux.get(key) or [], f"linux.{key}")
    sysctl = linux.get("sysctl") or {}
    _type(sysctl, dict, "linux.sysctl")
    for k, v in sysctl.items():
        _type(v, str, f"linux.sysctl[{k!r}]")
        if "/" in k or ".." in k.split("."):
            raise ContainerError(f"config.json: bad sysctl name {k!r}")
    prop = linux.get("rootfsPropagation")
    if prop and prop not in PROPAGATION:
        raise ContainerError(f"config.json: rootfsPropagation {prop!r} is not valid")
    for d in linux.get("devices") or []:
        _type(d, dict, "linux.devices[]")
        if d.get("type") not in ("c", "b", "u", "p"):
            raise ContainerError(f"config.json: device {d.get('path')!r} has a bad type")
        if not isinstance(d.get("path"), str) or not d["path"].startswith("/dev/"):
            raise ContainerError("config.json: device paths must be under /dev")
        if d["type"] != "p":
            _type(d.get("major"), int, "linux.devices[].major")
            _type(d.get("minor"), int, "linux.devices[].minor")
    resources = linux.get("resources") or {}
    _type(resources, dict, "linux.resources")
    _validate_resources(resources)
    if "cgroupsPath" in linux:
        _type(linux["cgroupsPath"], str, "linux.cgroupsPath")
    if linux.get("seccomp") is not None:
        seccomp.validate(linux["seccomp"])
    for key in _REFUSED_LINUX:
        if linux.get(key):
            raise ContainerError(f"config.json: linux.{key} is not supported")


def _validate_resources(resources: dict) -> None:
    """Shapes only; what the host's cgroups can apply is checked when they are written."""
    for key, typ in _RESOURCES.items():
        value = resources.get(key)
        if value is None:
            continue
        _type(value, typ, f"linux.resources.{key}")
        if isinstance(value, dict) and key != "unified":
            for k, v in value.items():
                if isinstance(v, (dict, list, str, bool)) or v is None:
                    continue
                _type(v, int, f"linux.resources.{key}.{k}")
    if resources.get("rdma"):
        raise ContainerError("config.json: linux.resources.rdma is not supported")
    pids = resources.get("pids")
    if pids is not None:
        _type(pids.get("limit"), int, "linux.resources.pids.limit")
    for h in resources.get("hugepageLimits") or []:
        _type(h, dict, "linux.resources.hugepageLimits[]")
        _type(h.get("pageSize"), str, "linux.resources.hugepageLimits[].pageSize")
        _type(h.get("limit"), int, "linux.resources.hugepageLimits[].limit")
    for d in resources.get("devices") or []:
        _type(d, dict, "linux.resources.devices[]")
        _type(d.get("allow"), bool, "linux.resources.devices[].allow")
        if d.get("type", "a") not in ("a", "b", "c"):
            raise ContainerError(f"config.json: device rule type {d.get('type')!r} is not valid")
        access = d.get("access") or ""
        if not set(access) <= set("rwm"):
            raise ContainerError(f"config.json: device rule access {access!r} is not valid")
    for k, v in (resources.get("unified") or {}).items():
        _type(v, str, f"linux.resources.unified[{k!r}]")


def _ns_path(linux: dict, ns_type: str) -> str | None:
    for ns in linux.get("namespaces") or []:
        if ns.get("type") == ns_type:
            return ns.get("path")
    return None


def namespaces(config: dict) -> dict[str, str | None]:
    """type -> path to join, or None for a new namespace."""
    return {ns["type"]: ns.get("path") for ns in (config.get("linux") or {}).get("namespaces") or []}


def _to_host(maps: list[dict], cid: int) -> int:
    for m in maps:
        if m["containerID"] <= cid < m["containerID"] + m["size"]:
            return m["hostID"] + cid - m["containerID"]
    return 65534  # unmapped: the overflow id


def host_ids(config: dict) -> tuple[int, int]:
    """The host uid/gid of process.user (through the id maps of a new user namespace)."""
    user = (config.get("process") or {}).get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    linux = config.get("linux") or {}
    if "user" in namespaces(config):
        return (_to_host(linux.get("uidMappings") or [], uid),
                _to_host(linux.get("gidMappings") or [], gid))
    return uid, gid


def lookup_path(env: list[str]) -> str:
    for item in reversed(env):
        if item.startswith("PATH="):
            return item[5:]
    return DEFAULT_PATH


def default_spec() -> dict[str, Any]:
    """What `spec` writes: runc's default, except terminal=false (so a bundle made with it runs
    detached and under test harnesses without a console socket)."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    nosuid_noexec_nodev = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [f"PATH={DEFAULT_PATH}", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted",
                                                     "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": [*nosuid_noexec_nodev, "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": list(nosuid_noexec_nodev)},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": [*nosuid_noexec_nodev, "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": [*nosuid_noexec_nodev, "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
