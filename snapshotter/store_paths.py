"""Where a store lives when `--root` is not given (pure apart from reading the environment).

Root shares one system store, like containerd's /var/lib/containerd. Any other user gets a store
of their own under the XDG data directory, like podman's ~/.local/share/containers: a user cannot
write the system one, and ownership recorded in a user's store (override xattrs) is only
meaningful to that user.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEM_ROOT = Path("/var/lib/pyunion")


def default_store_root(euid: int | None = None,
                       env: Mapping[str, str] | None = None) -> Path:
    """/var/lib/pyunion for root; $XDG_DATA_HOME/pyunion, else ~/.local/share/pyunion.

    A relative XDG_DATA_HOME is ignored, as the XDG base directory spec requires.
    """
    euid = os.geteuid() if euid is None else euid
    env = os.environ if env is None else env
    if euid == 0:
        return SYSTEM_ROOT
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "pyunion"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "share" / "pyunion"
