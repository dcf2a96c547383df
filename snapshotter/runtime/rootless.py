"""Running containers as an ordinary user: id maps, the rootless config, and their checks.

The user is root in the container's user namespace. With newuidmap/newgidmap (package uidmap)
and a range in /etc/subuid and /etc/subgid, container ids 1.. map to that range too (as rootless
podman and `runc` do); without them only the single id 0 -> the user exists. Parsing and config
edits are pure; `write_id_maps` is the one place that writes a process's maps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snapshotter.runtime.errors import ContainerError

IdMapping = dict[str, int]  # {"containerID", "hostID", "size"} as config.json writes it


def is_rootless() -> bool:
    return os.geteuid() != 0


def default_state_root(env: Mapping[str, str] | None = None) -> str:
    """Where `pyunion-runtime` keeps state when --root is not given (runc: $XDG_RUNTIME_DIR/runc
    for a user, /run/runc for root)."""
    if not is_rootless():
        return "/run/pyunion-runtime"
    xdg = (os.environ if env is None else env).get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "pyunion-runtime")
    return f"/tmp/pyunion-runtime-{os.geteuid()}"


def subid_range(text: str, name: str | None, uid: int) -> tuple[int, int] | None:
    """The first `NAME:START:COUNT` (or `UID:START:COUNT`) line of a subuid/subgid TEXT."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        if parts[0] in (name, str(uid)) and int(parts[2]) > 0:
            return int(parts[1]), int(parts[2])
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _user_name(uid: int) -> str | None:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def id_mappings(uid: int | None = None, gid: int | None = None
                ) -> tuple[list[IdMapping], list[IdMapping]]:
    """uidMappings and gidMappings for the calling user: 0 -> the user, and 1.. -> its
    subordinate ranges when newuidmap/newgidmap and both ranges exist."""
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    umaps = [{"containerID": 0, "hostID": uid, "size": 1}]
    gmaps = [{"containerID": 0, "hostID": gid, "size": 1}]
    name = _user_name(uid)
    sub_u = subid_range(_read("/etc/subuid"), name, uid)
    sub_g = subid_range(_read("/etc/subgid"), name, uid)
    if sub_u and sub_g and shutil.which("newuidmap") and shutil.which("newgidmap"):
        umaps.append({"containerID": 1, "hostID": sub_u[0], "size": sub_u[1]})
        gmaps.append({"containerID": 1, "hostID": sub_g[0], "size": sub_g[1]})
    return umaps, gmaps


def _maps_text(maps: list[IdMapping]) -> str:
    return ":".join(f"{m['containerID']}:{m['hostID']}:{m['size']}" for m in maps)


def mount_idmap(maps: list[IdMapping], own: int) -> str:
    """The union mount's uidmapping=/gidmapping= value for a rootless store.

    In the store the user's own id stands for 0 (files the user owns on disk are root's) and
    recorded ids are container ids; a mapping id -> host id is first-match, so OWN maps to
    itself before the container's ranges (0 -> OWN, 1.. -> subordinate ids) apply.
    """
    return _maps_text([{"containerID": own, "hostID": own, "size": 1}, *maps])


def maps_id(maps: list[IdMapping], container_id: int) -> bool:
    return any(m["containerID"] <= container_id < m["containerID"] + m["size"] for m in maps)


def make_rootless(config: dict[str, Any], umaps: list[IdMapping],
                  gmaps: list[IdMapping]) -> dict[str, Any]:
    """Edit a config.json (in place) the way `runc spec --rootless` does: a new user namespace
    with the maps, no cgroup resources, no devpts gid the namespace cannot map."""
    linux = config.setdefault("linux", {})
    nss = linux.setdefault("namespaces", [])
    if not any(ns.get("type") == "user" for ns in nss):
        nss.append({"type": "user"})
    linux["uidMappings"] = [dict(m) for m in umaps]
    linux["gidMappings"] = [dict(m) for m in gmaps]
    linux.pop("resources", None)
    for m in config.get("mounts") or []:
        if m.get("type") == "devpts":
            opts = m.get("options") or []
            m["options"] = [o for o in opts if not (
                o.startswith("gid=") and o[4:].isdigit() and not maps_id(gmaps, int(o[4:])))]
    return config


def _single_own(maps: list[IdMapping], own: int) -> bool:
    return len(maps) == 1 and maps[0]["size"] == 1 and maps[0]["hostID"] == own


def write_id_maps(pid: int, umaps: list[IdMapping], gmaps: list[IdMapping]) -> None:
    """Give PID (just unshared into a new user namespace) its maps.

    Root writes them. A user may write only "0 OWN 1" itself (gid_map after setgroups=deny);
    anything more goes through the setuid helpers, which check /etc/subuid and /etc/subgid.
    """
    if not is_rootless():
        for maps, name in ((gmaps, "gid_map"), (umaps, "uid_map")):
            Path(f"/proc/{pid}/{name}").write_text(
                "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps))
        return
    for maps, name, own, helper in ((gmaps, "gid_map", os.getegid(), "newgidmap"),
                                    (umaps, "uid_map", os.geteuid(), "newuidmap")):
        if _single_own(maps, own):
            if name == "gid_map":
                Path(f"/proc/{pid}/setgroups").write_text("deny")
            line = f"{maps[0]['containerID']} {own} 1\n"
            try:
                Path(f"/proc/{pid}/{name}").write_text(line)
            except OSError as e:
                raise ContainerError(f"writing {name} of the container: {e.strerror}") from None
            continue
        exe = shutil.which(helper)
        if exe is None:
            raise ContainerError(f"{name} maps more than your own id: that needs {helper} "
                                 "(Debian package uidmap)")
        args = [str(x) for m in maps for x in (m["containerID"], m["hostID"], m["size"])]
        try:
            r = subprocess.run([exe, str(pid), *args], capture_output=True, text=True,
                               timeout=30, check=False)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{helper} timed out") from None
        if r.returncode != 0:
            msg = (r.stderr.strip() or f"exit {r.returncode}").splitlines()[-1]
            raise ContainerError(f"{helper}: {msg} (is the range in /etc/sub{name[0]}id?)")


def check_devices(devices: list[dict[str, Any]], root: str = "/") -> None:
    """In a user namespace devices are bind mounts of the host's nodes (mknod is refused there,
    as with rootless runc and crun): each one asked for must exist on the host, same type and
    number."""
    import stat as st
    kinds = {"c": st.S_IFCHR, "u": st.S_IFCHR, "b": st.S_IFBLK}
    for d in devices:
        if d.get("type") not in kinds:
            continue
        host = os.path.join(root, d["path"].lstrip("/"))
        want = os.makedev(d.get("major", 0), d.get("minor", 0))
        try:
            s = os.stat(host)
        except OSError:
            s = None
        if s is None or st.S_IFMT(s.st_mode) != kinds[d["type"]] or s.st_rdev != want:
            raise ContainerError(
                f"device {d['path']} ({d['type']} {d.get('major', 0)}:{d.get('minor', 0)}) "
                "cannot be created in a user namespace and the host has no such node to bind")
