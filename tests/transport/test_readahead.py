"""Sequential reads served by the daemon come in READs of the connection's 1 MiB, not the
kernel's default 128 KiB readahead (root raises the mount's bdi read_ahead_kb before INIT)."""

from __future__ import annotations

import os

from unionfs import mountinfo


def test_sequential_reads_reach_the_daemon_in_1_mib_requests(serve_with):
    s = serve_with(passthrough=False)
    (s.src / "big").write_bytes(os.urandom(8 << 20))
    entry = mountinfo.top_mount(str(s.mnt))
    with open(f"/sys/class/bdi/{entry.dev[0]}:{entry.dev[1]}/read_ahead_kb") as f:
        assert int(f.read()) == 1024
    with open(s.mnt / "big", "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    assert max(s.fs.read_sizes) == 1 << 20
    assert len(s.fs.read_sizes) <= 12          # 8 MiB in about 8 READs, not 64
