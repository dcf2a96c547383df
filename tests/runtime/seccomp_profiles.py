"""Seccomp profiles as clients put them in config.json.

podman's: /usr/share/containers/seccomp.json (containers-common) is in the containers/common
source format (archMap, includes/excludes by capability and architecture); podman turns it into
the OCI form per container (pkg/seccomp: the native arch plus its sub-architectures, a rule kept
when every included capability is granted and no excluded one is). `oci_profile` does the same.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

PODMAN_PROFILE = Path("/usr/share/containers/seccomp.json")
# containerd has no profile file: its default is built in code (contrib/seccomp). This one was
# captured from the bundle of `ctr run --seccomp` (containerd 1.6.20, x86_64) with its caps.
CONTAINERD_PROFILE = Path(__file__).parent / "data" / "containerd-1.6.20-default-seccomp.json"
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def oci_profile(source: dict[str, Any], caps: list[str]) -> dict[str, Any]:
    """containers/common's profile format -> config.json linux.seccomp for CAPS on this arch."""
    arch = _GO_ARCH.get(platform.machine(), platform.machine())
    native = f"SCMP_ARCH_{platform.machine().upper()}"
    out: dict[str, Any] = {"defaultAction": source["defaultAction"], "syscalls": []}
    if "defaultErrnoRet" in source:
        out["defaultErrnoRet"] = source["defaultErrnoRet"]
    for entry in source.get("archMap") or []:
        if entry["architecture"] == native:
            out["architectures"] = [native, *entry.get("subArchitectures", [])]
    for rule in source["syscalls"]:
        inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
        if inc.get("arches") and arch not in inc["arches"]:
            continue
        if exc.get("arches") and arch in exc["arches"]:
            continue
        if inc.get("caps") and not set(inc["caps"]) <= set(caps):
            continue
        if exc.get("caps") and set(exc["caps"]) & set(caps):
            continue
        oci = {"names": rule["names"], "action": rule["action"]}
        if rule.get("args"):
            oci["args"] = rule["args"]
        if rule.get("errnoRet") is not None:
            oci["errnoRet"] = rule["errnoRet"]
        out["syscalls"].append(oci)
    return out


def podman_default(caps: list[str]) -> dict[str, Any]:
    return oci_profile(json.loads(PODMAN_PROFILE.read_text()), caps)


def containerd_default() -> tuple[dict[str, Any], list[str]]:
    """(profile, the bounding capabilities ctr granted with it)."""
    data = json.loads(CONTAINERD_PROFILE.read_text())
    return data["seccomp"], data["capabilities"]
