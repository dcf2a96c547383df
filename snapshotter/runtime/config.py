"""config.json parsed into typed objects: what the runtime and the init act on.

`Config.load` validates the whole file (spec.validate, runc's messages) and then parses it;
`Config.parse` rebuilds one from JSON already validated (state.json's copy). The process, root,
user, capabilities and rlimits are typed here. `mounts`, `hooks` and `linux` stay the validated
JSON of the OCI runtime spec: mounts.py, hooks.py, cgroups.py and seccomp.py consume those shapes
as the spec writes them. `raw` is the config as given: what state.json keeps and `update` merges
resources into, so `Config.parse(c.raw) == c`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapshotter.runtime import spec


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None  # None: runc's 0o022
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """The five sets by name (validated against spec.CAP_NUMBERS); masks for capset()."""
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()

    def mask(self, which: str) -> int:
        return spec.capability_mask(list(getattr(self, which)), which)


@dataclass(frozen=True)
class Rlimit:
    type: str  # RLIMIT_*
    soft: int
    hard: int


@dataclass(frozen=True)
class Process:
    """process (config.json) or an `exec` process.json."""
    args: tuple[str, ...]
    cwd: str
    env: tuple[str, ...] = ()
    terminal: bool = False
    console_size: tuple[int, int] | None = None  # (height, width)
    user: User = field(default_factory=User)
    capabilities: Capabilities | None = None  # None: the set is left as it is
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    oom_score_adj: int | None = None

    @classmethod
    def from_json(cls, obj: Any) -> Process:
        """Validate (ContainerError with runc's messages) and parse."""
        spec.validate_process(obj)
        return cls.parse(obj)

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> Process:
        user = obj.get("user") or {}
        caps = obj.get("capabilities")
        size = obj.get("consoleSize")
        return cls(
            args=tuple(obj["args"]), cwd=obj["cwd"], env=tuple(obj.get("env") or ()),
            terminal=bool(obj.get("terminal")),
            console_size=(size["height"], size["width"]) if size else None,
            user=User(uid=user.get("uid", 0), gid=user.get("gid", 0), umask=user.get("umask"),
                      additional_gids=tuple(user.get("additionalGids") or ())),
            capabilities=None if caps is None else Capabilities(
                **{k: tuple(caps.get(k) or ()) for k in
                   ("bounding", "effective", "permitted", "inheritable", "ambient")}),
            rlimits=tuple(Rlimit(r["type"], r["soft"], r["hard"])
                          for r in obj.get("rlimits") or ()),
            no_new_privileges=bool(obj.get("noNewPrivileges")),
            oom_score_adj=obj.get("oomScoreAdj"))

    def lookup_path(self) -> str:
        return spec.lookup_path(list(self.env))

    def environ(self) -> dict[str, str]:
        """env as execve wants it (entries without '=' dropped, as runc does)."""
        return dict(e.split("=", 1) for e in self.env if "=" in e)


@dataclass(frozen=True)
class Config:
    raw: dict[str, Any] = field(repr=False, compare=False)
    root_path: str
    root_readonly: bool
    process: Process
    hostname: str | None = None
    domainname: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, str | None] = field(default_factory=dict)  # type -> path or None
    mounts: list[dict[str, Any]] = field(default_factory=list)
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    linux: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, bundle: str | Path, rootless: bool = False) -> Config:
        """BUNDLE/config.json, validated then parsed."""
        return cls.parse(spec.load(bundle, rootless=rootless))

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Config:
        """Already validated JSON -> Config (KeyError/TypeError if it is not)."""
        root = raw["root"]
        return cls(
            raw=raw, root_path=root["path"], root_readonly=bool(root.get("readonly")),
            process=Process.parse(raw["process"]),
            hostname=raw.get("hostname") or None, domainname=raw.get("domainname") or None,
            annotations=dict(raw.get("annotations") or {}),
            namespaces=spec.namespaces(raw), mounts=list(raw.get("mounts") or []),
            hooks={k: list(v or []) for k, v in (raw.get("hooks") or {}).items()},
            linux=dict(raw.get("linux") or {}))

    def rootfs(self, bundle: str | Path) -> str:
        """root.path made absolute against the bundle (runtime.md: relative to the bundle)."""
        return os.path.normpath(Path(bundle) / self.root_path)

    def hooks_of(self, name: str) -> list[dict[str, Any]]:
        return list(self.hooks.get(name) or [])

    def host_ids(self) -> tuple[int, int]:
        """The host uid/gid of process.user (through the id maps of a new user namespace)."""
        return spec.host_ids(self.raw)
