"""Image config -> runtime config.json, per image-spec conversion.md. Pure: the caller reads the
image's /etc/passwd and /etc/group (inside its rootfs) and passes their text in.
"""

from __future__ import annotations

import copy
from typing import Any

from snapshotter.errors import ImageError, InvalidArgument, NotFound
from snapshotter.image_readers import validate_exec_config
from snapshotter.runtime import rootless as rl
from snapshotter.runtime import spec

ANNOTATION = "org.opencontainers.image."
# image config top-level field -> annotation suffix (conversion.md)
_TOP_FIELDS = {"os": "os", "architecture": "architecture", "variant": "variant",
               "os.version": "os.version", "author": "author", "created": "created"}
# containerd's default capability set (pkg/oci/spec.go), for root in the container.
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def parse_passwd(text: str | None) -> list[tuple[str, int, int]]:
    """(name, uid, gid) of each well-formed /etc/passwd line."""
    out = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[2].isdigit() and f[3].isdigit():
            out.append((f[0], int(f[2]), int(f[3])))
    return out


def parse_group(text: str | None) -> list[tuple[str, int, list[str]]]:
    """(name, gid, members) of each well-formed /etc/group line."""
    out = []
    for line in (text or "").splitlines():
        f = line.split(":")
        if len(f) >= 3 and f[2].isdigit():
            members = [m for m in (f[3].split(",") if len(f) > 3 else []) if m]
            out.append((f[0], int(f[2]), members))
    return out


def resolve_user(user: str, passwd: str | None, group: str | None) -> dict[str, Any]:
    """The image's `User` ("name", "uid", "name:group", "uid:gid", ...) as process.user.

    Names are looked up in the image's files; an unknown name is an error (conversion.md).
    additionalGids come from /etc/group only for a user given by name without a group.
    """
    users, groups = parse_passwd(passwd), parse_group(group)
    name, _, grp = (user or "").partition(":")
    if not name:
        name = "0"
    if name.isdigit():
        uid = int(name)
        gid = next((g for _, u, g in users if u == uid), 0)
        username = next((n for n, u, _ in users if u == uid), None)
    else:
        entry = next((e for e in users if e[0] == name), None)
        if entry is None:
            raise NotFound(f"unable to find user {name}: no matching entries in passwd file")
        username, uid, gid = entry
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    if grp:
        if grp.isdigit():
            out["gid"] = int(grp)
        else:
            g = next((e for e in groups if e[0] == grp), None)
            if g is None:
                raise NotFound(f"unable to find group {grp}: no matching entries in group file")
            out["gid"] = g[1]
    elif username is not None and not name.isdigit():
        extra = sorted({gid_ for gname, gid_, members in groups
                        if username in members and gid_ != gid})
        if extra:
            out["additionalGids"] = extra
    return out


def _set_env(env: list[str], item: str) -> list[str]:
    key = item.split("=", 1)[0]
    return [e for e in env if e.split("=", 1)[0] != key] + [item]


def convert(image: dict[str, Any], *, args: list[str] | None = None,
            env: list[str] | None = None, cwd: str | None = None, user: str | None = None,
            hostname: str = "pyunion", passwd: str | None = None, group: str | None = None,
            annotations: dict[str, str] | None = None,
            rootless: tuple[list[dict], list[dict]] | None = None) -> dict[str, Any]:
    """A config.json (root.path "rootfs") for an image config, with `pyunion run` overrides:
    args replace Cmd (Entrypoint stays), env entries replace same-named ones, cwd and user
    replace WorkingDir and User. ROOTLESS = (uidMappings, gidMappings): a user namespace with
    them, as `runc spec --rootless` makes it."""
    try:
        validate_exec_config(image)   # stored before import checked the types
    except ImageError as e:
        raise InvalidArgument(str(e)) from None
    cfg = image.get("config") or {}
    entrypoint = list(cfg.get("Entrypoint") or [])
    command = entrypoint + (list(args) if args else list(cfg.get("Cmd") or []))
    if not command:
        raise InvalidArgument("no command specified: the image has no Entrypoint or Cmd")
    penv = list(cfg.get("Env") or [])
    if not any(e.startswith("PATH=") for e in penv):
        penv.append(f"PATH={spec.DEFAULT_PATH}")
    for item in env or []:
        if "=" not in item:
            raise InvalidArgument(f"bad environment entry {item!r}: want KEY=VALUE")
        penv = _set_env(penv, item)
    workdir = cwd if cwd is not None else (cfg.get("WorkingDir") or "/")
    if not workdir.startswith("/"):
        workdir = "/" + workdir
    process_user = resolve_user(user if user is not None else cfg.get("User") or "",
                                passwd, group)

    notes: dict[str, str] = {}
    for field, suffix in _TOP_FIELDS.items():
        if image.get(field):
            notes[ANNOTATION + suffix] = str(image[field])
    if image.get("os.features"):
        notes[ANNOTATION + "os.features"] = ",".join(image["os.features"])
    if cfg.get("StopSignal"):
        notes[ANNOTATION + "stopSignal"] = cfg["StopSignal"]
    if cfg.get("ExposedPorts"):
        notes[ANNOTATION + "exposedPorts"] = ",".join(sorted(cfg["ExposedPorts"]))
    notes.update(cfg.get("Labels") or {})  # Labels win over derived values
    notes.update(annotations or {})  # the image's own annotations are never changed

    config = copy.deepcopy(spec.default_spec())
    proc = config["process"]
    proc.update(args=command, env=penv, cwd=workdir, user=process_user, noNewPrivileges=False)
    caps = list(DEFAULT_CAPS)
    proc["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    config["root"] = {"path": "rootfs", "readonly": False}
    config["hostname"] = hostname
    if notes:
        config["annotations"] = notes
    if rootless is not None:
        rl.make_rootless(config, *rootless)
        for what, maps, wanted in (("user", rootless[0], process_user["uid"]),
                                   ("group", rootless[1], process_user["gid"])):
            if not rl.maps_id(maps, wanted):
                raise InvalidArgument(f"{what} id {wanted} is not mapped in the rootless user "
                                      "namespace (no subordinate ids: see /etc/sub"
                                      f"{what[0]}id)")
    spec.validate(config)
    return config
