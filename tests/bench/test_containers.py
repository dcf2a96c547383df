"""The container workload's runc side: a real busybox image, kernel overlay, runc run."""

from __future__ import annotations

import os

import pytest

from bench import mounts
from bench.containers import RUNC, run_containers, runc_missing
from unionfs import mountinfo


def test_runc_side_runs_and_cleans_up(tmp_path):
    if runc_missing():
        pytest.skip(runc_missing())
    lines: list[str] = []
    doc, cells, infos = run_containers(str(tmp_path), 2, log=lines.append)
    assert doc["refs"] == {"kernel-overlay": RUNC}
    cell = cells[RUNC]
    assert cell["errors"] == [] and cell["skipped"] == ""
    assert len(cell["times"]) == 2 and all(t > 0 for t in cell["times"])
    assert infos[RUNC]["version"].startswith("runc version")
    # the image really is busybox with `true` as its command
    assert os.path.islink(tmp_path / "containers" / "bundle" / "rootfs" / "bin" / "true")
    assert mounts.active() == []
    assert not [m for m in mountinfo.mounts() if str(tmp_path) in m.mountpoint]
    left = {p.name for p in (tmp_path / "containers").iterdir()}
    assert not left & {"runc-0", "runc-1"}
    assert list((tmp_path / "containers" / "runc-state").iterdir()) == []  # runc deleted them
