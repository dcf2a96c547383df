"""The transport's daemon: readiness, signals, unmounts from outside, no leaked descriptors,
and rootless mounts through fusermount3."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess

import pytest

from tests.mounting import is_mounted
from tests.rootless import skip_reason, unprivileged_user
from unionfs import mountinfo


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_unmounts_and_exits(daemon, sig):
    p, src, mnt = daemon()
    (mnt / "f").write_text("x")
    p.send_signal(sig)
    assert p.wait(30) == 0
    assert not is_mounted(mnt)
    assert (src / "f").read_text() == "x"


def test_signal_while_a_file_is_open_detaches_lazily(daemon):
    p, _, mnt = daemon()
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        assert not is_mounted(mnt)
        try:                                # never a hang: passthrough handles keep
            os.write(fd, b"late")           # writing to the backing file, others fail
        except OSError as e:
            assert e.errno == errno.ENOTCONN
    finally:
        with contextlib.suppress(OSError):    # close reports the lost connection too
            os.close(fd)


def test_external_unmount_ends_the_daemon(daemon):
    p, _, mnt = daemon()
    os.listdir(mnt)
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)
    assert p.wait(30) == 0


@pytest.mark.parametrize("passthrough", ["on", "off"])
def test_no_descriptor_leaks(daemon, passthrough):
    p, src, mnt = daemon(f"passthrough={passthrough}")

    def open_files() -> int:
        """Descriptors of the daemon other than O_PATH ones (inodes the kernel still holds)."""
        n = 0
        for fd in os.listdir(f"/proc/{p.pid}/fd"):
            try:
                with open(f"/proc/{p.pid}/fdinfo/{fd}") as info:
                    flags = int(info.read().split()[3], 8)
                target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
            except (OSError, IndexError):
                continue
            if target.startswith(str(src)) and not flags & 0o10000000:
                n += 1
        return n

    for i in range(200):
        (mnt / f"f{i}").write_text("data")
        assert (mnt / f"f{i}").read_text() == "data"
        os.mkdir(mnt / f"d{i}")
        os.rmdir(mnt / f"d{i}")
        os.listdir(mnt)
    assert open_files() == 0


@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_rootless_mount_through_fusermount3(daemon):
    with unprivileged_user("pyutr") as user:
        p, src, mnt = daemon(user=user)
        env = user.env()
        r = user.run(["sh", "-c", f"echo hi > {mnt}/f && cat {mnt}/f && stat -c %U {mnt}/f"],
                     env=env)
        assert r.stdout.split() == ["hi", user.name]
        assert (src / "f").read_text() == "hi\n"
        with open(f"/proc/{p.pid}/status") as f:
            uid_line = next(x for x in f if x.startswith("Uid:"))
        assert int(uid_line.split()[1]) == user.uid          # the daemon is not root
        entry = mountinfo.top_mount(str(mnt))
        assert entry is not None and entry.fstype == "fuse.pyunion"
        user.run(["fusermount3", "-u", str(mnt)])
        assert p.wait(30) == 0
        assert not is_mounted(mnt)
