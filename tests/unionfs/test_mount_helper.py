"""`mount -t fuse.pyunion` through mount.fuse3, as fstab and containerd's fuse3.* mounts do."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.mounting import force_unmount, is_mounted
from unionfs.mount_cli import pid_file

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.root   # mount(8)
def test_mount_t_fuse_pyunion(tmp_path):
    if not shutil.which("pyunion", path=SYSTEM_PATH):
        pytest.skip("pyunion is not on the system PATH (scripts/setup.sh links it as root)")
    low, up, work, mnt = (tmp_path / n for n in ("low", "up", "work", "mnt"))
    for d in (low, up, work, mnt):
        d.mkdir()
    (low / "f").write_text("lower")
    (low / "g").write_text("gone")
    r = subprocess.run(["mount", "-t", "fuse.pyunion", "overlay", str(mnt), "-o",
                        f"lowerdir={low},upperdir={up},workdir={work}"],
                       capture_output=True, text=True, timeout=60, check=False)
    try:
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
        record = Path(pid_file(str(mnt)))
        assert record.exists()      # written by the daemon itself, as mount.fuse3 records nothing
        assert (mnt / "f").read_text() == "lower"
        os.unlink(mnt / "g")
        assert (up / ".wh.g").exists()
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
        assert not is_mounted(mnt)
        deadline = time.monotonic() + 30
        while record.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not record.exists()  # the daemon removed its record on the way out
    finally:
        force_unmount(mnt)
