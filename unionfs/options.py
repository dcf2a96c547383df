"""Command-line and mount-option parsing (pure): pyunion's own form and fuse-overlayfs's.

Three spellings mount the same union:
  pyunion mount [-f] [-o OPT,...] UPPER:LOWER1[:LOWER2...] TARGET
  pyunion -o lowerdir=L1:L2,upperdir=U,workdir=W[,...] TARGET       (what podman runs)
  pyunion SOURCE TARGET -o OPTIONS                                   (what mount.fuse3 runs)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

# re-exported: a command line that cannot be mounted is the commands' one usage error (exit 2)
from unionfs.exits import UsageError

# Options handed to the kernel/libfuse mount as they are.
FUSE_FLAGS = frozenset({
    "allow_other", "default_permissions", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec",
    "noexec", "async", "sync", "dirsync", "atime", "noatime", "nodiratime", "relatime",
    "norelatime", "strictatime", "auto_unmount",
})
FUSE_VALUED = frozenset({"fsname", "subtype", "max_read"})
# Options that must have a value, and ours that must not.
VALUED = frozenset({"lowerdir", "upperdir", "workdir", "fsync", "timeout", "log", "uidmapping",
                    "gidmapping", "xattr_permissions"}) | FUSE_VALUED
FLAGS = frozenset({"volatile", "debug"}) | FUSE_FLAGS
# Said by mount(8)/fstab, meaningless to us.
MOUNT_NOISE = frozenset({"defaults", "auto", "noauto", "user", "users", "nouser", "_netdev",
                         "nofail", "nonempty", "default"})
# fuse-overlayfs options we accept and do not act on.
IGNORED = frozenset({
    "static_nlink", "noacl", "threaded", "writeback", "noxattrs", "fast_ino",
    "plugins", "redirect_dir", "context", "xino", "ino32_t", "squash_to_root", "squash_to_uid",
    "squash_to_gid", "kernel_cache", "splice_read", "splice_write",
    "splice_move", "max_write", "big_writes", "index", "metacopy", "userxattr", "clone_fd",
})


@dataclass
class MountConfig:
    upper: str | None
    lowers: list[str]
    target: str
    workdir: str | None = None
    foreground: bool = False
    debug: bool = False
    fsync: bool = True
    timeout: float = 300.0
    log: str | None = None
    uidmapping: str | None = None
    gidmapping: str | None = None
    override: bool | None = None     # record owners in xattrs; None = when chown is out of reach
    created: list[str] = field(default_factory=list)   # directories check() made (work dir)
    fuse_options: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    backend: str | None = None       # kernel | pyfuse3; None = $PYUNION_BACKEND or the default
    passthrough: bool = True         # FUSE passthrough where the kernel allows it (backend=kernel)
    passthrough_lower: bool = True   # lower files opened read-only too; off with passthrough=upper

    @property
    def readonly(self) -> bool:
        return not self.upper or "ro" in self.fuse_options


def split_spec(spec: str) -> tuple[str | None, list[str]]:
    """UPPER:LOWER1:LOWER2 -> (upper or None, lowers)."""
    parts = spec.split(":")
    if len(parts) < 2 or not any(parts[1:]):
        raise UsageError(f"layer spec {spec!r} needs UPPER:LOWER1[:LOWER2...] (empty UPPER = read-only)")
    if any(p == "" for p in parts[1:]):
        raise UsageError(f"layer spec {spec!r} has an empty lower directory")
    parts = [_expand_tilde(p) for p in parts]
    return (parts[0] or None), parts[1:]


def _expand_tilde(path: str) -> str:
    """`~` or `~/x` at the start of a layer: the shell expands it only before the first ':'."""
    if path == "~" or path.startswith("~/"):
        return os.path.expanduser(path)
    return path


_BOOL = {"1": True, "on": True, "yes": True, "true": True,
         "0": False, "off": False, "no": False, "false": False}


def _bool(key: str, value: str) -> bool:
    try:
        return _BOOL[value.lower()]
    except KeyError:
        raise UsageError(f"option {key}={value!r}: want 0 or 1") from None


def parse_timeout(value: str) -> float:
    """Seconds the kernel may cache entries and attributes: a finite number >= 0."""
    try:
        t = float(value)
    except ValueError:
        raise UsageError(f"option timeout={value!r} is not a number") from None
    if not math.isfinite(t) or t < 0:
        raise UsageError(f"option timeout={value!r} must be a finite number of seconds >= 0")
    return t


def _apply_option(cfg: MountConfig, item: str, seen: dict[str, str]) -> None:
    item = item.strip()
    if not item:
        return  # podman sends ",," and trailing commas
    key, eq, value = item.partition("=")
    if key in VALUED and not eq:
        raise UsageError(f"option {key!r} needs a value ({key}=...)")
    if key in FLAGS and eq:
        raise UsageError(f"option {key!r} takes no value")
    if key in ("lowerdir", "upperdir", "workdir"):
        seen[key] = value
    elif key == "volatile":
        cfg.fsync = False
    elif key == "fsync":
        cfg.fsync = _bool(key, value)
    elif key == "timeout":
        cfg.timeout = parse_timeout(value)
    elif key == "log":
        if not value:
            raise UsageError("option log= needs a file name")
        cfg.log = value
    elif key in ("uidmapping", "gidmapping"):
        from unionfs.ownership import IdMap
        try:
            IdMap.parse(value)
        except ValueError as e:
            raise UsageError(f"option {key}: {e}") from None
        setattr(cfg, key, value)
    elif key == "xattr_permissions":
        if value not in ("0", "1", "2"):
            raise UsageError(f"option xattr_permissions={value!r}: want 0, 1 or 2")
        cfg.override = value != "0"
    elif key == "backend":
        if value not in ("kernel", "pyfuse3"):
            raise UsageError(f"option backend={value!r}: use backend=kernel or backend=pyfuse3")
        cfg.backend = value
    elif key == "passthrough":
        # on (= all, its old name): upper files and lower files opened read-only; upper: only
        # upper files, so a reader of a lower file follows a later copy-up as on overlayfs.
        if value not in ("on", "all", "upper", "off"):
            raise UsageError(f"option passthrough={value!r}: use passthrough=on, upper or off")
        cfg.passthrough = value != "off"
        cfg.passthrough_lower = value in ("on", "all")
    elif key == "debug":
        cfg.debug = True
    elif key in FUSE_FLAGS:
        cfg.fuse_options.add(key)
    elif key in FUSE_VALUED:
        if key == "max_read" and not value.isdigit():
            raise UsageError(f"option max_read={value!r} is not a number of bytes")
        if key != "max_read" and (not value or any(c in value for c in ",\n\0")):
            raise UsageError(f"option {key}={value!r} is not a valid name")
        cfg.fuse_options.add(item)
    elif key in MOUNT_NOISE or key.startswith("x-"):
        pass
    elif key in IGNORED:
        cfg.warnings.append(f"option {key!r} is not supported by pyunion and is ignored")
    else:
        raise UsageError(f"unknown mount option {item!r}")


def _finish(cfg: MountConfig, spec: str | None, seen: dict[str, str]) -> MountConfig:
    if not cfg.target:
        raise UsageError("the mount point is an empty string")
    if spec is not None:
        cfg.upper, cfg.lowers = split_spec(spec)
    if "lowerdir" in seen:
        lowers = [x for x in seen["lowerdir"].split(":")]
        if any(x == "" for x in lowers):
            raise UsageError("lowerdir= has an empty directory")
        cfg.lowers = lowers
    if "upperdir" in seen:
        cfg.upper = seen["upperdir"] or None
    if "workdir" in seen:
        cfg.workdir = seen["workdir"] or None
    if not cfg.lowers:
        raise UsageError("no lower directory given (UPPER:LOWER... or -o lowerdir=...)")
    if cfg.upper is None:
        cfg.workdir = None
    return cfg


def _gather(args: list[str], allow_spec: bool) -> tuple[MountConfig, list[str], dict[str, str]]:
    cfg = MountConfig(upper=None, lowers=[], target="")
    positional: list[str] = []
    seen: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-o" or (a.startswith("-o") and len(a) > 2):
            if a == "-o":
                if i + 1 >= len(args):
                    raise UsageError("-o needs an option list")
                value = args[i + 1]
                i += 1
            else:
                value = a[2:]
            for item in value.split(","):
                _apply_option(cfg, item, seen)
        elif a in ("-f", "--foreground"):
            cfg.foreground = True
        elif a in ("-d", "--debug"):
            cfg.debug = True
            cfg.foreground = True
        elif a in ("-s",):
            pass  # single-threaded: we always are
        elif a == "--":
            positional.extend(args[i + 1:])
            break
        elif a.startswith("-") and a != "-":
            raise UsageError(f"unknown flag {a!r}")
        else:
            positional.append(a)
        i += 1
    return cfg, positional, seen


def parse_mount_args(args: list[str]) -> MountConfig:
    """`pyunion mount [-f] [-o OPT,...] SPEC TARGET` (SPEC may be replaced by -o lowerdir=)."""
    cfg, pos, seen = _gather(args, allow_spec=True)
    if "lowerdir" in seen and len(pos) == 1:
        cfg.target = pos[0]
        return _finish(cfg, None, seen)
    if len(pos) != 2:
        raise UsageError("usage: pyunion mount [-f] [-o OPT,...] UPPER:LOWER1[:LOWER2...] TARGET")
    cfg.target = pos[1]
    return _finish(cfg, pos[0], seen)


def parse_compat_args(args: list[str]) -> MountConfig:
    """fuse-overlayfs's and mount.fuse3's command lines.

    `-o lowerdir=... TARGET`, or `SOURCE TARGET -o ...` where SOURCE is a label (mount.fuse3
    passes the fstab "device"); a SOURCE holding ':' with no lowerdir= is taken as a layer spec.
    """
    cfg, pos, seen = _gather(args, allow_spec=False)
    if len(pos) == 1:
        cfg.target = pos[0]
        spec = None
    elif len(pos) == 2:
        cfg.target = pos[1]
        spec = pos[0] if ("lowerdir" not in seen and ":" in pos[0]) else None
    else:
        raise UsageError("usage: pyunion -o lowerdir=L1:L2[,upperdir=U,workdir=W] TARGET "
                         "(or: pyunion SOURCE TARGET -o OPTIONS)")
    if spec is None and "lowerdir" not in seen:
        raise UsageError("no lower directory given (-o lowerdir=L1[:L2...])")
    return _finish(cfg, spec, seen)


def parse_option_list(options: list[str], target: str) -> MountConfig:
    """A mount's options as a list, one option per item (a containerd Mount's, or mount(8)'s
    after splitting): what `-o` takes, without the comma round trip, so a path may hold ','."""
    cfg = MountConfig(upper=None, lowers=[], target=target)
    seen: dict[str, str] = {}
    for item in options:
        _apply_option(cfg, item, seen)
    if "lowerdir" not in seen:
        raise UsageError("no lower directory given (lowerdir=L1[:L2...])")
    return _finish(cfg, None, seen)


def encode_config(cfg: MountConfig) -> str:
    """CFG as one JSON argument for `python -m unionfs.daemon` (decode_config reads it back)."""
    d = dataclasses.asdict(cfg)
    d["fuse_options"] = sorted(cfg.fuse_options)
    return json.dumps(d, ensure_ascii=False)   # paths stay findable in /proc/PID/cmdline


def decode_config(text: str) -> MountConfig:
    cfg = MountConfig(**json.loads(text))
    cfg.fuse_options = set(cfg.fuse_options)
    return cfg


DEFAULT_BACKEND = "kernel"


def backend(cfg: MountConfig) -> str:
    """Which FUSE transport serves the mount: -o backend=, else $PYUNION_BACKEND, else the
    default (docs/transport.md)."""
    return cfg.backend or os.environ.get("PYUNION_BACKEND") or DEFAULT_BACKEND
