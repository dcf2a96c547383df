"""AppArmor and SELinux: is the LSM active on this host? runc ignores process.apparmorProfile,
process.selinuxLabel and linux.mountLabel when the LSM is disabled; pyunion-runtime does the same
and refuses them when it is enabled (it cannot apply a profile or label)."""

from __future__ import annotations

from pathlib import Path


def enabled(name: str) -> bool:
    if name == "apparmor":  # runc: apparmor.IsEnabled reads this parameter
        try:
            return Path("/sys/module/apparmor/parameters/enabled").read_text().startswith("Y")
        except OSError:
            return False
    if name == "selinux":  # runc: selinuxfs mounted means enabled
        return Path("/sys/fs/selinux/enforce").exists()
    raise ValueError(name)
