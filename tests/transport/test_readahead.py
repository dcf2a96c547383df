"""READs served by the daemon: sequential readers get READs of about 1 MiB, not the kernel's
default 128 KiB readahead (root raises the mount's bdi read_ahead_kb before INIT), and their
data is spliced from the file into /dev/fuse without passing through the process."""

from __future__ import annotations

import os

from unionfs import mountinfo
from unionfs.transport.session import SPLICE_MIN


def test_sequential_reads_reach_the_daemon_in_1_mib_requests(serve_with):
    s = serve_with(passthrough=False, splice=False)
    (s.src / "big").write_bytes(os.urandom(8 << 20))
    entry = mountinfo.top_mount(str(s.mnt))
    with open(f"/sys/class/bdi/{entry.dev[0]}:{entry.dev[1]}/read_ahead_kb") as f:
        assert int(f.read()) == 1020
    with open(s.mnt / "big", "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    assert max(s.fs.read_sizes) == 1020 << 10
    assert len(s.fs.read_sizes) <= 12          # 8 MiB in about 8 READs, not 64


def test_spliced_reads_return_the_files_bytes(serve_with):
    s = serve_with(passthrough=False)
    data = os.urandom((3 << 20) + 123)         # a partial last page
    (s.src / "f").write_bytes(data)
    (s.src / "empty").write_bytes(b"")
    assert (s.mnt / "f").read_bytes() == data
    with open(s.mnt / "f", "rb", buffering=0) as f:
        assert f.read(0) == b""
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        for off in (0, 4095, 5000, len(data) - 10, len(data), len(data) + 4096):
            assert os.pread(f.fileno(), 7000, off) == data[off:off + 7000]
    assert (s.mnt / "empty").read_bytes() == b""
    assert all(n < SPLICE_MIN for n in s.fs.read_sizes)    # every large READ was spliced
    assert sum(s.fs.read_sizes) < len(data) // 4
