"""kill -9 of the daemon in the middle of a large copy-up never leaves a partial file visible.

A 300 MB lower file gets one byte appended through the mount by a child process; the daemon
(found by its command line: argv names the target and `unionfs`) is killed with SIGKILL while
the copy-up runs; the dead mount is lazily unmounted and the union mounted again over the same
upper and work directories. The upper must then hold no copy, or a whole one (the old data, or
the old data plus the byte), and the mount must show one of those two whole objects.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mounting import force_unmount, mounted, pyunion
from tests.unionfs.oracle_support import daemon_pids, is_mounted

SIZE = 300 * 2**20
BLOCK = 2**20

APPENDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
os.write(fd, b"X")
os.close(fd)
"""


def make_big_file(path: Path) -> tuple[str, str]:
    """SIZE bytes, every MiB different (a block copied to the wrong place shows).

    Returns the sha256 of the file, and of the file with b"X" appended.
    """
    h = hashlib.sha256()
    seed = os.urandom(BLOCK)
    with open(path, "wb") as f:
        for i in range(SIZE // BLOCK):
            block = i.to_bytes(8, "little") + seed[8:]
            f.write(block)
            h.update(block)
    appended = h.copy()
    appended.update(b"X")
    return h.hexdigest(), appended.hexdigest()


def sha256_of(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 * BLOCK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def files_under(root: Path) -> list[tuple[str, int]]:
    out = []
    for top, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(top, n)
            try:
                out.append((os.path.relpath(p, root), os.lstat(p).st_size))
            except FileNotFoundError:
                pass
    return out


@pytest.fixture(scope="module")
def big_lower(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One lower with the big file, shared by the kill points (it is never written)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lower = tmp_path_factory.mktemp("crash-lower")
    (lower / "dir").mkdir()
    return (lower, *make_big_file(lower / "dir" / "big"))


def wait_for_staging(upper: Path, work: Path, appender: subprocess.Popen) -> str:
    """Until a copy of the file is growing in the work dir or the upper, or the writer ended."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for root in (work, upper):
            if any(size > 0 for _name, size in files_under(root)):
                return f"copy seen in {root.name}"
        if appender.poll() is not None:
            return "copy-up finished before it was seen"
        time.sleep(0.002)
    return "no copy seen within 60 s"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("when", ["while copying", "at once"])
def test_kill_9_during_large_copy_up(oracle_base: Path, big_lower: tuple[Path, str, str],
                                     when: str) -> None:
    lower, old_sum, new_sum = big_lower
    upper, work, mnt = oracle_base / "upper", oracle_base / "work", oracle_base / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
    r = pyunion("mount", "-o", f"workdir={work}", f"{upper}:{lower}", str(mnt), check=False,
                timeout=60)
    assert r.returncode == 0, r.stderr
    appender = None
    try:
        daemons = daemon_pids(mnt)
        assert len(daemons) == 1, f"cannot tell the daemon: {daemons}"
        appender = subprocess.Popen([sys.executable, "-c", APPENDER, str(mnt / "dir" / "big")],
                                    stderr=subprocess.DEVNULL)
        seen = wait_for_staging(upper, work, appender) if when == "while copying" else "-"
        os.kill(daemons[0], signal.SIGKILL)
        print(f"\nkill -9 ({when}): {seen}; upper then held {files_under(upper)}")
        appender.wait(timeout=60)
    finally:
        if appender is not None and appender.poll() is None:
            appender.kill()
            appender.wait()
        force_unmount(mnt)
    assert not is_mounted(mnt)

    # What the upper holds on disk: nothing, or a whole object.
    copy = upper / "dir" / "big"
    if copy.exists():
        assert sha256_of(copy)[1] in (old_sum, new_sum), "partial copy visible in the upper"
    leftovers = [(p, s) for p, s in files_under(upper) if p != "dir/big"]
    assert leftovers == [], f"stray files in the upper: {leftovers}"

    # And through a new mount over the same directories: one of the two whole objects.
    with mounted(upper, [lower], mnt, [f"workdir={work}"]):
        size, digest = sha256_of(mnt / "dir" / "big")
        assert (size, digest) in ((SIZE, old_sum), (SIZE + 1, new_sum))
        # The union is usable: the interrupted write can be redone.
        with open(mnt / "dir" / "big", "ab") as f:
            f.write(b"Y")
        assert os.stat(mnt / "dir" / "big").st_size == size + 1
    assert os.stat(copy).st_size == size + 1
