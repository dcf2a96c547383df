"""`pyunion-runtime features`: the runtime-spec features document (features.md), built from the
same tables the validator uses, so it cannot claim what `create` refuses."""

from __future__ import annotations

from typing import Any

import unionfs
from snapshotter.runtime import seccomp, spec

# Mount options `create` understands as flags or propagation (others go to the filesystem).
_MOUNT_OPTIONS = sorted([*spec.MOUNT_FLAG_NAMES, *spec.PROPAGATION])


def _lsm_enabled(name: str) -> bool:
    from snapshotter.runtime import lsm
    return lsm.enabled(name)


def document() -> dict[str, Any]:
    sec: dict[str, Any] = {"enabled": seccomp.available()}
    if seccomp.available():
        sec.update(actions=sorted(a for a in seccomp.ACTIONS if a != "SCMP_ACT_NOTIFY"),
                   operators=sorted(seccomp.OPERATORS),
                   archs=sorted(f"SCMP_ARCH_{a.upper()}" for a in seccomp.ARCHES))
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.0.2-dev",
        "hooks": list(spec.HOOK_NAMES),
        "mountOptions": _MOUNT_OPTIONS,
        "linux": {
            "namespaces": sorted(spec.NAMESPACE_FLAGS),
            "capabilities": sorted(spec.CAP_NUMBERS, key=spec.CAP_NUMBERS.__getitem__),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": sec,
            "apparmor": {"enabled": _lsm_enabled("apparmor")},
            "selinux": {"enabled": _lsm_enabled("selinux")},
        },
        "annotations": {"org.pyunion.runtime.version": unionfs.__version__},
    }
